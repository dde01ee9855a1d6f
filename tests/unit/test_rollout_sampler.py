"""Batched sampling (nemo_reason.rollout.sampler) against full forwards of the same model.

Tiny dense, MoE and hybrid models (vocabulary 260, the byte tokenizer: 258 real ids, the rest
Megatron's padding), fp32: cached decode equals a full forward, the returned log-probs equal a
recomputation, right-padded batches equal each prompt alone, finished rows stop changing and leave
the batch, seeds reproduce, and the model a training step holds (DDP, bf16 Float16Module) samples
on its own weights and trains afterwards.
"""

import types

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260
MODELS = {
    "dense": ("tiny", ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128"]),
    "moe": ("tiny_moe", ["model.num_layers=2"]),
    "hybrid": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*M-'", "model.mamba_chunk_size=8"]),
}


def _build(name, *extra):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    recipe, over = MODELS[name]
    torch.manual_seed(0)
    cfg = compose(recipe, [*over, *extra])
    return cfg, build_model(cfg, VOCAB)[0].eval()


@pytest.fixture(scope="module")
def models(megatron_single):  # noqa: F811
    return {name: _build(name)[1] for name in MODELS}


@pytest.fixture(scope="module")
def tok():
    from nemo_reason.data.tokenizer import build_tokenizer

    return build_tokenizer("byte")


PROMPTS = [[72, 101, 108, 108, 111], [65] * 11, [120], [1, 2, 3, 4, 5, 6, 7, 8]]


def _full_logits(model, tokens):
    t = torch.tensor([tokens])
    with torch.no_grad():
        return model(t, torch.arange(t.shape[1]).unsqueeze(0), None)[0].float()  # [n, V]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_decode_logits_equal_full_forward(models, name):
    from nemo_reason.rollout.state import GenerationState

    model = models[name]
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens, torch.arange(20).expand(3, 20), None)
    state = GenerationState(max_batch_size=3, max_sequence_length=24)
    got = [state.step(model, tokens[:, :7], all_logits=True)] + [state.step(model, tokens[:, t:t + 1])
                                                                  for t in range(7, 20)]
    assert (torch.cat(got, dim=1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logprobs_equal_full_forward_recomputation(models, tok, name):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = models[name]
    samples = generate(model, tok, PROMPTS, SamplingParams(n=2, max_new_tokens=10, seed=3, temperature=0.8,
                                                          top_k=50, top_p=0.95))
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    worst = 0.0
    for s in samples:
        prompt = PROMPTS[s.prompt_index]
        assert len(s.tokens) == len(s.logprobs) == 10 and s.finish_reason == "length"
        assert all(0 <= t < tok.vocab_size for t in s.tokens)  # never a padding id
        logp = torch.log_softmax(_full_logits(model, prompt + s.tokens), dim=-1)
        ref = logp[len(prompt) - 1:-1].gather(-1, torch.tensor(s.tokens)[:, None]).squeeze(-1)
        worst = max(worst, (ref - torch.tensor(s.logprobs)).abs().max().item())
    assert worst <= 1e-5
    assert model.training is False


@pytest.mark.parametrize("name", ["dense", "hybrid"])
def test_right_padded_batch_equals_each_prompt_alone(models, tok, name):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = models[name]
    params = SamplingParams(greedy=True, max_new_tokens=8)
    batched = generate(model, tok, PROMPTS, params)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, tok, [p], params)[0]
        assert alone.tokens == batched[i].tokens
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(batched[i].logprobs), rtol=0, atol=1e-5)
        # Greedy is argmax of a full forward, token after token.
        ctx = list(p)
        for t in batched[i].tokens:
            assert _full_logits(model, ctx)[-1, :tok.vocab_size].argmax().item() == t
            ctx.append(t)


class _EodTokenizer:
    """The byte tokenizer with another end-of-document id (so a random model ends a row early)."""

    def __init__(self, base, eod):
        self.base, self.eod = base, eod
        self.vocab_size = base.vocab_size

    def detokenize(self, ids):
        return self.base.detokenize(ids)


@pytest.mark.parametrize("name", ["dense", "hybrid"])
def test_finished_rows_stop_changing_and_leave_the_batch(models, tok, name):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = models[name]
    params = SamplingParams(greedy=True, max_new_tokens=12)
    free = generate(model, _EodTokenizer(tok, None), PROMPTS, params)  # no row ends early
    # End of document = the 3rd token prompt 0 generates: that row ends early, the others run on.
    eod = free[0].tokens[2]
    cut = free[0].tokens.index(eod) + 1
    others = [i for i in range(1, 4) if eod not in free[i].tokens]
    assert others, "pick another eod: every row produces it"
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[0]), with_kwargs=True)
    try:
        got = generate(model, _EodTokenizer(tok, eod), PROMPTS, params)
    finally:
        hook.remove()
    assert got[0].finish_reason == "eos" and got[0].tokens == free[0].tokens[:cut]
    assert len(got[0].logprobs) == cut and got[0].text == tok.detokenize(free[0].tokens[:cut - 1])
    for i in others:  # compacting the batch (KV cache, Mamba states) leaves the other rows as they were
        assert got[i].tokens == free[i].tokens and got[i].finish_reason == "length"
        torch.testing.assert_close(torch.tensor(got[i].logprobs), torch.tensor(free[i].logprobs), rtol=0, atol=1e-5)
    assert min(seen) < len(PROMPTS) == seen[0]  # the finished row left the batch


