"""The portable Mamba-2 mixer against Megatron-Core's own ``MambaMixer`` and the Mamba-2 equations.

Megatron's mixer cannot run here (mamba-ssm kernels), but it can be *constructed* on CPU once the
import-time flags it checks are set (``HAVE_MAMBA_SSM``, ``HAVE_EINOPS``, and its gated norm given a
class): that is enough to compare parameters, state-dict keys and shapes, and the
``sharded_state_dict`` entries dist_checkpointing writes, at TP=1 and on both ranks of TP=2 (a
stand-in TP group; construction and sharding only read its size and rank).
"""

import types

import pytest
import torch
import torch.nn.functional as F

from tests.unit.megatron_env import megatron_single  # noqa: F401

D_MODEL = 32


class _Group:
    """A TP group as Megatron's layers see it at construction: a size and a rank."""

    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def _config(**kw):
    from megatron.core.transformer.transformer_config import TransformerConfig

    base = dict(num_layers=1, hidden_size=D_MODEL, num_attention_heads=4, use_cpu_initialization=True,
                mamba_state_dim=8, mamba_head_dim=8, mamba_num_groups=2)  # 8 heads, d_inner 64
    base.update(kw)
    return TransformerConfig(**base)


def _pgs(tp_size=1, tp_rank=0):
    from megatron.core.process_groups_config import ProcessGroupCollection

    if tp_size == 1:
        return ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
    return types.SimpleNamespace(tp=_Group(tp_size, tp_rank), cp=_Group(1, 0))


def _portable(cfg, pgs, seed=0):
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from nemo_reason.backend.portable.mamba_mixer import MambaMixerSubmodules, PortableMambaMixer

    torch.manual_seed(seed)
    sub = MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear)
    return PortableMambaMixer(cfg, sub, d_model=D_MODEL, layer_number=1, pg_collection=pgs)


@pytest.fixture
def megatron_mixer(megatron_single, monkeypatch):  # noqa: F811
    """A factory for Megatron's MambaMixer on CPU (construction only)."""
    import megatron.core.ssm.mamba_context_parallel as mcp
    import megatron.core.ssm.mamba_mixer as mm
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

    from nemo_reason.ops import RMSNormGated

    class ExtendedRMSNorm(RMSNormGated):  # Megatron's class body over our norm (theirs subclasses mamba-ssm's)
        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            return make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True), prefix,
                                                       {"weight": 0}, sharded_offsets, tp_group=self.tp_group,
                                                       dp_cp_group=metadata["dp_cp_group"])

    monkeypatch.setattr(mm, "HAVE_MAMBA_SSM", True)
    monkeypatch.setattr(mm, "HAVE_EINOPS", True)
    monkeypatch.setattr(mcp, "HAVE_EINOPS", True)
    monkeypatch.setattr(mm, "ExtendedRMSNorm", ExtendedRMSNorm)

    def build(cfg, pgs):
        m = mm.MambaMixer(cfg, mm.MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear),
                          d_model=D_MODEL, layer_number=1, pg_collection=pgs)
        m.norm.tp_group = pgs.tp
        return m

    return build


def _flat(sharded):
    """key -> (global shape, global offset, fragmentation) of every tensor dist_checkpointing would write."""
    out = {}
    for v in sharded.values():
        for t in (v.build() if hasattr(v, "build") else [v]):
            out[t.key] = (t.global_shape, t.global_offset, t.axis_fragmentations) if hasattr(t, "axis_fragmentations") \
                else type(t).__name__
    return out


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if v is not None}


