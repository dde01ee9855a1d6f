"""Batched sampling by the model being trained: ``generate(model, tokenizer, prompts, params)``.

The model is what a training step holds (``TrainState.model``: DDP- and/or ``Float16Module``-wrapped
``GPTModel``/``MambaModel`` chunks, or a bare chunk) and generation runs on those very weights: DDP
is unwrapped (its forward only forwards), ``Float16Module`` is kept (it casts the inputs in and the
logits back to fp32), nothing is copied. The modules go to eval mode for the call (Megatron only
uses the inference context then) and get their own training flags back afterwards; sequence
parallelism is switched off for the call outside MoE layers, as Megatron's static generation
controller does, and restored.

The batch: every prompt ``n`` times (rows ``i * n .. i * n + n - 1`` are prompt ``i``), right-padded
as Megatron's static controller does it: prefill up to the shortest prompt, then one token per row
per step; a row still inside its prompt is fed its own next prompt token instead of the sample (left
padding would pollute the Mamba conv/SSM states). The attention KV cache and the Mamba states live
in :class:`~nemo_reason.rollout.state.GenerationState`. A row ends at the end-of-document token
(``tokenizer.eod``), at a stop string or after ``max_new_tokens``; finished rows are dropped from
the batch (its caches compacted) once a quarter of the rows still computed have finished, and the
loop ends when every row has.

Sampling (fp32, on the logits of the tokenizer's real vocabulary: ids of the padding that
Megatron adds to the vocabulary are never sampled): ``greedy`` is argmax; otherwise logits /
``temperature``, then top-k, then top-p (the smallest set of tokens whose probability reaches
``top_p``; the most likely token always stays), then one draw per row by inverse CDF from a
uniform of a CPU ``torch.Generator`` seeded with ``seed`` (one uniform per row of the original
batch per step, so the draws do not depend on which rows are still running). Same inputs, same
seed: same samples, on any device.

``Sample.logprobs`` are the model's log-probabilities of the sampled tokens at temperature 1 over
the whole (padded) vocabulary: ``log_softmax(logits.float())[token]``, the quantity a GRPO/PPO
update recomputes as its new log-probs (Megatron's cross-entropy also runs over the padded
vocabulary), computed from the same logits the token was drawn from. They are not the log-probs of
the tempered/truncated sampling distribution.

Tensor parallelism: the logits are gathered over the TP ranks by the output layer
(``runtime_gather_output``), so every rank sees the same ``[b, V]``; the tokens of TP rank 0 are
broadcast over the TP group each step all the same, so the ranks can never drift apart. Each data
parallel rank samples its own prompts with ``seed`` as given (pass ``seed + dp_rank`` for
independent streams).

Left out: pipeline parallelism (one stage holds the whole model or it raises), context
parallelism, beam search, repetition penalties, logits processors, streaming.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from nemo_reason.rollout.state import GenerationState

FINISH_REASONS = ("eos", "stop", "length")
SHRINK_FRACTION = 0.25  # compact the batch once this share of the computed rows has finished


@dataclass
class SamplingParams:
    n: int = 1                  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0              # 0: off
    greedy: bool = False        # argmax (temperature, top-k, top-p ignored)
    max_new_tokens: int = 64
    stop: List[str] = field(default_factory=list)  # stop strings, matched in the detokenized completion
    seed: int = 0

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n={self.n}: ask for at least 1 sample per prompt")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens={self.max_new_tokens}: must be at least 1")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature}: must be > 0 "
                             f"(use greedy=True for argmax)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p={self.top_p}: must be in (0, 1] (1 turns it off)")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k={self.top_k}: must be >= 0 (0 turns it off)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingParams.stop={self.stop!r}: stop strings must be non-empty strings")


@dataclass
class Sample:
    prompt_index: int
    tokens: List[int]           # generated tokens only (no prompt); the eos / stop-completing token included
    logprobs: List[float]       # per token: log_softmax(logits) at temperature 1, fp32 (see the module docstring)
    text: str                   # the detokenized tokens: without the eos token, cut after the stop string
    finish_reason: str          # "eos" | "stop" | "length"


# ---------------------------------------------------------------------------------------- the model
def _unwrap(model):
    """``(callable, bare module)``: DDP is skipped, Float16Module kept (it casts in and out)."""
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise NotImplementedError(f"generate got {len(model)} model chunks (virtual pipeline stages): "
                                      f"generation runs with parallel.pp=1 and no vpp")
        model = model[0]
    while isinstance(model, DistributedDataParallel) or (
            hasattr(model, "module") and type(model).__name__ == "DistributedDataParallel"):
        model = model.module
    bare = model
    while isinstance(bare, Float16Module):
        bare = bare.module
    return model, bare


def _check_layout(bare) -> None:
    from megatron.core import parallel_state

    pp = 1
    if parallel_state.model_parallel_is_initialized():
        pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp > 1 or not (getattr(bare, "pre_process", True) and getattr(bare, "post_process", True)):
        raise NotImplementedError("generate needs the whole model on one pipeline stage (parallel.pp=1): "
                                  "pipeline-parallel generation is not implemented; load the checkpoint at pp=1")
    if getattr(bare.config, "context_parallel_size", 1) > 1:
        raise NotImplementedError("generate runs with parallel.cp=1; load the checkpoint at cp=1")


@contextlib.contextmanager
def _generation_mode(callable_model, bare):
    """Eval mode and no sequence parallelism (outside MoE layers) for the call; both restored."""
    from megatron.core.transformer.utils import set_model_to_sequence_parallel

    modes = [(m, m.training) for m in callable_model.modules()]
    sp = bool(bare.config.sequence_parallel)
    callable_model.eval()
    if sp:
        from megatron.core.transformer.moe.moe_layer import BaseMoELayer

        # Decode feeds one token per row: nothing to scatter along the sequence. MoE layers keep it:
        # they gather the (replicated) tokens over the TP group and reduce-scatter the result back,
        # which returns each rank the full output (Megatron's static controller does the same).
        set_model_to_sequence_parallel(bare, False, exclude_modules=[BaseMoELayer])
    try:
        yield
    finally:
        if sp:
            set_model_to_sequence_parallel(bare, True)
        for m, training in modes:
            m.training = training


def _tp_group():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None, 0
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None, 0
    return parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_src_rank()


# ---------------------------------------------------------------------------------------- sampling
def sample_tokens(logits: torch.Tensor, params: SamplingParams, u: Optional[torch.Tensor]) -> torch.Tensor:
    """One token per row from ``logits [b, V]`` (fp32, padding ids already at -inf); ``u [b]``
    uniforms in [0, 1) for the draws (unused when greedy)."""
    if params.greedy:
        return logits.argmax(dim=-1)
    x = logits / params.temperature if params.temperature != 1.0 else logits
    vocab = x.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first never is).
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter_(-1, order, sorted_x)
    probs = torch.softmax(x, dim=-1)
    cdf = probs.cumsum(dim=-1)
    # right=True never lands on a zero-probability token (its cdf equals its predecessor's).
    idx = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=vocab - 1)


def _prompt_tensor(prompts: List[List[int]], n: int, width: int):
    lengths = torch.tensor([len(p) for p in prompts for _ in range(n)], dtype=torch.long)
    buf = torch.zeros(lengths.numel(), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        buf[i * n:(i + 1) * n, :len(p)] = torch.as_tensor(p, dtype=torch.long)
    return buf, lengths


class _StopMatcher:
    """Stop strings matched on the detokenized tail of a row (each check costs one short detokenize)."""

    def __init__(self, tokenizer, stop: List[str]):
        self.tokenizer, self.stop = tokenizer, stop
        # A token decodes to at least one byte and a character to at most 4: this many tokens
        # always cover the longest stop string plus the token that completed it.
        self.window = 4 * max(len(s) for s in stop) + 4

    def hit(self, tokens: List[int]) -> bool:
        tail = self.tokenizer.detokenize(tokens[-self.window:])
        return any(s in tail for s in self.stop)

    def cut(self, text: str) -> str:
        ends = [text.find(s) + len(s) for s in self.stop if s in text]
        return text[:min(ends)] if ends else text


# ---------------------------------------------------------------------------------------- the loop
@contextlib.contextmanager
def _inference():
    try:
        with torch.inference_mode():
            yield
    finally:
        # RotaryEmbedding.forward is lru_cached: keep the inference tensors made here out of the
        # tables a training forward reads later (in-place use of one outside inference mode fails).
        from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

        RotaryEmbedding.forward.cache_clear()


def generate(model, tokenizer, prompts: List[List[int]], params: SamplingParams) -> List[Sample]:
    """Sample ``params.n`` completions of every prompt (token ids, no padding) with ``model``.

    Returns ``len(prompts) * n`` samples, prompt by prompt (``prompt_index`` says which). Runs
    under ``torch.inference_mode``; see the module docstring for the batch scheme, the sampling
    and what ``logprobs`` hold."""
    params.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt (give each at least one token, "
                         "e.g. a BOS or the template's first token)")
    callable_model, bare = _unwrap(model)
    _check_layout(bare)
    vocab = int(tokenizer.vocab_size)
    eod = getattr(tokenizer, "eod", None)
    device = next(bare.parameters()).device
    n, max_new = params.n, params.max_new_tokens
    longest, shortest = max(len(p) for p in prompts), min(len(p) for p in prompts)
    width = longest + max_new
    buf, lengths = _prompt_tensor(prompts, n, width)                   # [B, W] tokens, [B] prompt lengths
    total = buf.shape[0]
    buf, lengths = buf.to(device), lengths.to(device)
    logprobs = torch.zeros(total, width, dtype=torch.float32, device=device)
    ends, reasons = [0] * total, [""] * total                         # per row: last position, why
    generator = torch.Generator().manual_seed(params.seed)
    stop = _StopMatcher(tokenizer, params.stop) if params.stop else None
    tp_group, tp_src = _tp_group()

    state = GenerationState(max_batch_size=total, max_sequence_length=width)
    rows = torch.arange(total, device=device)                          # batch position -> row of buf
    live = torch.ones(total, dtype=torch.bool, device=device)          # per batch position: still running
    row_len = lengths
    # Host-side bookkeeping that spares the common step its masks: from t = longest no row is inside
    # its prompt; while no row has finished, every row samples; before t = shortest + max_new - 1 no
    # row can end by length (so without eod and stop strings nothing can end at all).
    n_live, compacted, first_length_end = total, False, shortest + max_new - 1
    with _generation_mode(callable_model, bare), _inference():
        logits = state.step(callable_model, buf[:, :shortest])
        t = shortest                                                   # the position being predicted
        while True:
            step_logits = logits[:, -1, :].float()                     # [b, V_padded]
            u = None
            if not params.greedy:
                u = torch.rand(total, generator=generator).to(device)
                u = u[rows] if compacted else u
            token = sample_tokens(step_logits[:, :vocab], params, u)   # padding ids are never drawn
            if tp_group is not None:
                torch.distributed.broadcast(token, tp_src, group=tp_group)
            lp = torch.log_softmax(step_logits, dim=-1).gather(-1, token.unsqueeze(-1)).squeeze(-1)
            if t >= longest and n_live == rows.numel():               # every row samples
                sampled = live
                at = slice(None) if not compacted else rows
                buf[at, t] = token
                logprobs[at, t] = lp
            else:
                sampled = live & ~(t < row_len)
                token = torch.where(sampled, token, buf[rows, t])     # prompt rows: their own token
                buf[rows, t] = token                                   # (finished rows: unchanged)
                logprobs[rows, t] = torch.where(sampled, lp, logprobs[rows, t])
            if eod is not None or stop is not None or t >= first_length_end:
                none = torch.zeros_like(sampled)
                is_eos = sampled & (token == eod) if eod is not None else none
                hit = _stop_hits(stop, buf, rows, sampled & ~is_eos, row_len, t) if stop is not None else none
                done = is_eos | hit | (sampled & (t - row_len + 1 >= max_new))
                if bool(done.any()):
                    for pos in done.nonzero().squeeze(-1).tolist():
                        i = int(rows[pos])
                        ends[i] = t
                        reasons[i] = "eos" if bool(is_eos[pos]) else "stop" if bool(hit[pos]) else "length"
                    live &= ~done
                    n_live = int(live.sum())
                    if n_live == 0:
                        break
                    if n_live <= (1 - SHRINK_FRACTION) * rows.numel():
                        keep = live.nonzero().squeeze(-1)
                        state.keep_rows(callable_model, keep)
                        rows, live, token = rows[keep], live[keep], token[keep]
                        row_len = lengths[rows]
                        compacted = True
            logits = state.step(callable_model, token.unsqueeze(-1))  # token == buf[rows, t]
            t += 1
    return _samples(tokenizer, buf.cpu(), logprobs.cpu(), lengths.cpu(), ends, reasons, n, eod, stop)


def _stop_hits(stop: _StopMatcher, buf, rows, candidates, row_len, t) -> torch.Tensor:
    """Which of the ``candidates`` (batch positions) have just completed a stop string."""
    hits = torch.zeros_like(candidates)
    for pos in candidates.nonzero().squeeze(-1).tolist():
        i = int(rows[pos])
        if stop.hit(buf[i, int(row_len[pos]):t + 1].tolist()):
            hits[pos] = True
    return hits


def _samples(tokenizer, buf, logprobs, lengths, ends, reasons, n, eod, stop) -> List[Sample]:
    out = []
    for i in range(buf.shape[0]):
        start, end = int(lengths[i]), ends[i] + 1
        tokens = buf[i, start:end].tolist()
        body = tokens[:-1] if reasons[i] == "eos" else tokens
        text = tokenizer.detokenize(body) if body else ""
        if reasons[i] == "stop":
            text = stop.cut(text)
        out.append(Sample(i // n, tokens, logprobs[i, start:end].tolist(), text, reasons[i]))
    return out
