"""Decoding with generation state equals the full forward: Mamba conv/SSM states and the attention KV
cache in Megatron's StaticInferenceContext, driven by nemo_reason.rollout.state."""

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260


def _model(recipe, *overrides):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    torch.manual_seed(0)
    cfg = compose(recipe, list(overrides))
    return cfg, build_model(cfg, VOCAB)[0].eval()


@pytest.fixture(scope="module")
def hybrid(megatron_single):  # noqa: F811
    # Chunks of 8 so that a 21-token prompt spans several scan chunks and a partial one.
    return _model("tiny_hybrid", "model.mamba_chunk_size=8")


def _tokens(b, n, seed=0):
    return torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prompt_len", [1, 5, 21])
def test_token_by_token_decode_equals_full_forward(hybrid, prompt_len):
    from nemo_reason.rollout.state import GenerationState

    _, model = hybrid
    b, n = 3, 30
    tokens = _tokens(b, n)
    with torch.no_grad():
        full = model(tokens, torch.arange(n).expand(b, n), None)          # [b, n, V]
    state = GenerationState(max_batch_size=b, max_sequence_length=64)
    prefill = state.step(model, tokens[:, :prompt_len], all_logits=True)
    got = [prefill] + [state.step(model, tokens[:, t:t + 1]) for t in range(prompt_len, n)]
    got = torch.cat(got, dim=1)
    assert got.shape == full.shape
    assert (got - full).abs().max().item() <= 1e-4
    assert state.length == n


def test_mamba_state_is_constant_size_and_reset_starts_over(hybrid):
    from nemo_reason.models.hybrid import layer_types
    from nemo_reason.rollout.state import GenerationState

    cfg, model = hybrid
    m = cfg.model
    b = 2
    state = GenerationState(max_batch_size=b, max_sequence_length=64)
    state.step(model, _tokens(b, 4))
    sizes = state.state_bytes()
    for t in range(10):
        state.step(model, _tokens(b, 1, seed=t))
    assert state.state_bytes() == sizes  # nothing grows per token (the KV cache is preallocated)
    types = layer_types(cfg)
    cache = state.context.key_value_memory_dict
    for i, kind in enumerate(types, start=1):
        if kind == "M":
            conv, ssm = cache[i]
            conv_dim = m.mamba_heads * m.mamba_head_dim + 2 * m.mamba_num_groups * m.mamba_state_dim
            assert conv.shape == (b, conv_dim, 4)
            assert ssm.shape == (b, m.mamba_heads, m.mamba_head_dim, m.mamba_state_dim)
        elif kind == "*":
            assert cache[i][0].shape[0] == 64  # KV cache: max length x batch x ...
        else:
            assert i not in cache  # MLP layers keep no state
    # A new prompt after reset gives the same logits as a fresh state.
    prompt = _tokens(b, 6, seed=9)
    state.reset()
    again = state.step(model, prompt)
    fresh = GenerationState(max_batch_size=b, max_sequence_length=64).step(model, prompt)
    torch.testing.assert_close(again, fresh, rtol=0, atol=1e-6)


def test_step_refuses_training_mode_and_overflow(hybrid):
    from nemo_reason.rollout.state import GenerationState

    _, model = hybrid
    state = GenerationState(max_batch_size=1, max_sequence_length=4)
    with pytest.raises(ValueError, match="max_sequence_length=4"):
        state.step(model, _tokens(1, 5))
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            state.step(model, _tokens(1, 2))
    finally:
        model.eval()
