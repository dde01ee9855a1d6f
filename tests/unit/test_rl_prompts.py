"""The grpo step's prompt stream (nemo_reason.rl.prompts) and the CrossThink recipe (nemo_reason.rl.crossthink).

The stream: determinism, disjoint data-parallel shares whose union is the one-rank stream, resume
equal to an uninterrupted stream (through pool epochs), blend weights over many draws. The
templates: an open-ended mcq prompt without options whose answer the exact / math verifier
accepts, the short-answer filter. Held-out eval records never in the pools. The difficulty filter
on a tiny random-init Megatron model with a verifier whose outcome is known, and its cache.
"""

import types

import pytest

from nemo_reason.config.errors import ConfigError
from nemo_reason.rl.prompts import Prompt, PromptFields, PromptSource, build_prompt_source
from tests.unit.megatron_env import megatron_single  # noqa: F401


def _ctx(tmp_path=None, dp=1, dp_rank=0, fingerprint="fp"):
    return types.SimpleNamespace(dims=types.SimpleNamespace(dp=dp, dp_rank=dp_rank), step_dir=tmp_path,
                                 step_name="grpo", rank=0, fingerprint=fingerprint)


def _cfg(seed=1234):
    return types.SimpleNamespace(run=types.SimpleNamespace(seed=seed))


@pytest.fixture(scope="module")
def blend():
    """math + both CrossThink forms of mcq + code, weights 2:1:1:1."""
    f = PromptFields(domains=["math", "mcq", "mcq", "code"], templates=["native", "mcq", "open", "native"],
                     domain_weights=[2, 1, 1, 1])
    return build_prompt_source(f, _cfg(), _ctx(), None, log=None)


def _rank(src, seed, dp, r):
    return PromptSource(src.pools, src.weights, src.labels, seed, r, dp)


def test_stream_is_deterministic_and_ranks_are_disjoint(blend):
    a, b = _rank(blend, 7, 1, 0), _rank(blend, 7, 1, 0)
    first = [p.key for p in a.take(40)]
    assert first == [p.key for p in b.take(40)]
    assert first != [p.key for p in _rank(blend, 8, 1, 0).take(40)]
    # dp=2: per step of 8 prompts each rank takes 4; shares disjoint, union = the one-rank step.
    one, r0, r1 = _rank(blend, 7, 1, 0), _rank(blend, 7, 2, 0), _rank(blend, 7, 2, 1)
    for _ in range(5):
        want = [p.key for p in one.take(8)]
        k0, k1 = [p.key for p in r0.take(4)], [p.key for p in r1.take(4)]
        assert not set(k0) & set(k1)
        assert sorted(k0 + k1) == sorted(want)
        assert len(set(want)) == 8
    # every rank sees every domain entry (sampled, not round-robin)
    assert {p.label for p in _rank(blend, 7, 2, 1).take(200)} == {"math", "mcq", "mcq_open", "code"}


def _small_pools():
    mk = lambda d, i: Prompt(d, f"{d}{i}", {"answer": str(i)}, "math", f"bundled:{d}#{i}:native")  # noqa: E731
    return [[mk("math", i) for i in range(3)], [mk("mcq", i) for i in range(5)]]


def test_resume_equals_uninterrupted_stream():
    pools = _small_pools()  # tiny pools: the stream crosses many permutation epochs
    ref = PromptSource(pools, [1, 2], ["math", "mcq"], seed=3, dp_rank=1, dp_size=2)
    whole = [p.key for p in ref.take(60)]
    part = PromptSource(pools, [1, 2], ["math", "mcq"], seed=3, dp_rank=1, dp_size=2)
    got = [p.key for p in part.take(7)] + [p.key for p in part.take(5)]
    state = part.state_dict()
    assert state["taken"] == 12
    for d in (state, {"taken": 12}):  # with counts, and the position alone (replayed)
        resumed = PromptSource(pools, [1, 2], ["math", "mcq"], seed=3, dp_rank=1, dp_size=2)
        resumed.load_state_dict(d)
        assert got + [p.key for p in resumed.take(48)] == whole
    # each epoch of a pool visits every prompt once
    math_keys = [p.key for p in PromptSource(pools, [1, 0], ["math", "mcq"], 3).take(9)]
    assert all(sorted(math_keys[i:i + 3]) == sorted(p.key for p in pools[0]) for i in (0, 3, 6))
    with pytest.raises(ConfigError, match="resumes only with the same"):
        PromptSource(pools, [1, 2], ["math", "mcq"], seed=4, dp_rank=1, dp_size=2).load_state_dict(state)


