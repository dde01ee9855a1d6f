"""``nemo-reason``: run, show and list recipes.

    nemo-reason run [RECIPE] [overrides...]     compose, validate, launch ranks, run the pipeline
    nemo-reason launch [RECIPE] launcher=local|slurm|docker [overrides...] [--dry-run]
                                                render the job for a launcher and submit it
    nemo-reason show RECIPE [overrides...]      print the fully resolved config as YAML
    nemo-reason list                            recipes and registered pipeline step types

Overrides use Hydra's grammar: ``trainer.max_steps=20``, ``parallel.tp=2``, ``+extra.key=1``,
``~key``. Any configuration problem exits with code 2 before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from nemo_reason.config.schema import ConfigError

EXIT_CONFIG = 2


def _split_recipe(args: List[str], default: Optional[str]) -> Tuple[Optional[str], List[str]]:
    if args and "=" not in args[0] and not args[0].startswith(("+", "~")):
        return args[0], args[1:]
    return default, args


def _compose(recipe: str, overrides: List[str]):
    from nemo_reason.config.store import compose
    from nemo_reason.stages import STEPS, load_builtin_steps

    cfg = compose(recipe, overrides)
    load_builtin_steps()
    for step in cfg.pipeline:
        try:
            STEPS.get(step.type)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
    return cfg


def cmd_show(ns) -> int:
    from nemo_reason.config.store import to_yaml

    recipe, overrides = _split_recipe(ns.args, None)
    if recipe is None:
        raise ConfigError("show needs a RECIPE (see `nemo-reason list`)")
    print(to_yaml(_compose(recipe, overrides)), end="")
    return 0


def cmd_list(ns) -> int:
    from nemo_reason.config.store import list_recipes, recipes_dir
    from nemo_reason.stages import load_builtin_steps

    rdir = recipes_dir()
    print(f"recipes ({rdir}):")
    for name in list_recipes():
        first = ""
        for line in (rdir / f"{name}.yaml").read_text().splitlines():
            if line.startswith("#"):
                first = line.lstrip("# ").strip()
                break
        print(f"  {name:<20} {first}")
    print("pipeline step types:")
    steps = load_builtin_steps()
    for name in steps:
        print(f"  {name:<20} {steps.docs[name]}")
    from nemo_reason.launch import load_builtin_launchers

    print("launchers (nemo-reason launch RECIPE launcher=NAME):")
    launchers = load_builtin_launchers()
    for name in launchers:
        print(f"  {name:<20} {launchers.docs[name]}")
    return 0


def cmd_run(ns) -> int:
    from nemo_reason.config.store import to_yaml
    from nemo_reason.launch.local import launched_by_torchrun_or_srun, node_rendezvous, spawn

    if os.environ.get("NEMO_REASON_PREEMPT_SIGNAL"):  # set by the SLURM batch script
        from nemo_reason.training import preemption

        preemption.install(os.environ["NEMO_REASON_PREEMPT_SIGNAL"])
    recipe, overrides = _split_recipe(ns.args, "tiny")
    cfg = _compose(recipe, overrides)
    if launched_by_torchrun_or_srun():
        from nemo_reason.worker import run_worker

        return run_worker(cfg)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[nemo-reason] recipe {recipe} -> {run_dir.resolve()}", flush=True)
    nproc = cfg.launcher.nproc_per_node
    # Several nodes: this is one node's agent in a SLURM job (launcher.elastic=true), or an error.
    rdzv = node_rendezvous(cfg.launcher.nodes) if cfg.launcher.nodes != 1 else None
    if nproc == 1 and rdzv is None:
        from nemo_reason.worker import run_worker

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        return run_worker(cfg)
    path = run_dir / ("launch_config.yaml" if rdzv is None else f"launch_config.node{rdzv.node_rank}.yaml")
    path.write_text(to_yaml(cfg))
    return spawn(path, nproc, cfg.launcher.master_port, rdzv, forward_signal=cfg.launcher.preempt_signal)


def cmd_launch(ns) -> int:
    from nemo_reason.launch import launch

    args = [a for a in ns.args if a != "--dry-run"]
    recipe, overrides = _split_recipe(args, "tiny")
    cfg = _compose(recipe, overrides)
    return launch(recipe, overrides, cfg, dry_run=ns.dry_run or len(args) != len(ns.args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemo-reason",
        description="Train reasoning language models with Megatron-Core: recipes, pipelines, launchers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    over = "Hydra overrides, e.g. trainer.max_steps=20 parallel.tp=2 +extra.key=1 ~key"
    p = sub.add_parser("run", help="run a recipe's pipeline (default recipe: tiny)",
                       description="Compose RECIPE with overrides, validate, start launcher.nproc_per_node "
                                   "ranks and run the pipeline. Re-running resumes.")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[RECIPE] [overrides...]", help=over)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("launch", help="submit a recipe with a launcher: launcher=local|slurm|docker",
                       description="Compose RECIPE with overrides, render the job for launcher.type "
                                   "(launcher=local|slurm|docker) and submit it; --dry-run only prints it. "
                                   "The job runs `nemo-reason run RECIPE overrides`.")
    p.add_argument("--dry-run", action="store_true", help="print the job and where it would write; submit nothing")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[RECIPE] [overrides...]", help=over)
    p.set_defaults(fn=cmd_launch)
    p = sub.add_parser("show", help="print the fully resolved config of a recipe",
                       description="Print RECIPE with overrides applied, fully resolved, as YAML.")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="RECIPE [overrides...]", help=over)
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("list", help="list recipes and pipeline step types",
                       description="List the recipes in recipes/ and the registered pipeline step types.")
    p.set_defaults(fn=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "fn", None):
        parser.print_help()
        return EXIT_CONFIG
    if getattr(ns, "args", None) and ns.args[0] in ("-h", "--help"):
        parser.parse_args([ns.command, "--help"])
    try:
        return ns.fn(ns)
    except ConfigError as exc:
        print(f"nemo-reason: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("nemo-reason: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
