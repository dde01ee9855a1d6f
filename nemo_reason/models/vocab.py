"""The padded vocabulary size of the embedding and output layers, as Megatron-LM pads it.

The model is handed the tokenizer's vocabulary size (``build_model(cfg, vocab_size)``) and pads it
here; nothing in ``models/`` reads the tokenizer. Pure Python, so the planner sizes models with the
same function without importing torch.
"""

from __future__ import annotations

import math


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Pad the vocabulary so the output layer splits evenly across TP ranks.

    Megatron-LM pads to a multiple of ``divisible_by * tp``; we pad to a multiple of
    lcm(divisible_by, tp), which is the same whenever tp divides divisible_by (the usual case)
    and keeps the padded size, and so the model, identical across TP sizes for parity tests.
    """
    multiple = divisible_by * tp // math.gcd(divisible_by, tp)
    return ((vocab_size + multiple - 1) // multiple) * multiple
