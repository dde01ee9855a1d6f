"""Plot a GRPO step's learning curve: training reward per step and held-out pass@1 per evaluated step.

    python benchmarks/plot_grpo.py RUN_DIR/grpo --heldout heldout.json --out docs/img/grpo_math.png

Reads ``metrics.jsonl`` of the step folder (``reward`` per step, and ``heldout/math/pass@1`` (greedy) and
``heldout/math/pass@1_sampled`` where the step logged them with ``heldout_every`` / ``heldout_samples``),
plus, optionally, a JSON file of extra held-out points
``{"points": [{"step": 0, "pass@1": 0.12, "stderr": 0.02, "label": "..."}]}`` (``nemo-reason eval`` of
the checkpoints before and after, with the binomial standard error as error bars; one series per label). Writes one PNG
with two panels sharing the step axis. Needs matplotlib (a docs-only dependency, not the package's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_metrics(step_dir: Path):
    return [json.loads(line) for line in (step_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def plot(step_dir: Path, out: Path, heldout: Path | None = None, domain: str = "math", title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(step_dir)
    steps = [r["step"] for r in recs if "reward" in r]
    reward = [r["reward"] for r in recs if "reward" in r]
    key = f"heldout/{domain}/pass@1"
    series = [(k, label) for k, label in ((key, "greedy"), (key + "_sampled", "sampled"))
              if any(k in r for r in recs)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(steps, reward, lw=0.8, alpha=0.5, label="reward (per step)")
    if len(reward) >= 5:  # a 5-step running mean, so the trend reads through the per-step noise
        smooth = [sum(reward[max(0, i - 4):i + 1]) / len(reward[max(0, i - 4):i + 1]) for i in range(len(reward))]
        ax1.plot(steps, smooth, lw=2, label="reward (5-step mean)")
    ax1.set_ylabel("training reward")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    for k, label in series:
        ax2.plot(*zip(*[(r["step"], r[k]) for r in recs if k in r]), "o-", label=f"{label} (step's held-out eval)")
    if heldout is not None:
        pts = json.loads(Path(heldout).read_text())["points"]
        for label in dict.fromkeys(p.get("label", "nemo-reason eval") for p in pts):  # one series per label
            mine = [p for p in pts if p.get("label", "nemo-reason eval") == label]
            ax2.errorbar([p["step"] for p in mine], [p["pass@1"] for p in mine],
                         yerr=[p.get("stderr", 0) for p in mine], fmt="s--", capsize=4, label=label)
    ax2.set_xlabel("GRPO step")
    ax2.set_ylabel(f"held-out {domain} pass@1")
    ax2.legend(loc="best", fontsize="small", framealpha=0.7)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step_dir", type=Path, help="the grpo step's folder (holding metrics.jsonl)")
    p.add_argument("--out", type=Path, default=Path("docs/img/grpo_math.png"))
    p.add_argument("--heldout", type=Path, default=None, help="JSON of extra held-out points (see the docstring)")
    p.add_argument("--domain", default="math")
    p.add_argument("--title", default="")
    a = p.parse_args()
    plot(a.step_dir, a.out, a.heldout, a.domain, a.title)


if __name__ == "__main__":
    main()
