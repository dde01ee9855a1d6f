"""Tensor dumps the bridge tests compare: every tensor of a Hugging Face safetensors folder, and our
checkpoint's weights under their canonical (one-process) names."""

from __future__ import annotations

from pathlib import Path


def hf_tensors(folder: Path) -> dict:
    """``{name: tensor}`` over all ``*.safetensors`` shards of ``folder``."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def our_tensors(ckpt: Path, vocab: int = 300) -> dict:
    """Our checkpoint ``ckpt`` built as the model its metadata describes, as canonical tensors (copies)."""
    from nemo_reason.bridge.megatron_side import build_our_model, canonical_tensors
    from nemo_reason.checkpoint.meta import read_meta

    model = build_our_model(read_meta(ckpt).model, vocab, checkpoint=ckpt)
    return {k: v.detach().clone() for k, v in canonical_tensors(model).items()}
