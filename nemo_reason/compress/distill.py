"""Knowledge-distillation losses over Megatron-Core models, through Model-Optimizer's distillation wrapper.

:func:`build_distillation_model` turns a bare student chunk (``GPTModel`` / ``MambaModel``, before
DDP) into Model-Optimizer's ``DistillationModel`` (``mtd.convert`` in ``kd_loss`` mode, then
``adjust_distillation_model_for_mcore``, as Megatron-LM and Megatron-Bridge do): the frozen teacher
runs inside the student's forward under ``no_grad`` (one forward per micro-batch, no LM loss of its
own), forward hooks capture the logits (``output_layer``) and the hidden states of the chosen layer
pairs of both models, and the teacher is hidden from ``sharded_state_dict`` so checkpoints hold the
student only. The losses:

- :class:`FusedLogitsKLLoss` ``(T)``: per token ``KL(softmax(t / T) || softmax(s / T))`` over the
  whole vocabulary, the value of modelopt's ``LogitsKLLoss`` (same convention: no ``T^2`` factor,
  scale ``kl_weight``). Under TP the logits are vocab-sharded ``[s, b, V / TP]``: the maxima and
  softmax denominators are all-reduced, and each rank returns its partial sum over its vocabulary
  slice with ``tp_reduce=True``. It is ours, not modelopt's, for speed: modelopt's makes about 20
  elementwise passes over the logits through autograd (temperature copies, two log-softmaxes,
  ``kl_div``, their backward), which made a distill step 1.6-2.2x a student step plus a teacher
  forward at ``tiny`` sizes (docs/benchmarks.md, distillation). Ours is one ``torch.autograd.Function``:
  forward one fused softmax of each side and one product, ``KL = sum p_t (t - s) / T - lse(t / T) +
  lse(s / T)`` with each ``lse`` read off its softmax's largest entry (:func:`_kl_forward`), in place
  where it can (the teacher's logits are consumed), backward the exact gradient ``(p_s - p_t) / T``
  per token written over the teacher's softmax (under TP, ``p_s`` is weighted by the all-reduced
  ``sum_v g p_t`` so it is exact for any upstream gradient): 61-67 ms with modelopt's, 24-30 ms with
  two log-softmaxes, 13-17 ms now, forward + backward on ``[128, 8, 4096]`` fp32 logits on one CPU
  thread. It runs in blocks of rows that stay in cache
  (:data:`BLOCK_ELEMS`) and allocates no ``[s, b, V]`` tensor per micro-batch (the student's
  softmax lives in the loss's :class:`Workspace`): on CPU fresh tensors of that size cost page
  faults, which were most of what a distill step cost above a student step plus a teacher forward
  (with :func:`nemo_reason.backend.allocator.keep_freed_memory`, which the step sets, for Megatron's
  own logits; docs/compression.md, distill step, Speed). It is registered as the logits loss in
  modelopt's criterion, so modelopt still wires teacher, student and hooks; its equality with
  ``LogitsKLLoss`` (value and gradient, TP=1) is tests/unit/test_distill_kl.py, TP=2 the parity test.
- ``HiddenStateCosineLoss``: ``1 - cos`` per token between the student's hidden state, through a
  trained ``ProjectionLayer`` (``nn.Linear`` student width -> teacher width; identity when equal), and
  the teacher's. Use full-width states (the final norm's output, a layer's output), as modelopt says.

:func:`distill_forward_step` is the Megatron forward step. Its loss is
``(kl_weight * KL + hidden_weight * mean_pairs(cos) + lm_weight * CE) / loss tokens`` with fixed weights
(modelopt's ``LogitsAndIntermediatesLossBalancer`` rescales the terms to each other dynamically; we
keep the weights the user wrote, applied by :class:`FixedWeightBalancer`). Sums over a
vocab-sharded or sequence-parallel tensor are all-reduced over TP for their *value* only; the
gradient stays the local part's, which is the exact gradient of the total (the softmax coupling
between shards goes through the KL's backward all-reduce). It reports ``[sum, count]``:
``kd_loss``, ``lm loss`` (the student's CE, only when ``lm_weight > 0``: at 0 it is not computed at
all, so the step's ``loss`` is absent), ``hidden_loss`` (when pairs are set), ``distill_loss`` (the
weighted total).

Left out: pipeline parallelism (modelopt concatenates teacher and student activations between
stages, which needs its shape hook in the schedule), top-k logit KL, cached teacher logits.
"""

