"""The checkpoint subcommand of ``nemo-reason``: ``show-checkpoint``.

    nemo-reason show-checkpoint PATH [--json] [--no-checksums]

PATH is a checkpoint (``iter_*``), a step's ``checkpoints/`` folder or a step folder (then its
newest complete checkpoint). Prints what the checkpoint holds, read from its own files with no
recipe at hand (:mod:`nemo_reason.checkpoint.meta`): architecture, step, tokens seen, parameters,
tokenizer, the layout it was saved at, and whether its files still match its marker
(:mod:`nemo_reason.checkpoint.marker`). Exit 0 when it verifies (or predates checksums), 1 when it
is damaged, 2 when PATH holds no complete checkpoint. Imports no torch or Megatron.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

from nemo_reason.checkpoint import marker
from nemo_reason.checkpoint.meta import CheckpointMeta, read_meta
from nemo_reason.config.errors import ConfigError

EXIT_DAMAGED = 1


def resolve_checkpoint(path: str) -> Path:
    """The checkpoint PATH names: itself, or the newest complete one under it (``checkpoints/``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if marker.is_complete(p):
        return p
    if marker.iter_step(p) is not None or p.name.startswith(".tmp_iter_"):
        raise ConfigError(f"{path} is not a complete checkpoint (no {marker.MARKER}: a save that never finished)")
    for root in (p, p / "checkpoints"):
        done = marker.list_complete(root)
        if done:
            return done[-1]
    raise ConfigError(f"{path}: no complete checkpoint here; give an iter_* folder, a step's checkpoints/ folder "
                      "or a step folder (<run.dir>/<step>)")


def _count(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n:,}"


def describe_model(arch: Dict[str, Any]) -> str:
    """One line: the model type and its sizes."""
    a = arch
    parts = [f"{a['num_layers']} layers", f"hidden {a['hidden_size']}", f"ffn {a['ffn_hidden_size']}",
             f"{a['num_attention_heads']} heads ({a['num_query_groups']} query groups, head size {a['kv_channels']})",
             a["activation"], a["normalization"], f"{a['position_embedding_type']} positions",
             "untied embeddings" if a["untie_embeddings_and_output_weights"] else "tied embeddings"]
    if a["type"] == "hybrid":
        parts[0] += f" ({a['hybrid_pattern']})"
        parts.append(f"Mamba-2 state {a['mamba_state_dim']}, head {a['mamba_head_dim']}, "
                     f"{a['mamba_num_groups']} groups, {a['mamba_num_heads']} heads")
    if "num_moe_experts" in a:
        parts.append(f"{a['num_moe_experts']} experts of ffn {a['moe_ffn_hidden_size']}"
                     + (f", shared {a['moe_shared_expert_intermediate_size']}"
                        if a.get("moe_shared_expert_intermediate_size") else ""))
    return f"{a['type']}: " + ", ".join(parts)


def describe_tokenizer(rec: Dict[str, Any]) -> str:
    if not rec:
        return "unknown"
    out = rec.get("name", "?")
    if rec.get("path"):
        out += f" {rec['path']}"
    if rec.get("vocab_size") is not None:
        out += f", {rec['vocab_size']:,} tokens"
    if rec.get("eod") is not None:
        out += f" (eod {rec['eod']})"
    if rec.get("file"):
        out += f"; copy in the checkpoint: {rec['file']}"
    elif rec.get("name") not in (None, "byte"):
        out += "; no copy in the checkpoint (written before tokenizer copies)"
    return out


def report(ckpt: Path, checksums: bool = True) -> Dict[str, Any]:
    """Everything ``show-checkpoint`` prints, as one JSON-able object."""
    info: CheckpointMeta = read_meta(ckpt)
    ok, problems = marker.verify(ckpt, checksums=checksums)
    out = info.to_dict()
    out["verified"] = ok
    out["problems"] = problems
    out["checksums_checked"] = bool(checksums and ok is not None)
    try:
        out["files_checked"] = len(marker.read_marker(ckpt).get("files") or {})
    except ValueError:
        out["files_checked"] = 0
    return out


def format_report(r: Dict[str, Any]) -> str:
    arch = r.get("architecture")
    lay = r.get("layout") or {}
    rows = [("checkpoint", r["path"]),
            ("model", describe_model(arch) if arch else "unknown (no meta.json model, no config.yaml)"),
            ("step", f"{r['step']:,}" + (f" ({r['step_type']})" if r.get("step_type") else "")),
            ("tokens seen", _count(r.get("tokens")) + f" ({r['consumed_samples']:,} samples)"),
            ("parameters", _count(r.get("params"))),
            ("tokenizer", describe_tokenizer(r.get("tokenizer") or {})),
            ("layout", " ".join(f"{k}={lay[k]}" for k in ("tp", "pp", "cp", "dp", "world") if k in lay)
             or "unknown"),
            ]
    if r.get("saved_at"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["saved_at"]))
        took = f", {r['save_seconds']:.1f} s" if r.get("save_seconds") is not None else ""
        rows.append(("saved", f"{when}{took}, {marker.human_bytes(r.get('size_bytes'))}"))
    if r.get("fingerprint"):
        rows.append(("fingerprint", r["fingerprint"]))
    if r["verified"] is None:
        rows.append(("verifies", "unknown: written before checkpoints recorded sizes and checksums"))
    elif r["verified"]:
        how = "sizes and checksums" if r["checksums_checked"] else "sizes (checksums not read: --no-checksums)"
        rows.append(("verifies", f"yes ({r['files_checked']} files: {how})"))
    else:
        rows.append(("verifies", "NO: " + "; ".join(r["problems"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_show_checkpoint(ns) -> int:
    ckpt = resolve_checkpoint(ns.path)
    r = report(ckpt, checksums=not ns.no_checksums)
    print(json.dumps(r, indent=1, default=str) if ns.json else format_report(r))
    return EXIT_DAMAGED if r["verified"] is False else 0


def add_checkpoint_commands(sub) -> None:
    """Register ``show-checkpoint`` on the CLI's subparsers."""
    p = sub.add_parser("show-checkpoint", help="print what a checkpoint holds and whether it verifies",
                       description="Print a checkpoint's architecture, step, tokens seen, parameter count, "
                                   "tokenizer, the layout it was saved at and its step type, read from the "
                                   "checkpoint alone (no recipe), and check its files against its marker. "
                                   "Exit 1 when it is damaged.")
    p.add_argument("path", metavar="PATH",
                   help="an iter_* checkpoint, a step's checkpoints/ folder or a step folder (its newest checkpoint)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-checksums", action="store_true",
                   help="check file sizes only (fast on a large checkpoint), not their checksums")
    p.set_defaults(fn=cmd_show_checkpoint)