def test_blend_weights_hold_over_many_draws():
    pools = _small_pools()
    src = PromptSource(pools, [3, 1], ["math", "mcq"], seed=11)
    got = [p.domain for p in src.take(20_000)]
    assert abs(got.count("math") / len(got) - 0.75) < 0.01  # binomial sd 0.003
    assert abs(src.state_dict()["counts"][0] / 20_000 - 0.75) < 0.01


def test_open_template_drops_options_and_is_verified_by_the_options_text(blend):
    from nemo_reason.rewards.exact import score_exact
    from nemo_reason.rewards.math import score_math
    from nemo_reason.rewards.mcq import score_mcq

    e_open, e_mcq = blend.labels.index("mcq_open"), blend.labels.index("mcq")
    assert len(blend.pools[e_open]) == 5000  # bundled questions: all askable without options, answers short
    words = [p for p in blend.pools[e_open] if p.verifier == "exact"]
    nums = [p for p in blend.pools[e_open] if p.verifier == "math"]
    assert words and nums
    for p in words[:50] + nums[:50]:
        mcq = blend.pools[e_mcq][[q.key.split(":")[1] for q in blend.pools[e_mcq]].index(p.key.split(":")[1])]
        choices, letter = mcq.sample["choices"], mcq.sample["answer"]
        right = choices["ABCD".index(letter)]
        assert p.text == f"Question: {mcq.sample['question']}\nAnswer:" and "choices" not in p.sample
        score = score_exact if p.verifier == "exact" else score_math
        assert score(p.sample, f" {right}") == 1.0
        assert all(score(p.sample, f" {c}") == 0.0 for c in choices if c != right)
        assert score(p.sample, f" {letter}") == 0.0
        assert score_mcq(mcq.sample, f" {letter}") == 1.0 and f"\n{letter}. {right}" in mcq.text


def test_short_answer_filter_drops_long_and_option_dependent_records():
    from nemo_reason.rl.crossthink import drop_reason, render

    def rec(q, answer_text, choices=("x", "y", "z", "w")):
        return {"question": q, "choices": list(choices), "answer": "A", "answer_text": answer_text}

    assert drop_reason("mcq", "open", rec("What is the capital of Peru?", "Lima"), 10) is None
    assert drop_reason("mcq", "open", rec("Which of the following is a prime?", "7"), 10) == "needs_options"
    assert drop_reason("mcq", "open", rec("What do mammals share?", "All of the above"), 10) == "needs_options"
    long = "the mitochondria is the powerhouse of the cell and it makes energy"
    assert drop_reason("mcq", "open", rec("What does the mitochondria do?", long), 10) == "long_answer"
    assert drop_reason("mcq", "open", rec("What does the mitochondria do?", long), 0) is None
    # the mcq template keeps such records: the options are shown
    assert drop_reason("mcq", "mcq", rec("Which of the following is a prime?", "7"), 10) is None
    assert drop_reason("mcq", "open", {"question": "Q?", "choices": ["a", "b"], "answer": None}, 10) == "no_answer"
    # without answer_text the letter names the option
    text, sample, verifier = render("mcq", "open", {"question": "Q?", "choices": ["10", "12"], "answer": "B"}, "k")
    assert (sample["answer"], verifier, text) == ("12", "math", "Question: Q?\nAnswer:")


def test_config_rules():
    with pytest.raises(ConfigError, match="does not apply to domain 'math'"):
        PromptFields(domains=["math"], templates=["open"]).validate_prompts("here")
    with pytest.raises(ConfigError, match="domain_weights has 1 entries but domains has 2"):
        PromptFields(domains=["math", "mcq"], domain_weights=[1.0]).validate_prompts("here")
    with pytest.raises(ConfigError, match="listed twice"):
        PromptFields(domains=["mcq", "mcq"], templates=["mcq", "native"]).validate_prompts("here")


def test_held_out_records_are_never_in_the_pools(blend):
    from nemo_reason.evaluation.tasks import held_out_task, question_hash

    pooled = {question_hash(p.sample.get("question", p.sample.get("prompt", ""))) for pool in blend.pools
              for p in pool}
    for domain in ("math", "mcq"):
        task = held_out_task(domain, 64)
        assert task.records and not {question_hash(r.question) for r in task.records} & pooled