from __future__ import annotations

from functools import partial
from types import MethodType
from typing import List, Sequence, Tuple

import modelopt.torch.distill as mtd
import torch
import torch.distributed as dist
from modelopt.torch.distill.plugins.megatron import BaseLoss

LOGITS_LAYER = "output_layer"
FINAL_NORMS = ("decoder.final_layernorm", "decoder.final_norm")  # GPTModel, MambaModel


def final_norm_name(model) -> str:
    """The name of the final norm of a bare ``GPTModel`` or ``MambaModel`` chunk."""
    names = dict(model.named_modules())
    for name in FINAL_NORMS:
        if name in names:
            return name
    raise ValueError(f"{type(model).__name__} has none of {FINAL_NORMS}: name the hidden-state layers explicitly")


def parse_layer_pairs(entries: Sequence[str], student, teacher) -> List[Tuple[str, str]]:
    """``["final"]`` / ``["decoder.layers.1:decoder.layers.3", "decoder.final_layernorm"]`` as
    ``(student layer, teacher layer)`` pairs of submodule names; one name means the same in both and
    ``final`` the final norm of each. Names are checked against both models."""
    pairs = []
    s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
    for e in entries:
        s, _, t = e.partition(":")
        t = t or s
        s = final_norm_name(student) if s == "final" else s
        t = final_norm_name(teacher) if t == "final" else t
        for name, names, who in ((s, s_names, "student"), (t, t_names, "teacher")):
            if name not in names:
                layers = sorted(n for n in names if n.count(".") <= 2 and n.startswith("decoder."))
                raise ValueError(f"hidden-state layer {name!r} is not a submodule of the {who} "
                                 f"({type(names['']).__name__}); some that are: {', '.join(layers[:12])}")
        pairs.append((s, t))
    return pairs


# Rows of the ``[tokens, V]`` logits the KL processes together: a block of about 2^18 fp32 values
# (1 MiB) stays in the CPU's cache through all of the KL's passes over it, where passes over the whole
# tensor stream it from memory every time (at vocabulary widths the KL is memory-bound). Each row's
# arithmetic is the same in any block, so the values do not depend on it.
BLOCK_ELEMS = 1 << 18


