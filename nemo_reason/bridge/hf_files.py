"""A Hugging Face model folder on disk: ``config.json``, safetensors shards with their index, tokenizer files.

Reading (:class:`SafetensorsReader`) opens each shard with ``safetensors.safe_open`` and reads one
tensor at a time (memory-mapped, in shard order, one shard mapped at a time: a conversion holds
one shard's pages and the tensors of one mapping, not the whole checkpoint); the index
(``model.safetensors.index.json``) says which shard holds which name, a lone ``model.safetensors``
works too. Writing (:class:`SafetensorsWriter`) buffers
tensors up to ``max_shard_bytes``, writes each full shard, and at the end renames them to HF's
``model-0000i-of-0000n.safetensors`` and writes the index (``metadata.total_size``, ``weight_map``).

Tokenizer files (:data:`TOKENIZER_FILES`) are copied as they are; what is absent is skipped.
Left out: ``pytorch_model.bin`` (pickles: convert them to safetensors first), hub downloads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from nemo_reason.bridge import BridgeError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")
DEFAULT_SHARD_BYTES = 2 * 1024 ** 3


def read_config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise BridgeError(f"{hf_dir}: no config.json (give a local Hugging Face model folder: config.json, "
                          "*.safetensors, tokenizer.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BridgeError(f"{path} is not valid JSON ({exc})") from None


class SafetensorsReader:
    """Names and tensors of a folder's safetensors checkpoint, read one tensor at a time."""

    OPEN_SHARDS = 1

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        self._open = safe_open
        index = self.dir / INDEX
        if index.is_file():
            self.weight_map: Dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.dir / SINGLE).is_file():
            with safe_open(str(self.dir / SINGLE), framework="pt") as f:
                self.weight_map = {k: SINGLE for k in f.keys()}
        else:
            found = sorted(p.name for p in self.dir.glob("*.bin"))
            hint = f" (found {', '.join(found)}: convert them to safetensors first)" if found else ""
            raise BridgeError(f"{self.dir}: neither {INDEX} nor {SINGLE}{hint}")
        for shard in sorted(set(self.weight_map.values())):
            if not (self.dir / shard).is_file():
                raise BridgeError(f"{self.dir}: shard {shard} named by {INDEX} is missing")
        self._handles: Dict[str, object] = {}
        self._shard_index = {sh: i for i, sh in enumerate(sorted(set(self.weight_map.values())))}

    def names(self) -> List[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        shard = self.weight_map[name]
        h = self._handles.pop(shard, None)
        if h is None:
            # Tensors are copied out of the memory-mapped shard as they are read; the pages a shard's
            # mapping touched count as resident until it is closed, so at most OPEN_SHARDS stay open
            # (read in shard order, see shard_order, each shard is opened once).
            h = self._open(str(self.dir / shard), framework="pt").__enter__()
            while len(self._handles) >= self.OPEN_SHARDS:
                old = next(iter(self._handles))
                self._handles.pop(old).__exit__(None, None, None)
        self._handles[shard] = h  # most recently used last
        return h.get_tensor(name)

    def shard_order(self, names) -> int:
        """Sort key: the index of the first shard holding any of ``names``."""
        return min(self._shard_index[self.weight_map[n]] for n in names)

    def close(self) -> None:
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles.clear()


class SafetensorsWriter:
    """Sharded safetensors with an index, written as tensors arrive (one shard buffered at a time)."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: Optional[dict] = None):
        self.dir = Path(out_dir)
        self.max = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._buf: Dict[str, torch.Tensor] = {}
        self._bytes = 0
        self._shards: List[List[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        if self._buf and self._bytes + n > self.max:
            self._flush()
        self._buf[name] = tensor.contiguous()
        self._bytes += n
        self.total += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._buf, str(self.dir / f".shard-{len(self._shards):05d}.safetensors"), metadata=self.metadata)
        self._shards.append(list(self._buf))
        self._buf, self._bytes = {}, 0

    def close(self) -> List[str]:
        """Write the last shard, name the shards as HF does, write the index; the shard names."""
        if self._buf or not self._shards:
            self._flush()
        n = len(self._shards)
        weight_map, names = {}, []
        for i, keys in enumerate(self._shards):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.dir / f".shard-{i:05d}.safetensors", self.dir / name)
            names.append(name)
            weight_map.update({k: name for k in keys})
        (self.dir / INDEX).write_text(json.dumps({"metadata": {"total_size": self.total},
                                                  "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return names


def copy_tokenizer_files(src: Path, dest: Path, names: Iterable[str] = TOKENIZER_FILES) -> List[str]:
    """Copy the tokenizer files ``src`` holds into ``dest``; the names copied."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for n in names:
        if (Path(src) / n).is_file():
            shutil.copyfile(Path(src) / n, dest / n)
            done.append(n)
    return done
