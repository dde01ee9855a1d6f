"""Portable Mamba-2 mixer: Megatron-Core's ``MambaMixer`` interface over nemo_reason's reference ops.

Megatron's ``megatron/core/ssm/mamba_mixer.py`` needs mamba-ssm's Triton kernels and causal-conv1d's
CUDA extension. This module is a drop-in for it in a ``MambaLayer`` spec: the same constructor
(``MambaLayer`` passes ``config, d_model, layer_number, pg_collection, pp_layer_offset``), the same
parameters with the same names, shapes and TP sharding, the same ``sharded_state_dict`` keys
(``in_proj.weight.{z,x,B,C,dt}``, ``conv1d.{weight,bias}.{x,B,C}``, ...; see
:mod:`.mamba_sharding`), so a checkpoint moves between this mixer and Megatron's unchanged. The
arithmetic is :mod:`nemo_reason.ops` (``causal_conv1d_fn``, ``mamba_chunk_scan_combined``, gated
RMSNorm), i.e. Megatron's non-fused ``_ssm_prefill`` path, which equals its fused training path.

Shapes (sequence first, as Megatron): hidden ``[l, b, d_model]`` -> ``in_proj`` -> ``[l, b, 2*d_in
+ 2*G*N + H]`` (per rank) -> causal depthwise conv over ``x|B|C`` -> chunked SSD scan over heads
``[b, l, H, P]`` -> gated RMSNorm with ``z`` -> ``out_proj`` -> ``([l, b, d_model], bias)``.

Generation (static batching, Megatron's ``StaticInferenceContext``): the prompt runs the full
path and leaves the last ``d_conv`` conv inputs and the final SSM state in
``inference_context.key_value_memory_dict[layer_number]``; each later token is one recurrent step
(the arithmetic of ``causal_conv1d_update`` + ``selective_state_update``, specialised to the
layer's shapes in ``_step``): O(1) work and memory per token.

Initialisation: where Megatron initialises on the CPU (``use_cpu_initialization``), every
parameter is drawn at its full (all-ranks) size from the default generator and each rank keeps its
rows, as Megatron's CPU path does for linear layers, so one seed gives the same model at every TP
size. Otherwise the mixer draws per rank under the model-parallel RNG tracker, like Megatron's.

Context parallelism (``parallel.cp > 1``), as Megatron's ``MambaMixer`` does it and with its own
:class:`~megatron.core.ssm.mamba_context_parallel.MambaContextParallel` (``self.cp``): the layer
input is this CP rank's part of the sequence (``[l/cp, b, d_model]``, attention's load-balanced
chunks); after ``in_proj`` an all-to-all over the CP group switches to the full sequence for
``1/cp`` of this TP rank's heads (``[l, b, .../cp]``, chunks back in sequence order), so the causal
conv1d and the SSD scan see whole sequences; a second all-to-all switches back before the gated
norm and ``out_proj``. Every CP rank keeps all of its TP rank's parameters and uses the slices
of ``conv1d``, ``dt_bias``, ``A_log`` and ``D`` for its heads (``self.cp.get_*``), so checkpoints
do not depend on CP. Heads per TP rank must divide by cp; B/C groups per TP rank must divide by cp,
or cp by them (a group's state is then replicated over the CP ranks that share its heads).

Packed sequences (Megatron's ``PackedSeqParams``, several documents in one row ``[l, 1, d_model]``):
as Megatron's ``_ssm_training``, the document index of each token, ``seq_idx [1, l]``, comes from
``cu_seqlens_q_padded`` (or ``cu_seqlens_q``), tokens past the last boundary forming one more
document; the causal conv1d takes no taps across documents and the SSD scan carries no state
across them, so each document's output equals running it alone. ``qkv_format`` does not matter here.

Left out (clear errors): packed sequences with batch > 1, under context parallelism or in generation,
dynamic batching, generation under context parallelism, ``rmsnorm=False`` under context parallelism
(Megatron asserts it too), ``bias=True`` and ``norm_before_gate=True`` (Megatron asserts those two
as well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.inference.contexts import BaseInferenceContext
from megatron.core.ssm.mamba_context_parallel import MambaContextParallel
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)
from megatron.core.utils import deprecate_inference_params

from nemo_reason.backend.portable.attention import packed_doc_ids
from nemo_reason.backend.portable.mamba_sharding import CONV_NAMES, IN_PROJ_NAMES, MambaDims, split_factory
from nemo_reason.ops import RMSNormGated, causal_conv1d_fn, mamba_chunk_scan_combined


@dataclass
class MambaMixerSubmodules:
    """The mixer's projections (Megatron's ``mamba_mixer.MambaMixerSubmodules``, which cannot be
    imported without Triton)."""

    in_proj: Union[ModuleSpec, type] = None
    out_proj: Union[ModuleSpec, type] = None


def _no_init(weight):
    """Megatron's CPU init calls this on the full weight; the mixer fills it itself right after."""


