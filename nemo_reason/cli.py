"""``nemo-reason``: run, show and list recipes.

    nemo-reason run [RECIPE] [overrides...]     compose, validate, launch ranks, run the pipeline (no RECIPE:
                                                tiny_lifecycle, every step type on a tiny hybrid)
    nemo-reason launch [RECIPE] launcher=local|slurm|docker [overrides...] [--dry-run]
                                                render the job for a launcher and submit it
    nemo-reason show RECIPE [overrides...]      print the fully resolved config as YAML
    nemo-reason list                            recipes, pipeline step types (with their fields), launchers
    nemo-reason show-checkpoint PATH [--json]   architecture, step, tokens, parameters, tokenizer of a
                                                checkpoint, with no recipe at hand (checkpoint/commands.py)
    nemo-reason eval CHECKPOINT --tasks math,mcq,code [...]    pass@1, pass@k, maj@k, response length
    nemo-reason report RUN_DIR [--json] [--no-html]
                                                per-step summary of a run (also while it runs); rewrites
                                                RUN_DIR/report.html and its plots (nemo_reason/report/)
    nemo-reason generate CHECKPOINT --prompt TEXT | --input FILE [sampling options]
                                                sample from a checkpoint (evaluation/commands.py)
    nemo-reason plan RECIPE [overrides...] [--gpus N] [--json] [--step-time S]
                                                check the parallel layout, size parameters, FLOPs,
                                                per-GPU memory and MFU without running anything
    nemo-reason prepare-data --input FILE... --output-prefix PREFIX [--tokenizer NAME|PATH] [...]
                                                JSONL/Parquet -> Megatron .bin/.idx (nemo_reason/data/commands.py)
    nemo-reason train-tokenizer --input FILE... --output DIR [--vocab-size N]
                                                train a byte-level BPE on local text
    nemo-reason import-hf HF_DIR --output CKPT [--no-verify]
    nemo-reason export-hf CKPT --output HF_DIR [--no-verify] [--dtype auto|fp32|bf16]
                                                Hugging Face <-> checkpoint, logit-parity checked
                                                (nemo_reason/bridge/commands.py)

Overrides use Hydra's grammar: ``trainer.max_steps=20``, ``parallel.tp=2``, ``+extra.key=1``,
``~key``. Any configuration problem exits with code 2 before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from nemo_reason.backend import BackendError
from nemo_reason.config.schema import ConfigError

EXIT_CONFIG = 2
# What `nemo-reason run` / `launch` run without a RECIPE: the whole lifecycle of a tiny hybrid
# (pretrain in two phases -> SFT -> GRPO math -> GRPO code -> prune -> distill -> perplexity -> eval).
DEFAULT_RECIPE = "tiny_lifecycle"


def _split_recipe(args: List[str], default: Optional[str]) -> Tuple[Optional[str], List[str]]:
    if args and "=" not in args[0] and not args[0].startswith(("+", "~")):
        return args[0], args[1:]
    return default, args


def _compose(recipe: str, overrides: List[str]):
    from nemo_reason.config.store import compose

    # Every pipeline entry is typed by its step type's config (unknown types and fields exit 2).
    return compose(recipe, overrides)


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
    print("pipeline step types (fields set on the step's pipeline entry; every step also has type, name, overrides):")
    steps = load_builtin_steps()
    from nemo_reason.config.steps import STEP_CONFIGS, field_docs, step_fields

    for name in steps:
        print(f"  {name:<20} {steps.docs[name]}")
        cls = STEP_CONFIGS.get(name)
        docs = field_docs(cls)
        for f in step_fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "?")
            print(f"      {f.name} = {default!r:<14} {docs.get(f.name, '')}")
    from nemo_reason.launch import load_builtin_launchers

    print("launchers (nemo-reason launch RECIPE launcher=NAME):")
    launchers = load_builtin_launchers()
    for name in launchers:
        print(f"  {name:<20} {launchers.docs[name]}")
    return 0


def cmd_run(ns) -> int:
    from nemo_reason.config.store import to_yaml
    from nemo_reason.launch import resolve_launcher
    from nemo_reason.launch.local import launched_by_torchrun_or_srun, node_rendezvous, spawn
    from nemo_reason.preflight import preflight

    if os.environ.get("NEMO_REASON_PREEMPT_SIGNAL"):  # set by the SLURM batch script
        from nemo_reason.training import preemption

        preemption.install(os.environ["NEMO_REASON_PREEMPT_SIGNAL"])
    recipe, overrides = _split_recipe(ns.args, DEFAULT_RECIPE)
    cfg = _compose(recipe, overrides)
    resolve_launcher(cfg)  # null launcher sizes: this machine's GPUs (validates again)
    if launched_by_torchrun_or_srun():
        from nemo_reason.worker import run_worker

        return run_worker(cfg)  # each rank runs the preflight
    preflight(cfg)  # the ranks run here: check this machine before any work (exit 2)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[nemo-reason] recipe {recipe} -> {run_dir.resolve()}", flush=True)
    nproc = cfg.launcher.nproc_per_node
    # Several nodes: this is one node's agent in a SLURM job (launcher.elastic=true), or an error.
    rdzv = node_rendezvous(cfg.launcher.nodes) if cfg.launcher.nodes != 1 else None
    if nproc == 1 and rdzv is None:
        from nemo_reason.worker import run_worker

        # This process is the whole world: its rendezvous is ours to place (a MASTER_PORT inherited
        # from a parent job could be taken).
        from nemo_reason.ports import free_port

        os.environ["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(cfg.launcher.master_port or free_port())
        return run_worker(cfg)
    path = run_dir / ("launch_config.yaml" if rdzv is None else f"launch_config.node{rdzv.node_rank}.yaml")
    path.write_text(to_yaml(cfg))
    return spawn(path, nproc, cfg.launcher.master_port, rdzv, forward_signal=cfg.launcher.preempt_signal)


def cmd_launch(ns) -> int:
    from nemo_reason.launch import launch

    args = [a for a in ns.args if a != "--dry-run"]
    recipe, overrides = _split_recipe(args, DEFAULT_RECIPE)
    cfg = _compose(recipe, overrides)
    return launch(recipe, overrides, cfg, dry_run=ns.dry_run or len(args) != len(ns.args))


EXIT_INVALID_LAYOUT = 1


def _plan_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="plan for N GPUs instead of launcher.nodes x launcher.nproc_per_node")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--step-time", type=float, default=None, metavar="S",
                   help="measured seconds per optimizer step: adds MFU = FLOPs per step / (S x GPUs x peak)")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                   help="peak dense TFLOP/s per GPU for MFU (default: trainer.peak_tflops, else H100 bf16 989.4)")
    p.add_argument("--recompute", choices=("none", "selective", "full"), default=None,
                   help="activation recomputation counted in the total (default: the recipe's trainer.recompute)")
    p.add_argument("--gpu-mem", type=float, default=80.0, metavar="GB",
                   help="GPU memory to compare the estimate with (default 80, an H100)")
    return p


def cmd_plan(ns) -> int:
    import json

    from nemo_reason.config.store import compose, recipe_name_default
    from nemo_reason.planner.report import format_report, plan

    # Options may come before RECIPE (parsed into ns) or among the overrides (parsed here).
    inner = _plan_options(argparse.ArgumentParser(add_help=False))
    inner.set_defaults(recompute=None, gpu_mem=None)
    opts, rest = inner.parse_known_args(ns.args)
    for name in ("gpus", "step_time", "peak_tflops", "recompute", "gpu_mem"):
        if getattr(opts, name) is None:
            setattr(opts, name, getattr(ns, name))
    opts.json = opts.json or ns.json
    bad = [a for a in rest if a.startswith("--")]
    if bad:
        raise ConfigError(f"plan: unknown option {bad[0]} (see `nemo-reason plan --help`)")
    recipe, overrides = _split_recipe(rest, None)
    if recipe is None:
        raise ConfigError("plan needs a RECIPE (see `nemo-reason list`)")
    cfg = compose(recipe, overrides, validate=False)
    recipe_name_default(cfg, recipe)
    # Values wrong by themselves are configuration errors (exit 2, as for `run`); the layout rules
    # that cross groups are what the plan reports (exit 1).
    for group in (cfg.model, cfg.trainer, cfg.optim, cfg.data, cfg.launcher):
        group.validate()
    report = plan(cfg, world=opts.gpus, step_time=opts.step_time, peak_tflops=opts.peak_tflops,
                  recompute=opts.recompute or cfg.trainer.recompute, gpu_memory_gb=opts.gpu_mem)
    print(json.dumps(report, indent=1) if opts.json else format_report(report))
    return 0 if report["valid"] else EXIT_INVALID_LAYOUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemo-reason",
        description="Train reasoning language models with Megatron-Core: recipes, pipelines, launchers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    over = "Hydra overrides, e.g. trainer.max_steps=20 parallel.tp=2 +extra.key=1 ~key"
    p = sub.add_parser("run", help=f"run a recipe's pipeline (default recipe: {DEFAULT_RECIPE})",
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
    p = sub.add_parser("plan", help="check a recipe's parallel layout; parameters, FLOPs, memory, MFU",
                       description="Compose RECIPE with overrides and report, without running anything: every "
                                   "parallel-layout rule it breaks (exit 1), parameters (total and active per "
                                   "token), model FLOPs per token, per-GPU memory (weights, gradients, optimizer "
                                   "states, activations) and, with --step-time, MFU. Formulas: docs/planner.md.")
    _plan_options(p)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="RECIPE [overrides...]", help=over)
    p.set_defaults(fn=cmd_plan)
    from nemo_reason.data.commands import add_data_commands

    add_data_commands(sub)  # prepare-data, train-tokenizer
    from nemo_reason.checkpoint.commands import add_checkpoint_commands

    add_checkpoint_commands(sub)  # show-checkpoint
    from nemo_reason.evaluation.commands import add_eval_commands

    add_eval_commands(sub)  # eval, generate
    from nemo_reason.report.commands import add_report_commands

    add_report_commands(sub)  # report
    from nemo_reason.bridge.commands import add_bridge_commands

    add_bridge_commands(sub)  # import-hf, export-hf
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
    except (ConfigError, BackendError) as exc:
        print(f"nemo-reason: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("nemo-reason: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