def _blocks(rows: int, vocab: int) -> List[slice]:
    step = max(1, BLOCK_ELEMS // max(vocab, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


class Workspace:
    """One reusable fp32 ``[N, V]`` buffer for the student's softmax, from a KL forward to its
    backward. A fresh tensor of that size costs page faults on CPU (glibc hands the freed memory
    back to the system between micro-batches, and each new one faults in again: 27 ms of system time
    per ``tiny`` distill step); this one is allocated once per shape. Taken by a forward that will
    have a backward, given back by that backward; a second forward before it gets a fresh tensor."""

    def __init__(self):
        self._buffer, self._busy = None, False

    def take(self, rows: int, vocab: int) -> torch.Tensor:
        if self._busy:
            return torch.empty(rows, vocab, dtype=torch.float32)
        if self._buffer is None or self._buffer.shape != (rows, vocab):
            self._buffer = None
            self._buffer = torch.empty(rows, vocab, dtype=torch.float32)
        self._busy = True
        return self._buffer

    def give_back(self, t: torch.Tensor) -> None:
        if t is self._buffer:
            self._busy = False


def _softmax_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``softmax(x, -1)`` written into ``out`` (which may be ``x``): ATen's fused kernel, one exp per entry."""
    return torch.ops.aten._softmax.out(x, -1, False, out=out)


def _kl_forward(s: torch.Tensor, t: torch.Tensor, temperature: float, group, tp: int, ps) -> tuple:
    """``s``, ``t`` ``[N, V / TP]`` -> ``(kl [N], pt [N, V/TP], pt_mass [N] or None)`` in fp32,
    block by block: ``ps = softmax(s / T)`` into ``ps`` (``[N, V / TP]`` fp32, or ``None``: not
    kept), ``pt = softmax(t / T)`` (written over ``t`` when it is fp32: the teacher's logits, used
    once), ``kl = sum pt (log pt - log ps)`` over this rank's slice.

    At TP=1 with ``x = s / T``, ``y = t / T`` and ``sum pt = 1``, ``kl = sum pt (y - x) - lse(y) +
    lse(x)``, and ``lse(x) = max(x) - log(max(ps))`` (the largest entry of the softmax is
    ``exp(max(x) - lse(x))``): two fused softmaxes and one product, two exponentials per entry and no
    log-softmax, where the log-softmax form takes four (both log-softmaxes, ``pt`` from ``log pt``,
    ``ps`` again in the backward). Under TP the maxima and softmax denominators are all-reduced over
    ``group`` between two block loops, and ``pt_mass`` is this rank's ``sum pt``."""
    rows, vocab = s.shape
    blocks = _blocks(rows, vocab)
    pt = t if t.dtype == torch.float32 else torch.empty(rows, vocab, dtype=torch.float32)
    kl = torch.empty(rows, dtype=torch.float32)
    if tp == 1:
        for b in blocks:
            x, y = s[b].float(), t[b].float()
            if temperature != 1.0:
                x, y = x / temperature, torch.div(y, temperature, out=pt[b])
            d = torch.sub(y, x)
            p_s = _softmax_into(x, ps[b] if ps is not None else torch.empty_like(x))
            lse_x = x.amax(dim=-1).sub_(p_s.amax(dim=-1).log_())
            lse_y = y.amax(dim=-1)
            p_t = _softmax_into(y, pt[b])
            lse_y.sub_(p_t.amax(dim=-1).log_())
            # in place, then a sum (an einsum is a slow batched matmul on CPU)
            kl[b] = d.mul_(p_t).sum(dim=-1).sub_(lse_y).add_(lse_x)
        return kl, pt, None
    # Under TP: the maxima over all ranks first, then the local exp-sums, all-reduced, then the rest.
    m = torch.cat([s.amax(dim=-1, keepdim=True).float(), t.amax(dim=-1, keepdim=True).float()], dim=-1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)  # max(x / T) = max(x) / T for T > 0
    log_ps = ps if ps is not None else torch.empty(rows, vocab, dtype=torch.float32)
    denom = torch.empty(rows, 2, dtype=torch.float32)
    for b in blocks:
        zs = torch.sub(s[b].float(), m[b, :1], out=log_ps[b])
        zt = torch.sub(t[b].float(), m[b, 1:], out=pt[b])
        if temperature != 1.0:
            zs.div_(temperature)
            zt.div_(temperature)
        denom[b, 0] = torch.exp(zs).sum(dim=-1)
        denom[b, 1] = torch.exp(zt).sum(dim=-1)
    dist.all_reduce(denom, group=group)
    log_denom = denom.log()
    pt_mass = torch.empty(rows, dtype=torch.float32)
    for b in blocks:
        zt = pt[b]
        p = torch.exp(zt).div_(denom[b, 1:])  # the exponentials of the first loop, again
        ls = log_ps[b].sub_(log_denom[b, :1])
        kl[b] = zt.sub_(log_denom[b, 1:]).sub_(ls).mul_(p).sum(dim=-1)
        pt_mass[b] = p.sum(dim=-1)
        zt.copy_(p)
        ls.exp_()  # log ps -> ps, kept for the backward
    return kl, pt, pt_mass


class _LogitsKL(torch.autograd.Function):
    """``(student [.., V/TP], teacher [.., V/TP]) -> [..]``: this rank's part of
    ``sum_v p_t (log p_t - log p_s)``; backward the student's gradient of the sum over all ranks,
    written over the teacher's softmax. The teacher's logits are consumed (overwritten when fp32):
    modelopt's hook hands them over once. Block by block (:data:`BLOCK_ELEMS`); the student's
    softmax lives in ``workspace`` (a :class:`Workspace`, or ``None``: a new tensor) until the
    backward."""

    @staticmethod
    def forward(ctx, student, teacher, temperature, group, tp, workspace=None):
        vocab = student.shape[-1]
        s = student.detach().reshape(-1, vocab)
        keep = ctx.needs_input_grad[0]
        ps = None
        if keep:
            ps = workspace.take(*s.shape) if workspace is not None else torch.empty(s.shape, dtype=torch.float32)
        kl, pt, pt_mass = _kl_forward(s, teacher.reshape(-1, vocab), temperature, group, tp, ps)
        ctx.temperature, ctx.group, ctx.tp, ctx.dtype, ctx.shape = temperature, group, tp, student.dtype, student.shape
        # Under TP each rank holds part of p_t's mass: the backward weighs p_s by sum_v g p_t over all ranks.
        ctx.pt_mass, ctx.workspace = pt_mass, workspace
        if keep:
            ctx.save_for_backward(ps, pt)
        return kl.reshape(student.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        ps, pt = ctx.saved_tensors  # pt overwritten: once differentiable
        g = (grad.float() / ctx.temperature).reshape(-1, 1)
        if ctx.tp > 1:
            c = g.squeeze(-1) * ctx.pt_mass
            dist.all_reduce(c, group=ctx.group)
            c = c.unsqueeze(-1)
        for b in _blocks(*ps.shape):
            if ctx.tp > 1:  # p_s * c - p_t * g
                torch.sub(ps[b].mul_(c[b]), pt[b].mul_(g[b]), out=pt[b])
            else:  # (p_s - p_t) * g
                torch.sub(ps[b], pt[b], out=pt[b]).mul_(g[b])
        if ctx.workspace is not None:
            ctx.workspace.give_back(ps)
        return pt.reshape(ctx.shape).to(ctx.dtype), None, None, None, None, None


class FusedLogitsKLLoss(BaseLoss):
    """modelopt's ``LogitsKLLoss`` (``reverse=False``) as one fused autograd function (module
    docstring): ``[s, b, V / TP]`` student and teacher logits -> ``([b, s] KL, tp_reduce=True, False)``."""

    def __init__(self, model_config, temperature: float = 1.0):
        super().__init__(model_config)
        self._temperature = float(temperature)
        self._workspace = Workspace()

    def forward(self, predictions, targets):
        predictions, targets = self.pre_forward(predictions, targets)
        from megatron.core import parallel_state

        tp = self._config.tensor_model_parallel_size
        group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
        loss = _LogitsKL.apply(predictions, targets, self._temperature, group, tp, self._workspace)
        return self.post_forward(loss, tp_reduce=True)


KD_KEY = f"{FusedLogitsKLLoss.__name__}_0"  # modelopt names each criterion's loss "<class>_<index>"


class FixedWeightBalancer(mtd.DistillationLossBalancer):
    """``{KD_KEY: kl, "HiddenStateCosineLoss_i": h_i, ...}`` plus the student's CE (``None`` when
    ``lm_weight`` is 0) -> the weighted total and its parts (a modelopt ``DistillationLossBalancer``
    with static weights)."""

    def __init__(self, kl_weight: float, hidden_weight: float, lm_weight: float):
        super().__init__()
        self.kl_weight, self.hidden_weight, self.lm_weight = kl_weight, hidden_weight, lm_weight

    def forward(self, losses: dict, lm) -> dict:
        kd = losses.pop(KD_KEY)
        hidden = sum(losses.values()) / len(losses) if losses else None
        total = self.kl_weight * kd
        if lm is not None:
            total = total + self.lm_weight * lm
        if hidden is not None:
            total = total + self.hidden_weight * hidden
        return {"distill_loss": total, "kd_loss": kd, "hidden_loss": hidden, "lm loss": lm}


def build_distillation_model(student, teacher, *, temperature: float, hidden_pairs: Sequence[Tuple[str, str]],
                             kl_weight: float, hidden_weight: float, lm_weight: float):
    """``student`` (a bare chunk, converted in place: its state-dict keys stay the student's, plus
    the projection's under ``_loss_modules``) wrapped with the frozen ``teacher`` chunk."""
    from modelopt.torch.distill.plugins.megatron import (DistillationConfig, HiddenStateCosineLoss, ProjectionLayer,
                                                         adjust_distillation_model_for_mcore)

    s_cfg, t_cfg = student.config, teacher.config
    criterion = {(LOGITS_LAYER, LOGITS_LAYER): FusedLogitsKLLoss(s_cfg, temperature=temperature)}
    if hidden_pairs:
        projection = ProjectionLayer(s_cfg, t_cfg)  # shared by the pairs, as modelopt does
        for s, t in hidden_pairs:
            criterion[(s, t)] = HiddenStateCosineLoss(s_cfg, projection_layer=projection)
    balancer = FixedWeightBalancer(kl_weight, hidden_weight, lm_weight)
    model = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": criterion,
                                                    "loss_balancer": balancer})])
    adjust_distillation_model_for_mcore(model, DistillationConfig(skip_lm_loss=False, criterion=criterion,
                                                                  loss_balancer=balancer))
    ce = model.compute_language_model_loss

    def _lm_loss(self, labels, logits):
        if lm_weight == 0:  # not trained, not reported (training and evaluation alike): no pass over the logits
            return torch.zeros_like(labels, dtype=logits.dtype)
        # Megatron's vocab-parallel CE rewrites its input in place (max subtracted, then exp) and
        # GPTModel hands it ``logits.float()``, the very tensor the hook captured when the model is
        # fp32: the KL would then read exp(logits - max). Give the CE its own copy.
        logits = logits.clone() if logits.dtype == torch.float32 else logits
        return ce(labels, logits)

    model.compute_language_model_loss = MethodType(_lm_loss, model)
    model._nr_loading_input = False
    _hide_loss_modules_when_loading_input(model)
    return model