class PortableMambaMixer(MegatronModule):
    """Mamba-2 mixer with Megatron's ``MambaMixer`` interface and state dict, on any device."""

    def __init__(self, config, submodules, d_model, d_conv=4, conv_init=None, expand=2, A_init_range=(1, 16),
                 D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, bias=False, conv_bias=True,
                 chunk_size=128, layer_number=None, use_mem_eff_path=None, d_state=None, headdim=None,
                 ngroups=None, pg_collection=None, pp_layer_offset: int = 0):
        super().__init__(config)
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        if bias or norm_before_gate:
            raise NotImplementedError("Mamba mixer: bias=True and norm_before_gate=True are unsupported "
                                      "(Megatron's MambaMixer asserts both off)")
        self.tp_group = pg_collection.tp
        tp, rank = self.tp_group.size(), self.tp_group.rank()
        dims = MambaDims.build(d_model=d_model, d_state=config.mamba_state_dim, headdim=config.mamba_head_dim,
                               ngroups=config.mamba_num_groups, nheads=config.mamba_num_heads, expand=expand,
                               d_conv=d_conv, tp=tp)
        self.dims, self.config, self.pg_collection = dims, config, pg_collection
        # Megatron's attribute names, for code that inspects a mixer (pruning, inference).
        self.d_model, self.d_conv, self.expand, self.conv_init = d_model, d_conv, expand, conv_init
        self.d_state, self.headdim, self.ngroups, self.nheads = dims.d_state, dims.headdim, dims.ngroups, dims.nheads
        self.d_inner = dims.d_inner
        self.nheads_local_tp, self.d_inner_local_tp = dims.nheads_local, dims.d_inner_local
        self.ngroups_local_tp = dims.ngroups_local
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.chunk_size, self.layer_number, self.pp_layer_offset = chunk_size, layer_number, pp_layer_offset
        self.activation = "silu"
        self.cached_batch_size = None

        # Full-size draws from the default generator (CPU init) vs per-rank draws (device init).
        full_draw = config.use_cpu_initialization
        cpu_init = full_draw and config.perform_initialization
        device = "cpu" if full_draw else torch.cuda.current_device()
        dtype = config.params_dtype

        # in_proj: [z | x | B | C | dt] (per rank), column-parallel; input assumed sequence-parallel.
        self.in_proj = build_module(
            submodules.in_proj, d_model, sum(dims.in_proj_sections(local=False)), config=config,
            init_method=_no_init if cpu_init else config.init_method, gather_output=False, bias=bias,
            skip_bias_add=False, is_expert=False, tp_comm_buffer_name="fc1", tp_group=self.tp_group,
        )
        if cpu_init:
            full = torch.empty(sum(dims.in_proj_sections(local=False)), d_model, dtype=torch.float32)
            config.init_method(full)
            self._keep_rows(self.in_proj.weight, full, dims.in_proj_sections(local=False), rank)

        # conv1d over x|B|C: depthwise, kernel d_conv, causal (padding d_conv - 1, right side cut).
        conv_dim = sum(dims.conv_sections())
        conv_global = sum(dims.conv_sections(local=False))
        conv_kwargs = dict(in_channels=conv_dim, out_channels=conv_dim, bias=conv_bias, kernel_size=d_conv,
                           groups=conv_dim, padding=d_conv - 1, device=device, dtype=dtype)
        if full_draw:
            self.conv1d = torch.nn.utils.skip_init(nn.Conv1d, **conv_kwargs)  # no draw at local size
            if cpu_init:
                w = torch.empty(conv_global, 1, d_conv, dtype=torch.float32)
                self._init_conv_weight(w)
                self._keep_rows(self.conv1d.weight, w, dims.conv_sections(local=False), rank)
                if conv_bias:  # nn.Conv1d's own bias init: U(+-1/sqrt(fan_in)), fan_in = d_conv
                    bound = 1 / math.sqrt(d_conv)
                    b = torch.empty(conv_global, dtype=torch.float32).uniform_(-bound, bound)
                    self._keep_rows(self.conv1d.bias, b, dims.conv_sections(local=False), rank)
        else:
            with get_cuda_rng_tracker().fork():
                self.conv1d = nn.Conv1d(**conv_kwargs)
                if config.perform_initialization:
                    self._init_conv_weight(self.conv1d.weight)
        self._mark_tp(self.conv1d.weight, self.conv1d.bias)

        # dt_bias: softplus(dt_bias) log-uniform in [dt_min, dt_max]; A = -exp(A_log), A in A_init_range.
        heads = torch.arange(rank * dims.nheads_local, (rank + 1) * dims.nheads_local)
        with (torch.no_grad() if full_draw else get_cuda_rng_tracker().fork()):
            n = dims.nheads if full_draw else dims.nheads_local
            dt = torch.exp(torch.rand(n, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
            A = torch.empty(n, dtype=torch.float32, device=device)
            if config.perform_initialization:
                A = A.uniform_(*A_init_range)
            if full_draw:
                inv_dt, A = inv_dt[heads], A[heads]
        self.dt_bias = nn.Parameter(inv_dt.clone())
        self.A_log = nn.Parameter(torch.log(A))  # kept in fp32, as Megatron does
        self.D = nn.Parameter(torch.ones(dims.d_inner_local if D_has_hdim else dims.nheads_local, device=device))
        self._mark_tp(self.dt_bias, self.A_log, self.D)

        # Megatron's CP helper: all-to-all layout switches and this CP rank's parameter slices
        # (identity at cp=1). Holds references to the parameters above, owns none.
        self.cp = MambaContextParallel(
            cp_group=pg_collection.cp, d_inner_local_tp=dims.d_inner_local, nheads_local_tp=dims.nheads_local,
            ngroups_local_tp=dims.ngroups_local, d_state=dims.d_state, conv1d_cp1=self.conv1d,
            dt_bias_cp1=self.dt_bias, A_log_cp1=self.A_log, D_cp1=self.D, D_has_hdim=D_has_hdim,
        )
        if self.cp.cp_size > 1 and not rmsnorm:
            raise NotImplementedError("Mamba mixer: context parallelism needs rmsnorm=True (as Megatron's MambaMixer)")

        if rmsnorm:
            self.norm = RMSNormGated(dims.d_inner_local, eps=1e-5, group_size=dims.d_inner_local // dims.ngroups_local,
                                     norm_before_gate=False, device=device, dtype=dtype)
            self._mark_tp(self.norm.weight)

        # out_proj: row-parallel over d_inner (rank's heads are contiguous columns), output to d_model.
        self.out_proj = build_module(
            submodules.out_proj, dims.d_inner, d_model, config=config, init_method=config.output_layer_init_method,
            bias=bias, input_is_parallel=True, skip_bias_add=True, is_expert=False, tp_comm_buffer_name="fc2",
            tp_group=self.tp_group,
        )

    # ------------------------------------------------------------------ init helpers
    def _init_conv_weight(self, w):
        if self.conv_init is not None:
            nn.init.uniform_(w, -self.conv_init, self.conv_init)
        else:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def _keep_rows(self, param, full, global_sections, rank):
        with torch.no_grad():
            param.copy_(full[self.dims.rank_rows(global_sections, rank)].to(param.dtype))

    @staticmethod
    def _mark_tp(*params):
        for p in params:
            if p is not None:
                setattr(p, "tensor_model_parallel", True)

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states, inference_context=None, *,
                inference_params: Optional[BaseInferenceContext] = None, packed_seq_params=None):
        """hidden_states ``[l, b, d_model]`` -> ``(out [l, b, d_model], out_bias)``."""
        inference_context = deprecate_inference_params(inference_context, inference_params)
        if packed_seq_params is not None:
            self._check_packed(hidden_states, inference_context)
        conv_state = ssm_state = None
        if inference_context is not None and not self.training:
            if self.cp.cp_size > 1:
                raise NotImplementedError("generation with the Mamba mixer runs with parallel.cp=1")
            if not inference_context.is_static_batching():
                raise NotImplementedError("dynamic-batching inference needs Megatron's MambaMixer on CUDA; "
                                          "use a StaticInferenceContext")
            conv_state, ssm_state = self._states(inference_context, hidden_states.shape[1])
            if inference_context.sequence_len_offset > 0:
                return self._decode(hidden_states, conv_state, ssm_state)
        zxBCdt, _ = self.in_proj(hidden_states)
        seq_idx = None
        if packed_seq_params is not None:  # Megatron's _create_packed_seq_idx, over in_proj's (gathered) length
            seq_idx = packed_doc_ids(packed_seq_params.cu_seqlens_q_padded, packed_seq_params.cu_seqlens_q,
                                     zxBCdt.shape[0]).to(device=zxBCdt.device, dtype=torch.int32)[None]
        return self.out_proj(self._scan(zxBCdt, conv_state, ssm_state, seq_idx))

    def _check_packed(self, hidden_states, inference_context):
        b = hidden_states.shape[1]
        if b != 1:
            raise NotImplementedError(f"packed sequences hold one row (batch 1), got batch {b}; pack several "
                                      "documents into one row of tokens [1, l]")
        if self.cp.cp_size > 1:
            raise NotImplementedError("packed sequences in the portable Mamba mixer run with parallel.cp=1")
        if inference_context is not None and not self.training:
            raise NotImplementedError("generation takes one sequence per batch row, not packed_seq_params")

    def _split(self, zxBCdt):
        d = self.dims
        return torch.split(zxBCdt, [d.d_inner_local, sum(d.conv_sections()), d.nheads_local], dim=-1)

    def _scan(self, zxBCdt, conv_state=None, ssm_state=None, seq_idx=None):
        """Full-sequence path: ``[l, b, in_proj]`` -> ``[l, b, d_inner]`` (fills the states when given;
        ``seq_idx [b, l]`` keeps packed documents apart).

        Under CP, ``l`` is this rank's share of the sequence and the conv/scan in between run over
        the whole sequence for this rank's ``1/cp`` of the heads (``h``, ``g``, ``di`` below)."""
        d, cp = self.dims, self.cp
        h, g, di = cp.nheads_local_tpcp, cp.ngroups_local_tpcp, cp.d_inner_local_tpcp
        zxBCdt = cp.pre_conv_ssm(zxBCdt)                               # [l*cp, b, in_proj/cp]
        z, xBC, dt = torch.split(zxBCdt.transpose(0, 1), [di, cp.conv1d_channels(), h], dim=-1)  # [b, l, *]
        b, l = z.shape[:2]
        xBC = xBC.transpose(1, 2)                                      # [b, conv_dim, l]
        if conv_state is not None:
            # The last d_conv inputs (zero-padded when the prompt is shorter).
            conv_state.copy_(F.pad(xBC, (d.d_conv - l, 0)))
        bias = cp.get_conv1d_bias() if self.conv1d.bias is not None else None
        xBC = causal_conv1d_fn(xBC, cp.get_conv1d_weight().squeeze(1), bias, seq_idx=seq_idx,
                               activation=self.activation)
        x, B, C = torch.split(xBC.transpose(1, 2), [di, g * d.d_state, g * d.d_state], dim=-1)
        out = mamba_chunk_scan_combined(
            x.reshape(b, l, h, d.headdim), dt.contiguous(), -torch.exp(cp.get_A_log().float()),
            B.reshape(b, l, g, d.d_state), C.reshape(b, l, g, d.d_state),
            self.chunk_size, D=self._D(cp.get_D()), z=None if self.rmsnorm else z.reshape(b, l, h, d.headdim),
            dt_bias=cp.get_dt_bias().float(), dt_softplus=True, return_final_states=ssm_state is not None,
            seq_idx=seq_idx,
        )
        if ssm_state is not None:
            out, last_state = out
            ssm_state.copy_(last_state)
        y = cp.post_conv_ssm(out.reshape(b, l, di).transpose(0, 1).contiguous())  # [l/cp, b, d_inner]
        if self.rmsnorm:
            y = self.norm(y, cp.post_conv_ssm(z.transpose(0, 1).contiguous()))
        return y.contiguous()

    def _D(self, D=None):
        D = self.D if D is None else D
        return D.float().reshape(-1, self.dims.headdim) if self.D_has_hdim else D

    def _decode(self, hidden_states, conv_state, ssm_state):
        """Tokens after the prompt, one recurrent step each (states updated in place)."""
        zxBCdt, _ = self.in_proj(hidden_states)
        y = torch.stack([self._step(zxBCdt[t], conv_state, ssm_state) for t in range(zxBCdt.shape[0])])
        return self.out_proj(y)

    def _step(self, zxBCdt, conv_state, ssm_state):
        """One token: ``[b, in_proj]`` -> ``[b, d_inner]``; both states advanced in place.

        The arithmetic of ``ops.causal_conv1d_update`` + ``ops.selective_state_update`` for this
        layer's fixed shapes, without their generic argument handling: the depthwise conv over the
        last ``d_conv`` inputs as one multiply-sum, the decay ``exp(dt * A)`` per head (the reference
        broadcasts it over ``[b, H, P, N]`` first: the same values), math in fp32 (or wider)."""
        d = self.dims
        z, xBC, dt = self._split(zxBCdt)
        b, f = z.shape[0], torch.promote_types(zxBCdt.dtype, torch.float32)
        h, p, n, g = d.nheads_local, d.headdim, d.d_state, d.ngroups_local
        window = torch.cat([conv_state[..., 1:], xBC.unsqueeze(-1).to(conv_state.dtype)], dim=-1)  # [b, conv, d_conv]
        conv_state.copy_(window)
        xBC = (window.to(f) * self.conv1d.weight.squeeze(1).to(f)).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias.to(f)
        x, B, C = torch.split(F.silu(xBC), d.conv_sections(), dim=-1)
        x = x.reshape(b, h, p)
        B = B.reshape(b, g, n).repeat_interleave(h // g, dim=1)                       # [b, H, N]
        C = C.reshape(b, g, n).repeat_interleave(h // g, dim=1)
        dt = F.softplus(dt.to(f) + self.dt_bias.to(f))                                 # [b, H]
        decay = torch.exp(dt * -torch.exp(self.A_log.to(f)))                           # [b, H]
        state = ssm_state.to(f) * decay[:, :, None, None] + (dt[:, :, None] * x)[..., None] * B[:, :, None, :]
        ssm_state.copy_(state)
        y = torch.matmul(state, C.unsqueeze(-1)).squeeze(-1)                           # [b, H, P]
        D = self._D().to(f)
        y = y + (D if D.dim() == 2 else D[:, None]) * x
        if not self.rmsnorm:
            y = y * F.silu(z.to(f).reshape(b, h, p))
        y = y.reshape(b, d.d_inner_local).to(zxBCdt.dtype)
        return self.norm(y, z) if self.rmsnorm else y

    # ------------------------------------------------------------------ generation state
    def mamba_state_shapes_per_request(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """(conv state, SSM state) shapes of one sequence, as Megatron's mixer reports them."""
        d = self.dims
        return (self.conv1d.weight.shape[0], self.d_conv), (d.nheads_local, d.headdim, d.d_state)

    def _states(self, ctx, batch_size):
        """This layer's (conv, ssm) state in the static inference context, zeroed at a new prompt.

        Same slot and semantics as Megatron's ``MambaMixer._get_states_from_cache``."""
        cache = ctx.key_value_memory_dict
        if self.layer_number not in cache or batch_size != self.cached_batch_size:
            conv_shape, ssm_shape = self.mamba_state_shapes_per_request()
            w, dtype = self.conv1d.weight, self.in_proj.weight.dtype
            cache[self.layer_number] = (torch.zeros(batch_size, *conv_shape, device=w.device, dtype=w.dtype),
                                        torch.zeros(batch_size, *ssm_shape, device=w.device, dtype=dtype))
            self.cached_batch_size = batch_size
        conv_state, ssm_state = cache[self.layer_number]
        if ctx.sequence_len_offset == 0:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state

    # ------------------------------------------------------------------ checkpoints
    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """Megatron ``MambaMixer.sharded_state_dict``'s keys and layout (see :mod:`.mamba_sharding`)."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        dp_cp = metadata["dp_cp_group"]
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        sd = make_sharded_tensors_for_checkpoint(own, prefix, {"A_log": 0, "dt_bias": 0, "D": 0}, sharded_offsets,
                                                 tp_group=self.tp_group, dp_cp_group=dp_cp)
        for name, module in self.named_children():
            if name in ("conv1d", "norm"):
                axes = {"weight": 0, "bias": 0} if name == "conv1d" else {"weight": 0}
                sd.update(make_sharded_tensors_for_checkpoint(module.state_dict(prefix="", keep_vars=True),
                                                              f"{prefix}{name}.", axes, sharded_offsets,
                                                              tp_group=self.tp_group, dp_cp_group=dp_cp))
            else:
                sd.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                     tp_group=self.tp_group))
        d = self.dims
        key = f"{prefix}in_proj.weight"
        sd[key] = split_factory(sd[key], d.in_proj_sections(), IN_PROJ_NAMES)
        for key in ("conv1d.weight", "conv1d.bias"):
            if f"{prefix}{key}" in sd:
                sd[f"{prefix}{key}"] = split_factory(sd[f"{prefix}{key}"], d.conv_sections(), CONV_NAMES)
        return sd