@pytest.mark.parametrize("tp_size,tp_rank", [(1, 0), (2, 0), (2, 1)])
def test_parameters_and_checkpoint_keys_equal_megatron(megatron_mixer, monkeypatch, tp_size, tp_rank):
    import megatron.core.transformer.utils as tutils

    cfg = _config(tensor_model_parallel_size=tp_size)
    pgs = _pgs(tp_size, tp_rank)
    if tp_size > 1:  # Megatron's mixer shards dt_bias/A_log/D over the *default* TP group: make it this one
        monkeypatch.setattr(tutils, "get_tensor_model_parallel_group_if_none", lambda g, **k: g or pgs.tp)
    ref, ours = megatron_mixer(cfg, pgs), _portable(cfg, pgs)
    assert _shapes(ours) == _shapes(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert getattr(p, "tensor_model_parallel", False) == getattr(q, "tensor_model_parallel", False)
        assert p.dtype == q.dtype
    got, want = _flat(ours.sharded_state_dict("mixer.")), _flat(ref.sharded_state_dict("mixer."))
    assert got == want
    assert "mixer.in_proj.weight.dt" in got and got["mixer.conv1d.weight.B"][0] == (16, 1, 4)
    assert ours.mamba_state_shapes_per_request() == ref.mamba_state_shapes_per_request()


def test_tp_ranks_hold_the_sections_of_the_tp1_mixer(megatron_single):  # noqa: F811
    """Same seed -> the TP=2 ranks' tensors are exactly the TP=1 tensors cut by heads and groups."""
    from nemo_reason.backend.portable.mamba_sharding import MambaDims

    full = _portable(_config(), _pgs(), seed=3)
    ranks = [_portable(_config(tensor_model_parallel_size=2), _pgs(2, r), seed=3) for r in range(2)]
    dims1, dims2 = full.dims, ranks[0].dims
    assert (dims2.nheads_local, dims2.ngroups_local, dims2.d_inner_local) == (4, 1, 32)

    def sections(t, sizes):
        return torch.split(t, sizes, dim=0)

    for name, sizes1, sizes2 in [("in_proj.weight", dims1.in_proj_sections(), dims2.in_proj_sections()),
                                 ("conv1d.weight", dims1.conv_sections(), dims2.conv_sections()),
                                 ("conv1d.bias", dims1.conv_sections(), dims2.conv_sections())]:
        whole = sections(full.state_dict()[name], sizes1)
        parts = [sections(r.state_dict()[name], sizes2) for r in ranks]
        for i, w in enumerate(whole):
            torch.testing.assert_close(torch.cat([p[i] for p in parts]), w, rtol=0, atol=0)
    for name in ("dt_bias", "A_log", "D", "norm.weight"):
        torch.testing.assert_close(torch.cat([r.state_dict()[name] for r in ranks]), full.state_dict()[name],
                                   rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([r.out_proj.weight for r in ranks], dim=1), full.out_proj.weight,
                               rtol=0, atol=0)
    # rank_rows is the same cut, as an index into the stacked global rows.
    rows = torch.cat([dims2.rank_rows(dims2.in_proj_sections(local=False), r) for r in range(2)])
    assert sorted(rows.tolist()) == list(range(sum(dims1.in_proj_sections())))
    assert isinstance(dims1, MambaDims)


@pytest.mark.parametrize("kw,needle", [
    (dict(ngroups=3, nheads=6, tp=2), "mamba_num_groups=3 is not divisible by tensor-parallel size 2"),
    (dict(ngroups=2, nheads=6, tp=4), "mamba_num_groups=2 is not divisible by tensor-parallel size 4"),
    (dict(ngroups=2, nheads=5, tp=1), "heads (5) are not divisible by mamba_num_groups=2"),
    (dict(ngroups=2, nheads=6, tp=2, d_model=30, headdim=8), None),
])
def test_layout_errors_name_the_fix(kw, needle):
    from nemo_reason.backend.portable.mamba_sharding import MambaDims, MambaLayoutError

    args = dict(d_model=32, d_state=8, headdim=8)
    args.update(kw)
    if needle is None:
        assert MambaDims.build(**args).d_inner == 48  # explicit heads override expand * d_model
        return
    with pytest.raises(MambaLayoutError) as e:
        MambaDims.build(**args)
    assert needle in str(e.value)


def _mamba2_reference(mixer, hidden):
    """The Mamba-2 layer written out from its equations, one time step at a time, in float64."""
    d = mixer.dims
    p = {k: v.detach().double() for k, v in mixer.state_dict().items() if v is not None}
    hidden = hidden.double()
    l, b, _ = hidden.shape
    zxbcdt = hidden @ p["in_proj.weight"].T
    z, xbc, dt = torch.split(zxbcdt, [d.d_inner_local, sum(d.conv_sections()), d.nheads_local], dim=-1)
    w = p["conv1d.weight"][:, 0]  # [channels, d_conv]
    padded = torch.cat([xbc.new_zeros(d.d_conv - 1, b, xbc.shape[-1]), xbc])
    conv = torch.stack([(padded[t:t + d.d_conv].permute(1, 2, 0) * w).sum(-1) for t in range(l)]) + p["conv1d.bias"]
    x, B, C = torch.split(F.silu(conv), d.conv_sections(), dim=-1)
    x = x.reshape(l, b, d.nheads_local, d.headdim)
    heads_per_group = d.nheads_local // d.ngroups_local
    B = B.reshape(l, b, d.ngroups_local, d.d_state).repeat_interleave(heads_per_group, dim=2)
    C = C.reshape(l, b, d.ngroups_local, d.d_state).repeat_interleave(heads_per_group, dim=2)
    A = -torch.exp(p["A_log"])
    delta = F.softplus(dt + p["dt_bias"])  # [l, b, h]
    state = hidden.new_zeros(b, d.nheads_local, d.headdim, d.d_state)
    ys = []
    for t in range(l):
        state = torch.exp(delta[t] * A)[..., None, None] * state \
            + (delta[t][..., None] * x[t])[..., None] * B[t][:, :, None, :]
        ys.append((state * C[t][:, :, None, :]).sum(-1) + p["D"][:, None] * x[t])
    y = torch.stack(ys).reshape(l, b, d.d_inner_local) * F.silu(z)
    g = y.reshape(l, b, d.ngroups_local, -1)
    y = (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + 1e-5)).reshape(l, b, -1) * p["norm.weight"]
    return y @ p["out_proj.weight"].T