def test_pool_records_draws_a_larger_pool_whose_prefix_is_the_default_one():
    from nemo_reason.evaluation.tasks import held_out_task, question_hash, training_sources

    easy = dict(domains=["math"], max_difficulty=1)
    default = build_prompt_source(PromptFields(**easy), _cfg(), _ctx(), None, log=None).pools[0]
    big = build_prompt_source(PromptFields(**easy, pool_records=20000), _cfg(), _ctx(), None, log=None).pools[0]
    assert len(big) > 3 * len(default) > 0
    assert [p.text for p in big[:len(default)]] == [p.text for p in default]  # the same records, first
    assert default[0].key.startswith("bundled:math#") and big[0].key.startswith("bundled:math:20000#")
    # the step's held-out split avoids the larger pool too (it is one of the run's training sources)
    sources = training_sources({}, [{"type": "grpo", "domains": ["math"], "pool_records": 20000}])
    task = held_out_task("math", 64, sources, max_difficulty=1)
    assert not {question_hash(r.question) for r in task.records} & {question_hash(p.sample["question"]) for p in big}
    with pytest.raises(ConfigError, match="pool_records must be >= 0"):
        PromptFields(pool_records=-1).validate_prompts("here")


# --- difficulty filter on a tiny Megatron model -------------------------------------------------

def easy_solved(sample, completion):
    """A verifier with a known outcome: difficulty <= 2 always solved, 3 solved by even-length
    completions only, harder never."""
    d = int(sample["difficulty"])
    return 1.0 if d <= 2 else (float(len(completion) % 2 == 0) if d == 3 else 0.0)


@pytest.fixture(scope="module")
def tiny(megatron_single):  # noqa: F811
    import torch

    from nemo_reason.config.store import compose
    from nemo_reason.data.tokenizer import build_tokenizer
    from nemo_reason.models import build_model

    torch.manual_seed(0)
    cfg = compose("tiny", ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64",
                           "model.num_attention_heads=2"])
    return build_model(cfg, 260)[0].eval(), build_tokenizer("byte")


def test_difficulty_filter_drops_what_the_model_solves_k_of_k_and_caches(tiny, tmp_path):
    import json
    import re

    from nemo_reason.data.corpora import DEFAULT_SEED, DEFAULT_SIZE, generate

    model, tok = tiny
    me = "tests.unit.test_rl_prompts:easy_solved"
    f = PromptFields(domains=["math", "mcq"], templates=["native", "open"], verifiers=[me, me],
                     difficulty_samples=3, difficulty_pool=8, difficulty_batch=5)
    f.max_new_tokens, f.temperature, f.top_p = 6, 1.0, 1.0
    lines = []
    src = build_prompt_source(f, _cfg(), _ctx(tmp_path), tok, model=model, log=lines.append)
    cache = json.loads((tmp_path / "difficulty.json").read_text())
    solved = cache["solved"]
    assert len(solved) == 16 and src.report["_difficulty"]["rollouts"] == 16 * 3
    records = {d: list(generate(d, DEFAULT_SIZE[d], DEFAULT_SEED)) for d in ("math", "mcq")}
    where = {k: re.fullmatch(r"bundled:(\w+)#(\d+):\w+", k).groups() for k in solved}
    diff = {k: int(records[d][int(i)]["difficulty"]) for k, (d, i) in where.items()}
    kept = {p.key for pool in src.pools for p in pool}
    assert kept == set(cache["kept"]) == {k for k, c in solved.items() if c < 3}
    for key, c in solved.items():  # the known outcome
        assert c == {1: 3, 2: 3, 3: c}.get(diff[key], 0), (key, diff[key], c)
    assert {diff[k] <= 2 for k in solved} == {True, False}  # both kinds were tested
    assert "difficulty filter (k=3)" in lines[0] and "48 rollouts" in lines[0]
    # the second call reads the cache: no model needed, same pools
    again = build_prompt_source(f, _cfg(), _ctx(tmp_path), tok, model=None, log=lines.append)
    assert {**again.report["_difficulty"], "seconds": 0} == {**src.report["_difficulty"], "from_cache": True,
                                                           "rollouts": 0, "seconds": 0}
    assert [[p.key for p in pool] for pool in again.pools] == [[p.key for p in pool] for pool in src.pools]
    assert "read from difficulty.json" in lines[1]
    # another fingerprint (config or input changed): the cache does not apply
    with pytest.raises(ConfigError, match="no cached result matches"):
        build_prompt_source(f, _cfg(), _ctx(tmp_path, fingerprint="other"), tok, model=None, log=None)