def _hide_loss_modules_when_loading_input(model) -> None:
    """The step's input checkpoint (a plain student) has no projection weights; this step's own
    checkpoints do. ``_nr_loading_input`` (set by the step around that first load) leaves them out of
    the requested state dict, so they keep their initialisation."""
    with_teacher_hidden = model.sharded_state_dict

    def _sharded_state_dict(self, *args, **kwargs):
        with self.hide_loss_modules(enable=self._nr_loading_input):
            return with_teacher_hidden(*args, **kwargs)

    model.sharded_state_dict = MethodType(_sharded_state_dict, model)


def distillation_model_of(model):
    """The ``DistillationModel`` inside DDP / ``Float16Module`` wrappers."""
    m = model
    while not isinstance(m, mtd.DistillationModel):
        if not hasattr(m, "module"):
            raise TypeError(f"{type(model).__name__} holds no DistillationModel: build it with build_distillation_model")
        m = m.module
    return m


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_world_size()


def masked_sum(loss_mask: torch.Tensor, loss_out) -> torch.Tensor:
    """modelopt's ``loss_reduction_fn``: ``(loss [b, s], tp_reduce, is_sequence_parallel)`` -> the
    masked sum over this rank's tokens. A partial sum (a vocabulary slice; a sequence slice under
    sequence parallelism) is all-reduced over TP for its value; its gradient stays local."""
    loss, tp_reduce, seq_parallel = loss_out if isinstance(loss_out, tuple) else (loss_out, False, False)
    group, tp = _tp_group()
    mask = loss_mask
    if seq_parallel and tp > 1:  # the loss covers this rank's sequence chunk only
        mask = torch.tensor_split(loss_mask, tp, dim=1)[torch.distributed.get_rank(group)]
    local = torch.sum(loss.float().reshape(-1) * mask.reshape(-1).float())
    if (tp_reduce or seq_parallel) and tp > 1:
        total = local.detach().clone()
        dist.all_reduce(total, group=group)
        return local + (total - local.detach())
    return local


