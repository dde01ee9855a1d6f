"""The logit-parity gate: both models on the same tokens, logits and every layer's output compared.

:func:`probe_tokens` draws ``batch x seq`` token ids (seeded, below the tokenizer's vocabulary);
:func:`trace_ours` / :func:`trace_hf` run one model on them in fp32 with forward hooks on the
embedding, each decoder layer and the final norm, returning an ordered ``{point: activation}``
(``[batch, seq, hidden]``, the same order both sides) and the logits ``[batch, seq, vocab]``.
The two traces are taken one after the other (ours, then HF, freeing each model before the next is
built), so the gate never holds two models at once. :func:`compare` then reports:

- ``max_abs_diff`` of the logits and the bound ``tol = rel x scale`` with ``scale`` = the largest
  |logit| of the reference and ``rel = 1e-4`` (fp32 on CPU): the gate passes when
  ``max_abs_diff <= tol``. Conversions are exact re-arrangements, so in fp32 what remains is
  the two implementations' rounding (measured: about 1e-7 of the scale on the tiny models).
  A bf16 checkpoint is compared in fp32 too: import reads bf16 into fp32 exactly; export to bf16
  rounds our weights to bf16 before tracing ours, so the bound is the same.
- the first point (embedding, ``layer i``, final norm) whose output differs from the reference by
  more than ``rel`` x that point's own scale: where the conversion first goes wrong.

:func:`check` raises :class:`~nemo_reason.bridge.ParityError` with both numbers and that point.
"""

from __future__ import annotations

import contextlib

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from nemo_reason.bridge import ParityError

REL_TOL_FP32 = 1e-4


def probe_tokens(vocab_size: int, batch: int = 2, seq: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _points(embedding, layers, final_norm) -> List[Tuple[str, torch.nn.Module]]:
    points = [("embedding", embedding)] if embedding is not None else []
    points += [(f"layer {i}", m) for i, m in enumerate(layers)]
    return points + ([("final norm", final_norm)] if final_norm is not None else [])


@contextlib.contextmanager
def _traced(embedding, layers, final_norm, seq_first: bool):
    """Forward hooks on the embedding, each layer and the final norm, recording their outputs
    (batch-first, fp32, on the CPU) into the yielded dict; removed on exit."""
    trace: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    handles = []
    for name, module in _points(embedding, layers, final_norm):
        def hook(_m, _inp, out, name=name):
            t = _first(out).detach().float()
            trace[name] = (t.transpose(0, 1) if seq_first else t).cpu().clone()
        handles.append(module.register_forward_hook(hook))
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def trace_ours(model, bridge, tokens: torch.Tensor) -> Tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """Activations and logits of our one-process model (Megatron layers are sequence-first)."""
    model.eval()
    tokens = tokens.to(next(model.parameters()).device)
    pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    with _traced(bridge.our_embedding(model), bridge.our_layers(model), bridge.our_final_norm(model),
                 seq_first=True) as trace:
        logits = model(tokens, pos, None, runtime_gather_output=True)
    return trace, logits.detach().float().cpu()


@torch.no_grad()
def trace_hf(hf_model, bridge, tokens: torch.Tensor) -> Tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """Activations and logits of the transformers model (batch-first)."""
    hf_model.eval()
    with _traced(bridge.hf_embedding(hf_model), bridge.hf_layers(hf_model), bridge.hf_final_norm(hf_model),
                 seq_first=False) as trace:
        logits = hf_model(input_ids=tokens, use_cache=False).logits
    return trace, logits.detach().float()


def load_hf_model(hf_dir):
    """The transformers model of a folder, fp32 on the CPU; a clear error without transformers."""
    try:
        import transformers
    except ImportError:
        raise ParityError("the parity check needs the `transformers` package (pip install transformers), "
                          "or skip it with --no-verify") from None
    return transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)


@dataclass
class ParityReport:
    max_abs_diff: float
    scale: float
    tol: float
    rel_tol: float
    tokens: List[int]
    first_divergence: Optional[str] = None   # "layer 3: max |diff| 0.21 (scale 1.9)"
    points: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tol

    def summary(self) -> str:
        return (f"logits max |diff| {self.max_abs_diff:.3g} <= {self.tol:.3g} ({self.rel_tol:g} x logit scale "
                f"{self.scale:.3g}) on {self.tokens[0]}x{self.tokens[1]} tokens"
                if self.passed else
                f"logits max |diff| {self.max_abs_diff:.3g} > {self.tol:.3g} ({self.rel_tol:g} x logit scale "
                f"{self.scale:.3g}); first divergence: {self.first_divergence or 'only at the logits'}")

    def to_dict(self) -> dict:
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "scale": self.scale, "tol": self.tol,
                "rel_tol": self.rel_tol, "tokens": self.tokens, "first_divergence": self.first_divergence,
                "points": self.points}


def compare(reference: Tuple[dict, torch.Tensor], candidate: Tuple[dict, torch.Tensor],
            rel_tol: float = REL_TOL_FP32) -> ParityReport:
    """``reference`` and ``candidate`` are ``(trace, logits)``; logits are compared over the
    reference's vocabulary (the candidate's padded rows, if any, are left out)."""
    ref_trace, ref_logits = reference
    got_trace, got_logits = candidate
    v = ref_logits.shape[-1]
    if got_logits.shape[-1] < v or got_logits.shape[:-1] != ref_logits.shape[:-1]:
        raise ParityError(f"the converted model's logits have shape {tuple(got_logits.shape)}, the original's "
                          f"{tuple(ref_logits.shape)}")
    diff = (got_logits[..., :v] - ref_logits).abs().max().item()
    scale = ref_logits.abs().max().item()
    report = ParityReport(diff, scale, rel_tol * scale, rel_tol, list(ref_logits.shape[:2]))
    for name, ref in ref_trace.items():
        got = got_trace.get(name)
        if got is None or got.shape != ref.shape:
            d, s = float("inf"), ref.abs().max().item()
        else:
            d, s = (got - ref).abs().max().item(), ref.abs().max().item()
        report.points[name] = {"max_abs_diff": d, "scale": s}
        if report.first_divergence is None and d > rel_tol * max(s, 1e-12):
            report.first_divergence = f"{name}: max |diff| {d:.3g} (scale {s:.3g})"
    return report


def check(report: ParityReport, what: str) -> None:
    if not report.passed:
        raise ParityError(f"{what} failed the parity check: {report.summary()}")
