"""The ``import-hf`` and ``export-hf`` subcommands of ``nemo-reason``.

    nemo-reason import-hf HF_DIR --output CKPT [--no-verify] [--json]
    nemo-reason export-hf CKPT --output HF_DIR [--no-verify] [--dtype auto|fp32|bf16|fp16]
                          [--model-type llama|qwen2|...] [--max-shard-size 2GB] [--json]

``HF_DIR`` is a local folder (``config.json``, ``*.safetensors`` with their index, ``tokenizer.json``);
nothing is downloaded. ``CKPT`` (import) becomes a complete checkpoint folder that
``run.init_checkpoint=CKPT``, ``eval``, ``generate`` and ``show-checkpoint`` take; export takes an
``iter_*`` folder, a ``checkpoints/`` folder or a step folder. Both run the parity gate unless
``--no-verify``; any failure (unsupported architecture, unrepresentable field, missing or extra
tensor, parity) exits 2 with the reason and leaves no output folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size like 500MB or 2GB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def cmd_import_hf(ns) -> int:
    from nemo_reason.bridge.convert import import_hf

    summary = import_hf(ns.hf_dir, ns.output, verify=not ns.no_verify, log=_say)
    if ns.json:
        print(json.dumps(summary, indent=1))
    return 0


def cmd_export_hf(ns) -> int:
    from nemo_reason.bridge.convert import export_hf

    summary = export_hf(ns.checkpoint, ns.output, verify=not ns.no_verify, dtype=ns.dtype, model_type=ns.model_type,
                        max_shard_bytes=ns.max_shard_size, log=_say)
    if ns.json:
        print(json.dumps(summary, indent=1))
    return 0


def add_bridge_commands(sub) -> None:
    p = sub.add_parser("import-hf", help="convert a local Hugging Face model folder into a checkpoint (parity-checked)",
                       description="Convert HF_DIR (config.json, safetensors, tokenizer.json; llama, qwen2, qwen3, "
                                   "nemotron, and the MoE/hybrid bridges present) into the checkpoint folder CKPT, "
                                   "then check that both compute the same logits (docs/bridge.md).")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("--output", "-o", required=True, metavar="CKPT", help="the checkpoint folder to create")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check (models too big to hold twice)")
    p.add_argument("--json", action="store_true", help="print the summary (parity numbers) as JSON on stdout")
    p.set_defaults(fn=cmd_import_hf)
    p = sub.add_parser("export-hf", help="convert a checkpoint into a Hugging Face model folder (parity-checked)",
                       description="Convert CKPT (any parallel layout) into HF_DIR: sharded safetensors with their "
                                   "index, config.json and the tokenizer, then check the written folder against "
                                   "the checkpoint's logits (docs/bridge.md).")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--output", "-o", required=True, metavar="HF_DIR", help="the folder to create")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="tensor dtype written (auto: the dtype it was imported in, else fp32)")
    p.add_argument("--model-type", default=None, metavar="T",
                   help="HF architecture to write (default: the one it was imported from, else inferred)")
    p.add_argument("--max-shard-size", type=_bytes, default="2GB", metavar="SIZE", help="per safetensors shard")
    p.add_argument("--json", action="store_true", help="print the summary (parity numbers) as JSON on stdout")
    p.set_defaults(fn=cmd_export_hf)