def _distill_loss(dmodel, loss_mask, num_tokens, output_tensor):
    mask = loss_mask.reshape(-1).float()
    lm_sum = torch.sum(output_tensor.float().reshape(-1) * mask) if dmodel.loss_balancer.lm_weight > 0 else None
    parts = dmodel.compute_kd_loss(loss_reduction_fn=partial(masked_sum, loss_mask), skip_balancer=True)
    out = dmodel.loss_balancer(parts, lm_sum)
    count = mask.sum().detach()
    report = {k: torch.stack([v.detach().reshape(()), count]) for k, v in out.items() if v is not None}
    return out["distill_loss"] / num_tokens.to(mask).clamp(min=1.0), report


def distill_forward_step(data_iterator, model):
    """One micro-batch through teacher (no grad) and student; the loss of the module docstring.
    Context parallelism as in :mod:`nemo_reason.training.losses` (local sums over the whole
    sequence's token count)."""
    from nemo_reason.training.losses import batch_on_this_cp_rank, lm_inputs

    batch, num_tokens = batch_on_this_cp_rank(next(data_iterator))
    device = next(model.parameters()).device
    tokens, labels, position_ids, loss_mask = lm_inputs(batch, device)
    output = model(tokens, position_ids, None, labels=labels)  # the student's per-token CE [b, s]
    return output, partial(_distill_loss, distillation_model_of(model), loss_mask, num_tokens.to(device))
