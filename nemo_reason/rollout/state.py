"""Generation state for in-process decoding: Megatron's ``StaticInferenceContext``, driven token by token.

Megatron-Core already keeps every layer's generation state in one object, keyed by layer number:
attention layers put their KV cache there (``transformer/attention.py``
``_adjust_key_value_for_inference``) and Mamba layers their conv and SSM states (Megatron's
``MambaMixer`` and the portable mixer alike: ``(conv_state [b, conv_dim, d_conv], ssm_state [b, H,
P, N])``). So a hybrid decodes with O(1) work and memory per token in its Mamba layers and a growing
KV cache only in its few attention layers. (With the local spec's attention,
:mod:`nemo_reason.backend.portable.self_attention`, the cached keys are stored already rotated by
RoPE, as in Megatron's flash-decode path, so a decode step rotates only the new token.) On CPU this runs through ``backend.cpu_compat`` like the
rest of Megatron (the KV buffers are allocated on "the current device").

:class:`GenerationState` wraps the context with the bookkeeping a caller would otherwise repeat:
positions, the running offset, and "logits for every new token or only the last".

    state = GenerationState(max_batch_size=b, max_sequence_length=n)
    logits = state.step(model, prompt)               # prefill: [b, 1, V] (the last token)
    logits = state.step(model, next_tokens[:, None])  # one decode step per call

:meth:`GenerationState.keep_rows` drops finished sequences from the batch (KV buffers and Mamba
states compacted in place), so a batch whose rows finish early stops paying for them. Sampling is
:mod:`nemo_reason.rollout.sampler`'s.

Left out: dynamic batching (Megatron's ``DynamicInferenceContext`` needs Triton/CUDA), pipeline
parallelism across stages.
"""

from __future__ import annotations

import torch
from megatron.core.inference.contexts import StaticInferenceContext


class GenerationState:
    """One batch of sequences being generated: Megatron's static context plus the offset bookkeeping."""

    def __init__(self, max_batch_size: int, max_sequence_length: int):
        self.context = StaticInferenceContext(max_batch_size, max_sequence_length)
        # Positions for every step, sliced rather than rebuilt per call.
        self._positions = torch.arange(max_sequence_length).unsqueeze(0)

    @property
    def length(self) -> int:
        """Tokens already consumed (prompt + generated)."""
        return self.context.sequence_len_offset

    def reset(self) -> None:
        """Start a new batch; every layer zeroes or overwrites its state at the next prefill."""
        self.context.reset()

    @torch.no_grad()
    def step(self, model, tokens: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Feed ``tokens [b, n]`` (a prompt, or ``n == 1`` new token) and return their logits.

        Returns ``[b, n, V]`` with ``all_logits`` else ``[b, 1, V]`` (the last position), gathered
        over tensor-parallel ranks. The model must be in eval mode (Megatron only uses the cache then).
        """
        if model.training:
            raise RuntimeError("GenerationState.step needs model.eval(): Megatron ignores the inference "
                               "context in training mode")
        b, n = tokens.shape
        if self.length + n > self.context.max_sequence_length:
            raise ValueError(f"{self.length} + {n} tokens exceed max_sequence_length="
                             f"{self.context.max_sequence_length}")
        if self.length == 0:
            self.context.enable_prefill_mode()
        else:
            self.context.enable_decode_mode()
        if self._positions.device != tokens.device:
            self._positions = self._positions.to(tokens.device)
        positions = self._positions[:, self.length:self.length + n].expand(b, n)
        self.context.materialize_only_last_token_logits = not all_logits
        logits = model(tokens, positions, None, inference_context=self.context, runtime_gather_output=True)
        self.context.sequence_len_offset += n
        return logits

    @torch.no_grad()
    def keep_rows(self, model, rows: torch.Tensor) -> None:
        """Keep only the sequences ``rows`` (indices into the current batch, in their new order).

        Attention KV buffers ``[max_seq, max_batch, ...]`` get those rows moved to the front (the
        layers read the first ``b`` rows of the batch they are fed); Mamba layers' states ``[b,
        ...]`` are replaced by the kept rows, and each mixer's ``cached_batch_size`` (Megatron's
        ``MambaMixer`` and the portable mixer keep the same attribute) is set to the new size, so
        the next decode step continues them instead of zeroing a fresh state."""
        if self.length == 0:
            raise RuntimeError("keep_rows after the prefill: there is nothing to keep yet")
        mixers = {m.layer_number: m for m in model.modules()
                  if hasattr(m, "cached_batch_size") and hasattr(m, "layer_number")}
        cache = self.context.key_value_memory_dict
        n = rows.numel()
        for layer, (a, b) in cache.items():
            if layer in mixers:
                cache[layer] = (a.index_select(0, rows), b.index_select(0, rows))
                mixers[layer].cached_batch_size = n
            else:
                a[:, :n] = a.index_select(1, rows)
                b[:, :n] = b.index_select(1, rows)

    def state_bytes(self) -> int:
        """Memory held by the caches (KV buffers, conv and SSM states) of this rank."""
        return sum(t.numel() * t.element_size() for pair in self.context.key_value_memory_dict.values() for t in pair)
