"""The inference fast path (portable linears, cached-table RoPE, eager squared ReLU) equals the
training path for the same weights.

Tiny dense, MoE and hybrid models, fp32, eval mode: a full forward with autograd recording (Megatron's
``autograd.Function`` linears, compiled activation) against the same forward under
``torch.inference_mode`` (the direct linears and eager activation); cached decode with RoPE applied
once from the cached tables (keys stored rotated) against Megatron's own inference RoPE (unrotated
keys, the whole cache re-rotated each step); and the same at TP=2 in two real processes. The
portable classes are really in the model (a silent spec regression would make the test vacuous).
"""

import pytest
import torch

from tests.spawn import spawn
from tests.unit.megatron_env import in_layout, megatron_single  # noqa: F401

VOCAB = 260
MODELS = {
    "dense": ("tiny", ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128"]),
    "moe": ("tiny_moe", ["model.num_layers=2"]),  # at TP=2 with sequence parallelism (MoE needs it)
    "hybrid": ("tiny_hybrid", ["model.num_layers=4", "model.hybrid_pattern='M*M-'", "model.mamba_chunk_size=8"]),
}
TOKENS = torch.tensor([[72, 101, 108, 108, 111, 33, 7, 9, 200, 3], [65] * 10])


def _build(name, tp=1):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    recipe, over = MODELS[name]
    torch.manual_seed(0)
    layout = [f"parallel.tp={tp}", f"launcher.nproc_per_node={tp}"] if tp > 1 else []
    if tp > 1 and name == "moe":
        layout.append("parallel.sequence_parallel=true")
    return build_model(compose(recipe, [*over, *layout]), VOCAB)[0].eval()


def _forward(model, grad: bool) -> torch.Tensor:
    pos = torch.arange(TOKENS.shape[1]).unsqueeze(0).expand_as(TOKENS)
    if grad:
        with torch.enable_grad():
            return model(TOKENS, pos, None, runtime_gather_output=True).detach()
    with torch.inference_mode():
        return model(TOKENS, pos, None, runtime_gather_output=True).clone()


def _decode(model, megatron_rope: bool) -> torch.Tensor:
    """Logits of every position, prefill of 4 tokens then one token per step."""
    from nemo_reason.backend.portable.self_attention import PortableSelfAttention
    from nemo_reason.rollout.state import GenerationState

    attn = [m for m in model.modules() if isinstance(m, PortableSelfAttention)]
    for m in attn:
        if megatron_rope:
            m._cached_rope_applies = lambda: False  # this instance takes Megatron's path
    try:
        state = GenerationState(TOKENS.shape[0], TOKENS.shape[1])
        with torch.inference_mode():
            out = [state.step(model, TOKENS[:, :4], all_logits=True)]
            out += [state.step(model, TOKENS[:, t:t + 1]) for t in range(4, TOKENS.shape[1])]
        return torch.cat(out, dim=1).clone()
    finally:
        for m in attn:
            m.__dict__.pop("_cached_rope_applies", None)


def _fast_path_diffs(tp: int) -> dict:
    from nemo_reason.backend.portable.linear import PortableColumnParallelLinear, PortableRowParallelLinear
    from nemo_reason.backend.portable.self_attention import PortableSelfAttention
    from nemo_reason.rollout.sampler import _generation_mode

    out = {}
    for name in MODELS:
        model = _build(name, tp)
        kinds = {type(m) for m in model.modules()}
        assert {PortableColumnParallelLinear, PortableRowParallelLinear, PortableSelfAttention} <= kinds, name
        with _generation_mode(model, model):  # as generate runs it: eval, no sequence parallelism outside MoE
            train, fast = _forward(model, grad=True), _forward(model, grad=False)
            ours, megatron = _decode(model, False), _decode(model, True)
        out[name] = {"forward": (fast - train).abs().max().item(), "decode": (ours - megatron).abs().max().item(),
                     "decode_vs_full": (ours - train).abs().max().item()}
    return out


@pytest.fixture(scope="module")
def tp1(megatron_single):  # noqa: F811
    return _fast_path_diffs(1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_path_equals_training_path(tp1, name):
    d = tp1[name]
    print(name, d)
    assert d["forward"] <= 1e-6, d          # direct linears + eager activation vs autograd Functions
    assert d["decode"] <= 1e-6, d           # keys rotated once from cached tables vs Megatron's RoPE
    assert d["decode_vs_full"] <= 1e-4, d   # and cached decode still equals the full forward


def test_training_forward_unchanged(megatron_single):  # noqa: F811
    """With autograd recording the portable linears take Megatron's forward: same graph, same grads."""
    model = _build("dense")
    model.train()
    pos = torch.arange(TOKENS.shape[1]).unsqueeze(0).expand_as(TOKENS)
    loss = model(TOKENS, pos, None, labels=TOKENS).float().mean()
    fn = model.decoder.layers[0].self_attention.linear_qkv.weight
    loss.backward()
    assert fn.grad is not None and torch.isfinite(fn.grad).all() and fn.grad.abs().sum() > 0


def _tp2_worker(rank):
    return in_layout(_fast_path_diffs, 2, 2)


@pytest.mark.slow  # two more processes; TP=2 sampling through the fast path is tests/distributed/test_rollout_tp.py
def test_fast_path_equals_training_path_tp2():
    results = spawn(_tp2_worker, 2, timeout=240)
    for r in results:
        for name, d in r.value.items():
            assert d["forward"] <= 1e-6 and d["decode"] <= 1e-6 and d["decode_vs_full"] <= 1e-4, (name, d)


def _reference_step(mixer, zxBCdt, conv_state, ssm_state):
    """The mixer's decode step through the generic reference ops (the path ``_step`` specialises)."""
    from nemo_reason.ops import causal_conv1d_update, selective_state_update

    d = mixer.dims
    z, xBC, dt = mixer._split(zxBCdt)
    b = z.shape[0]
    xBC = causal_conv1d_update(xBC, conv_state, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, mixer.activation)
    x, B, C = torch.split(xBC, d.conv_sections(), dim=-1)
    h, p, n = d.nheads_local, d.headdim, d.d_state
    D = mixer._D()
    y = selective_state_update(
        ssm_state, x.reshape(b, h, p), dt[:, :, None].expand(b, h, p),
        (-torch.exp(mixer.A_log.float()))[:, None, None].expand(h, p, n),
        B.reshape(b, d.ngroups_local, n), C.reshape(b, d.ngroups_local, n),
        D if D.dim() == 2 else D[:, None].expand(h, p), z=None, dt_bias=mixer.dt_bias[:, None].expand(h, p),
        dt_softplus=True).reshape(b, d.d_inner_local)
    return mixer.norm(y, z)


def test_mamba_decode_step_equals_reference_ops(megatron_single):  # noqa: F811
    from nemo_reason.backend.portable.mamba_mixer import PortableMambaMixer

    mixer = next(m for m in _build("hybrid").modules() if isinstance(m, PortableMambaMixer))
    g = torch.Generator().manual_seed(3)
    (conv_shape, ssm_shape), b = mixer.mamba_state_shapes_per_request(), 3
    conv, ssm = torch.randn(b, *conv_shape, generator=g), torch.randn(b, *ssm_shape, generator=g)
    zxBCdt = torch.randn(b, mixer.in_proj.weight.shape[0], generator=g)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    with torch.inference_mode():
        for _ in range(3):  # a few steps: the states carry over
            y, y_ref = mixer._step(zxBCdt, conv, ssm), _reference_step(mixer, zxBCdt, conv_ref, ssm_ref)
            torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(conv, conv_ref, rtol=0, atol=0)
            torch.testing.assert_close(ssm, ssm_ref, rtol=1e-6, atol=1e-6)