def test_forward_and_backward_follow_the_mamba2_equations(megatron_single):  # noqa: F811
    mixer = _portable(_config(), _pgs(), seed=1)
    with torch.no_grad():  # non-trivial D and norm weight, so every parameter shows in the output
        mixer.D.uniform_(0.5, 1.5)
        mixer.norm.weight.uniform_(0.5, 1.5)
    h = torch.randn(40, 2, D_MODEL, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mixer.chunk_size = 16  # 40 tokens: two full chunks and a partial one
    out, bias = mixer(h)
    assert bias is None and out.shape == h.shape
    torch.testing.assert_close(out.double(), _mamba2_reference(mixer, h), rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    for name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_checkpoint_moves_between_megatron_and_portable_mixer(megatron_mixer, tmp_path):
    """A dist checkpoint of Megatron's MambaMixer loads into the portable mixer unchanged, and back."""
    from megatron.core import dist_checkpointing

    cfg = _config()
    ref, ours = megatron_mixer(cfg, _pgs()), _portable(cfg, _pgs(), seed=5)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
    (tmp_path / "a").mkdir()
    dist_checkpointing.save(ref.sharded_state_dict("mixer."), str(tmp_path / "a"))
    loaded = dist_checkpointing.load(ours.sharded_state_dict("mixer."), str(tmp_path / "a"))
    loaded = {k[len("mixer."):]: v for k, v in loaded.items()}
    missing, unexpected = ours.load_state_dict(loaded, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    (tmp_path / "b").mkdir()
    dist_checkpointing.save(ours.sharded_state_dict("mixer."), str(tmp_path / "b"))
    back = megatron_mixer(cfg, _pgs())
    loaded = dist_checkpointing.load(back.sharded_state_dict("mixer."), str(tmp_path / "b"))
    back.load_state_dict({k[len("mixer."):]: v for k, v in loaded.items()}, strict=False)
    for (name, p), (_, q) in zip(back.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_te_spec_gets_the_portable_mixer_without_kernels(megatron_single):  # noqa: F811
    from megatron.core.models.mamba.mamba_layer_specs import mamba_stack_spec

    from nemo_reason.backend import mamba_kernels_importable
    from nemo_reason.backend.portable.mamba_mixer import PortableMambaMixer
    from nemo_reason.backend.specs import hybrid_stack_spec

    spec = hybrid_stack_spec("te", chunk_size=64)
    mixer = spec.submodules.mamba_layer.submodules.mixer
    assert mixer.params["chunk_size"] == 64
    assert mamba_kernels_importable() or mixer.module is PortableMambaMixer
    assert mamba_stack_spec.submodules.mamba_layer.submodules.mixer.params == {}  # Megatron's spec untouched
    assert spec.submodules.attention_layer is mamba_stack_spec.submodules.attention_layer


def test_local_hybrid_checkpoints_use_te_names(megatron_single):  # noqa: F811
    """The local spec's separate norms are saved under TE's fused-norm names, as Megatron's TE
    ``mamba_stack_spec`` model names them, so checkpoints move between the backends."""
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    model = build_model(compose("tiny_hybrid", ["model.hybrid_pattern=M*-", "model.num_layers=3"]), 260)[0]
    keys = set()
    for v in model.sharded_state_dict().values():
        keys.update(t.key for t in (v.build() if hasattr(v, "build") else [v]))
    assert {"decoder.layers.0.mixer.in_proj.layer_norm_weight", "decoder.layers.0.mixer.in_proj.weight.z",
            "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight",
            "decoder.layers.2.mlp.linear_fc1.layer_norm_weight", "decoder.final_norm.weight"} <= keys
    assert not [k for k in keys if k.endswith((".norm.weight", "input_layernorm.weight", "pre_mlp_layernorm.weight"))
                and ".mixer.norm." not in k]