class _CharTokenizer(_EodTokenizer):
    """Each id detokenizes to its own character (any token sequence gives a clean stop string)."""

    def detokenize(self, ids):
        return "".join(chr(0x4E00 + int(i)) for i in ids)


def test_stop_strings_end_a_row_and_cut_the_text(models, tok):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = models["dense"]
    chars = _CharTokenizer(tok, None)
    params = SamplingParams(greedy=True, max_new_tokens=12)
    free = generate(model, chars, PROMPTS, params)
    stop = chars.detokenize(free[1].tokens[4:6])  # completed by prompt 1's 6th token
    got = generate(model, chars, PROMPTS, SamplingParams(greedy=True, max_new_tokens=12, stop=["never", stop]))
    first = chars.detokenize(free[1].tokens).find(stop) + len(stop)
    assert got[1].finish_reason == "stop" and got[1].text == chars.detokenize(free[1].tokens)[:first]
    assert got[1].tokens == free[1].tokens[:len(got[1].tokens)] and len(got[1].tokens) <= 6
    for g, f in zip(got, free):  # rows without the stop string are untouched
        if stop not in chars.detokenize(f.tokens):
            assert g.tokens == f.tokens and g.finish_reason == "length"


def test_seed_reproduces_and_top_k_one_is_greedy(models, tok):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    model = models["hybrid"]

    def run(**kw):
        return [s.tokens for s in generate(model, tok, PROMPTS[:2], SamplingParams(n=3, max_new_tokens=8, **kw))]

    a, b, c = run(seed=5), run(seed=5), run(seed=6)
    assert a == b and a != c
    assert len({tuple(x) for x in a}) == 6  # the n samples of a prompt differ
    greedy = run(greedy=True)
    assert run(top_k=1, seed=9) == greedy and run(top_p=1e-6, seed=9) == greedy


def test_sample_tokens_truncation():
    from nemo_reason.rollout.sampler import SamplingParams, sample_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    counts = lambda p: torch.bincount(sample_tokens(logits, p, u), minlength=4)  # noqa: E731
    plain = counts(SamplingParams())
    assert torch.allclose(plain / 4000.0, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert counts(SamplingParams(top_k=2))[2:].sum() == 0
    top_p = counts(SamplingParams(top_p=0.8))  # {0.5, 0.3} reaches 0.8: token 2 is dropped
    assert top_p[2:].sum() == 0 and top_p[1] > 0
    cold = counts(SamplingParams(temperature=0.1))
    assert cold[0] > 3900


def test_bad_requests_are_refused(models, tok):
    from nemo_reason.rollout.sampler import SamplingParams, generate

    with pytest.raises(ValueError, match="temperature"):
        generate(models["dense"], tok, PROMPTS, SamplingParams(temperature=0.0))
    with pytest.raises(ValueError, match="empty prompt"):
        generate(models["dense"], tok, [[1], []], SamplingParams())
    with pytest.raises(NotImplementedError, match="pp=1"):
        generate([models["dense"], models["dense"]], tok, PROMPTS, SamplingParams())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_samples_on_the_training_models_own_weights(megatron_single, tok, precision):  # noqa: F811
    """DDP (and bf16 Float16Module) as build_train_state wraps it: same weights, training mode
    restored, and a training step right after generation works."""
    from nemo_reason.config.store import compose
    from nemo_reason.rollout.sampler import SamplingParams, generate
    from nemo_reason.training.state import build_train_state

    recipe, over = MODELS["dense"]
    torch.manual_seed(0)
    cfg = compose(recipe, [*over, f"trainer.precision={precision}", "trainer.seq_length=16"])
    state = build_train_state(cfg, types.SimpleNamespace(dims=megatron_single), VOCAB)
    ddp = state.model
    assert type(ddp[0]).__name__ == "DistributedDataParallel"
    ddp[0].train()
    params = SamplingParams(greedy=True, max_new_tokens=8)  # prompt 8 + 8 = the training length below
    first = generate(ddp, tok, [PROMPTS[3]], params)[0]
    assert ddp[0].training and state.chunks[0].training
    bare = state.chunks[0]
    ref = _full_logits(bare.eval(), PROMPTS[3] + first.tokens)
    bare.train()
    assert first.tokens[0] == ref[len(PROMPTS[3]) - 1, :tok.vocab_size].argmax().item()
    # The sampler reads the live weights: change one in place and the samples change.
    with torch.no_grad():
        w = bare.output_layer.weight
        w[first.tokens[0]] *= -10.0  # its (largest) logit becomes a large negative one
    second = generate(ddp, tok, [PROMPTS[3]], params)[0]
    assert second.tokens[0] != first.tokens[0]
    # Train right after generating, at the sequence length generation used (RoPE's cached tables).
    x = torch.tensor([PROMPTS[3] + first.tokens])
    loss = ddp[0](x, torch.arange(16).unsqueeze(0), None, labels=x).float().mean()
    loss.backward()
    assert torch.isfinite(loss)
