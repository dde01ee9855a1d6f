"""The compression demo (recipes/tiny_hybrid_compress.yaml) on the CPU: run it, tabulate, plot.

    python benchmarks/plot_compress.py --run      # both runs, then the plot (~10 min on 2 quiet cores)
    python benchmarks/plot_compress.py --compress RUN --scratch RUN2 --out docs/img/compress_tiny_hybrid.png

``--run`` runs the recipe's pipeline (pretrain the teacher, prune it to about half, distill the
student from the teacher, a ``perplexity`` step after each), then the from-scratch baseline: one
``pretrain`` step of the architecture the prune step produced (read from its checkpoint's meta:
sizes and the pattern the importance chose), for as many steps as the distill step, then
``perplexity``. All losses are on the same held-out batches (the validation split, ``perplexity``
with the same ``batches``). The plot: validation LM loss against training tokens (the teacher's and
the scratch model's curves, the pruned and distilled students' points), and the distillation's
validation KL. Prints the table docs/compression.md quotes. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RECIPE = "tiny_hybrid_compress"
ARCH_FIELDS = ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
               "mamba_num_heads", "mamba_head_dim", "num_layers", "hybrid_pattern")


def pruned_architecture(compress: Path) -> dict:
    """Model overrides of the architecture the prune step produced (its checkpoint's meta)."""
    meta = _json(next((compress / "prune" / "checkpoints").glob("iter_*")) / "meta.json")
    return {f"model.{k}": meta["model"][k] for k in ARCH_FIELDS}


def read_metrics(step_dir: Path):
    path = step_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def scratch_pipeline(steps: int, model: dict) -> str:
    ov = ", ".join(f"{k}: {json.dumps(v)}" for k, v in model.items())
    return (f"pipeline=[{{type: pretrain, name: scratch, overrides: {{{ov}, trainer.max_steps: {steps}, "
            f"trainer.save_every: {steps}, optim.warmup_steps: {max(1, steps // 10)}}}}}, "
            "{type: perplexity, name: scratch_loss, batches: 4}]")


def run_both(compress: Path, scratch: Path, steps: int) -> None:
    """The recipe, then the from-scratch run of the architecture its prune step produced."""
    cli = [sys.executable, "-m", "nemo_reason.cli", "run", RECIPE, "trainer.progress=false"]
    subprocess.run(cli + [f"run.dir={compress}"], check=True)
    subprocess.run(cli + [f"run.dir={scratch}", scratch_pipeline(steps, pruned_architecture(compress))], check=True)


def summary(compress: Path, scratch: Path) -> dict:
    loss = {name: _json(compress / name / "metrics.json")["loss"]
            for name in ("teacher_loss", "pruned_loss", "distilled_loss")}
    loss["scratch_loss"] = _json(scratch / "scratch_loss" / "metrics.json")["loss"]
    prune = _json(compress / "prune" / "metrics.json")
    distill = read_metrics(compress / "distill")
    tokens = max((r.get("tokens", 0) for r in distill), default=0)
    return {"loss": loss, "gap": {k: v - loss["teacher_loss"] for k, v in loss.items()},
            "params_teacher": prune["params_before"], "params_student": prune["params_after"],
            "hybrid_pattern": prune.get("hybrid_pattern"), "distill_tokens": tokens,
            "scratch_params": _json(scratch / "scratch_loss" / "metrics.json").get("params")}


def plot(compress: Path, scratch: Path, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(compress, scratch)
    loss = s["loss"]
    teacher = [r for r in read_metrics(compress / "teacher") if "eval_loss" in r]
    scr = [r for r in read_metrics(scratch / "scratch") if "eval_loss" in r]
    dist = read_metrics(compress / "distill")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot([r["tokens"] for r in teacher], [r["eval_loss"] for r in teacher], "-", color="0.5",
             label=f"teacher pretraining ({s['params_teacher'] / 1e6:.2f} M)")
    ax1.plot([r["tokens"] for r in scr], [r["eval_loss"] for r in scr], "o-", ms=3, color="C1",
             label=f"student architecture from scratch ({s['params_student'] / 1e6:.2f} M)")
    n = s["distill_tokens"]
    ax1.plot([0, n], [loss["pruned_loss"], loss["distilled_loss"]], "s--", color="C0",
             label="pruned -> distilled (same tokens)")
    ax1.axhline(loss["teacher_loss"], color="k", lw=0.8, ls=":", label=f"teacher {loss['teacher_loss']:.3f}")
    ax1.set_xlabel("training tokens of the run")
    ax1.set_ylabel("validation LM loss (nats/token)")
    ax1.set_title("held-out loss (same batches for all)")
    ax1.legend(fontsize=8)
    ax1.set_ylim(min(loss.values()) - 0.3, max(loss["pruned_loss"], loss["scratch_loss"]) + 1.0)
    keys = [k for k in ("eval_kd_loss", "eval_distill_loss", "eval_loss") if any(k in r for r in dist)]
    if keys:
        ev = [r for r in dist if keys[0] in r]
        ax2.plot([r["tokens"] for r in ev], [r[keys[0]] for r in ev], "o-", ms=3, color="C0", label=keys[0])
    tr = [r for r in dist if "kd_loss" in r]
    ax2.plot([r["tokens"] for r in tr], [r["kd_loss"] for r in tr], lw=0.8, alpha=0.6, color="C2",
             label="kd_loss (training)")
    ax2.set_xlabel("distillation tokens")
    ax2.set_ylabel("KL(teacher || student), nats/token")
    ax2.set_title("distillation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compress", type=Path, default=Path("runs/tiny_hybrid_compress"))
    ap.add_argument("--scratch", type=Path, default=Path("runs/tiny_hybrid_compress_scratch"))
    ap.add_argument("--run", action="store_true", help="run both pipelines first")
    ap.add_argument("--steps", type=int, default=60, help="from-scratch steps (= the recipe's distill steps)")
    ap.add_argument("--out", type=Path, default=Path("docs/img/compress_tiny_hybrid.png"))
    a = ap.parse_args()
    if a.run:
        run_both(a.compress, a.scratch, a.steps)
    s = plot(a.compress, a.scratch, a.out)
    print(json.dumps(s, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
