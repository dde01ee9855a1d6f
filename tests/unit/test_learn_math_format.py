"""What the "it learns" recipe (recipes/tiny_grpo_math.yaml) relies on, checked fast.

* the ``qa`` chat template trains exactly the completion of the evaluation / GRPO math prompt:
  a bundled math conversation tokenizes to the pretraining text's ids plus the eod, its untrained
  prefix is the tokenized eval prompt and everything after it is trained;
* ``bundled:math:N@difficulty<=1`` as an SFT source keeps only the easy records, in order;
* the grpo step's ``max_difficulty`` narrows its prompt pool (dropped counted as too_difficult);
* a held-out split narrowed to difficulty <= 1 is easy, disjoint from the unfiltered training
  superset (check_held_out passes; a record of the training source is refused), and its records
  are the easy subset of the unfiltered split's candidate stream.
"""

import types

import pytest

from nemo_reason.config.errors import ConfigError
from nemo_reason.data.chat_template import build_chat_template
from nemo_reason.data.corpora import generate
from nemo_reason.data.sft import conversation_of, read_documents, tokenize_conversation
from nemo_reason.evaluation.tasks import (DOMAINS, EvalRecord, HeldOutError, check_held_out, held_out_task,
                                          render_prompt)
from nemo_reason.rl.prompts import PromptFields, build_prompt_source


@pytest.fixture(scope="module", params=["bundled", "bundled_digits"])
def tok(request):
    """The recipe's tokenizer (bundled_digits) and the default bundled BPE."""
    from nemo_reason.data.tokenizer import build_tokenizer

    return build_tokenizer(request.param)


def test_qa_template_trains_exactly_the_eval_completion(tok):
    chat = build_chat_template("qa", tok)
    for rec in list(generate("math", 60)):
        messages = conversation_of(rec)
        ids, trained = tokenize_conversation(messages, tok, chat)
        assert list(ids) == tok.tokenize(rec["text"]) + [tok.eod]  # the pretraining text, then the eod
        prompt = render_prompt(DOMAINS["math"].template, {"question": rec["question"]})
        assert chat.generation_prompt(messages[:1]) == prompt
        head = tok.tokenize(prompt)
        assert list(ids[:len(head)]) == head
        assert not trained[:len(head)].any() and trained[len(head):].all()
        assert tok.detokenize(list(ids[len(head):-1])).endswith(f"\nAnswer: {rec['answer']}")


def test_qa_template_turns():
    chat = build_chat_template("qa")
    segs = chat.segments([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                          {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}])
    assert segs == [("Be brief.\n\n", False), ("Question: 1+1?\nSolution:", False), (" 2", True),
                    ("\nQuestion: 2+2?\nSolution:", False), (" 4", True)]


def test_sft_source_difficulty_filter(tok):
    docs, where, _ = read_documents(["bundled:math:300@difficulty<=1"], tok, build_chat_template("qa", tok), 256)
    easy = [r for r in generate("math", 300) if r["difficulty"] <= 1]
    assert len(docs) == len(easy) > 10
    assert [list(d[0]) for d in docs] == [tok.tokenize(r["text"]) + [tok.eod] for r in easy]
    with pytest.raises(ConfigError, match="not a number"):
        list(read_documents(["bundled:math:300@difficulty<<1"], tok, build_chat_template("qa", tok), 256))


def _ctx():
    return types.SimpleNamespace(dims=types.SimpleNamespace(dp=1, dp_rank=0), step_dir=None, step_name="grpo",
                                 rank=0, fingerprint="fp")


def test_grpo_prompts_max_difficulty():
    cfg = types.SimpleNamespace(run=types.SimpleNamespace(seed=1234))
    full = build_prompt_source(PromptFields(domains=["math"]), cfg, _ctx(), None, log=None)
    easy = build_prompt_source(PromptFields(domains=["math"], max_difficulty=1), cfg, _ctx(), None, log=None)
    assert 0 < len(easy) < len(full) / 3
    assert all(p.sample["difficulty"] <= 1 for p in easy.pools[0])
    assert [p.key for p in easy.pools[0]] == [p.key for p in full.pools[0] if p.sample["difficulty"] <= 1]
    assert easy.report["math"]["dropped"]["too_difficult"] == len(full) - len(easy)
    assert all(p.text.startswith("Question: ") and p.text.endswith("\nSolution:") for p in easy.take(20))
    with pytest.raises(ConfigError, match="max_difficulty"):
        PromptFields(domains=["math"], max_difficulty=-1).validate_prompts("grpo")


def test_held_out_difficulty_split_is_easy_and_disjoint():
    sources = ["bundled:math", "bundled:math:8000@difficulty<=1"]
    task = held_out_task("math", 256, sources, max_difficulty=1)
    assert len(task.records) == 256 and task.held_out["overlap"] == 0 and task.held_out["max_difficulty"] == 1
    assert all(r.sample["difficulty"] <= 1 for r in task.records)
    # the check covers the unfiltered superset of every training source, so it passes again independently
    assert check_held_out(task.records, sources)["overlap"] == 0
    # the same records as the unfiltered split's easy ones, in order (the filter only narrows)
    full = held_out_task("math", 2000, sources)
    assert [r.where for r in task.records] == [r.where for r in full.records if r.sample["difficulty"] <= 1][:256]
    # and a training question is refused
    default = {x["question"] for x in generate("math", 5000)}
    train = next(r for r in generate("math", 8000) if r["difficulty"] == 1 and r["question"] not in default)
    with pytest.raises(HeldOutError):
        check_held_out(task.records[:3] + [EvalRecord(train["question"], train, "train")], sources)


def test_eval_command_max_difficulty_and_sft_accepts_qa():
    from nemo_reason.evaluation.commands import _build_tasks
    from nemo_reason.stages.eval import EvalConfig
    from nemo_reason.stages.sft import SFTConfig

    step = EvalConfig(type="eval", name="eval", tasks=["math"], num_prompts=64)
    easy, = _build_tasks(step, ["bundled:math"], 1)
    full, = _build_tasks(step, ["bundled:math"], 0)
    assert len(easy.records) == 64 and all(r.sample["difficulty"] <= 1 for r in easy.records)
    assert easy.held_out["overlap"] == 0 and "max_difficulty" not in full.held_out
    assert {r.sample["difficulty"] for r in full.records} > {1}
    with pytest.raises(ConfigError, match="max-difficulty"):
        _build_tasks(step, ["bundled:math"], -1)
    SFTConfig(type="sft", template="qa").validate()
    with pytest.raises(ConfigError, match="qa"):
        SFTConfig(type="sft", template="nope").validate()
