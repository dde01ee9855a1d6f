"""The generation subcommands of ``nemo-reason``: ``eval`` and ``generate``, from a checkpoint alone.

    nemo-reason eval CHECKPOINT [--tasks math,mcq,code] [--max-difficulty N] [--input FILE.jsonl --question-field q
                     --answer-field a --tests-field t --verifier NAME] [--num-prompts N] [-n N] [-k K]
                     [--temperature T --top-p P --top-k K --greedy --max-new-tokens M --stop S]
                     [--prompt-template T] [--output results.json] [--samples-output samples.jsonl]
    nemo-reason generate CHECKPOINT (--prompt TEXT ... | --input prompts.jsonl [--prompt-field prompt])
                     [--output out.jsonl] [--n N --temperature T --top-p P --top-k K --greedy
                     --max-new-tokens M --stop S --seed S] [--details]

CHECKPOINT is an ``iter_*`` folder, a step's ``checkpoints/`` folder or a step folder (its newest
complete checkpoint). Both run in this process as one rank: a one-process group and Megatron's
parallel state as a pipeline rank builds them (``backend.prepare``, ``ParallelDims``), the model
from the architecture and tokenizer the checkpoint records (no recipe), frozen. ``eval`` runs the
same code as the ``eval`` pipeline step (:mod:`nemo_reason.stages.eval`) with the same defaults
and checks, and also checks the held-out splits against the bundled sources the checkpoint's own
run trained on (its ``config.yaml``). Progress lines (prompts/s, tokens/s) go to stderr; a bad
option or input record exits 2 before the model is built.

Left out: several processes (use the ``eval`` step with a parallel layout), a server.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import List

from nemo_reason.config.errors import ConfigError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def checkpoint_model(path: str, seed: int = 1234):
    """``(model chunks, tokenizer, checkpoint path)`` of CHECKPOINT, built in a one-rank group."""
    from nemo_reason.worker import quiet_libraries

    quiet_libraries()  # before the tokenizer's import loads Megatron
    from nemo_reason.checkpoint.commands import resolve_checkpoint
    from nemo_reason.checkpoint.meta import load_tokenizer, model_config_of

    ckpt = resolve_checkpoint(path)
    try:
        model_cfg = dataclasses.replace(model_config_of(ckpt), backend="auto")
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}: cannot build its model without a recipe") from None
    tok = load_tokenizer(ckpt)
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare, select
    from nemo_reason.config.schema import ParallelConfig, RunConfig
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.training.state import build_train_state

    cfg = dataclasses.replace(RunConfig(), model=model_cfg)
    bdist.init_process_group()
    try:
        prepare(select(model_cfg.backend))
        dims = ParallelDims.from_config(ParallelConfig(), 1)
        dims.init()
        bdist.seed_everything(seed)
        ctx = StepContext(dims, Path("."), Path("."), "eval")
        state = build_train_state(cfg, ctx, tok.vocab_size, init_checkpoint=ckpt, build_optimizer_state=False)
        yield state.model, tok, ckpt
    finally:
        ParallelDims.destroy()
        bdist.destroy_process_group()


def _run_sources_of(ckpt: Path) -> list:
    """The bundled sources the run that wrote ``ckpt`` trained on (its config.yaml: the ``data:``
    section and the pipeline's steps), the defaults when it has none."""
    from nemo_reason.evaluation.tasks import training_sources

    path = ckpt / "config.yaml"
    doc = {}
    if path.is_file():
        from omegaconf import OmegaConf

        try:
            doc = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:  # noqa: BLE001 - a damaged config only loses the extra sources
            doc = {}
    doc = doc if isinstance(doc, dict) else {}
    data, pipeline = doc.get("data"), doc.get("pipeline")
    return training_sources(data if isinstance(data, dict) else {}, pipeline if isinstance(pipeline, list) else None)


def _unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed on a command line as the characters."""
    return text.replace("\\n", "\n").replace("\\t", "\t") if text else text


def _unescape_all(texts):
    return None if texts is None else [_unescape(t) for t in texts]


# --- eval ----------------------------------------------------------------------------------------

def _eval_config(ns):
    from nemo_reason.stages.eval import EvalConfig

    tasks = ns.tasks if ns.tasks is not None else ("" if ns.input else "math,mcq,code")
    step = EvalConfig(type="eval", name="eval", tasks=[t.strip() for t in tasks.split(",") if t.strip()],
                      num_prompts=ns.num_prompts, n=ns.n, k=ns.k if ns.k is not None else ns.n,
                      temperature=ns.temperature, top_p=ns.top_p, top_k=ns.top_k, greedy=ns.greedy,
                      max_new_tokens=ns.max_new_tokens, stop=_unescape_all(ns.stop), seed=ns.seed,
                      prompt_template=_unescape(ns.prompt_template), input=ns.input or "",
                      question_field=ns.question_field, answer_field=ns.answer_field,
                      tests_field=ns.tests_field, verifier=ns.verifier, input_num=ns.input_num,
                      batch_size=ns.batch_size, reward_workers=ns.reward_workers, reward_timeout_s=ns.reward_timeout)
    try:
        step.validate()
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("pipeline step 'eval'", "eval")) from None
    return step


def _build_tasks(step, sources, max_difficulty: int):
    """The eval step's tasks; with ``max_difficulty`` the bundled held-out splits narrowed to records of
    difficulty <= it (the held-out check unchanged: every record of ``sources``)."""
    from nemo_reason.evaluation.tasks import bundled_tasks
    from nemo_reason.stages.eval import build_tasks

    if not max_difficulty:
        return build_tasks(step, sources)
    if max_difficulty < 0:
        raise ConfigError(f"--max-difficulty {max_difficulty}: must be >= 1 (0: every difficulty)")
    tasks = bundled_tasks(step.tasks, step.num_prompts, sources, step.prompt_template, step.stop,
                          max_difficulty=max_difficulty)
    return tasks + (build_tasks(dataclasses.replace(step, tasks=[]), sources) if step.input else [])


def cmd_eval(ns) -> int:
    from nemo_reason.checkpoint.commands import resolve_checkpoint
    from nemo_reason.evaluation.run import evaluate, format_table
    from nemo_reason.evaluation.tasks import describe_task
    from nemo_reason.stages.eval import sampling_params

    step = _eval_config(ns)
    ckpt = resolve_checkpoint(ns.checkpoint)
    tasks = _build_tasks(step, _run_sources_of(ckpt), ns.max_difficulty)  # before the model
    for t in tasks:
        _say(f"[eval] {describe_task(t, step.n)}")
    with checkpoint_model(str(ckpt), step.seed) as (model, tok, ckpt):
        results = evaluate(model, tok, tasks, sampling_params(step, step.seed), step.k, batch_size=step.batch_size,
                           reward_workers=step.reward_workers, reward_timeout_s=step.reward_timeout_s, log=_say)
    samples = results.pop("samples")
    results["checkpoint"] = str(ckpt)
    print(format_table(results), flush=True)
    if ns.output:
        Path(ns.output).write_text(json.dumps(results, indent=1))
        _say(f"[eval] wrote {ns.output}")
    if ns.samples_output:
        with open(ns.samples_output, "w", encoding="utf-8") as f:
            for row in samples:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        _say(f"[eval] wrote {len(samples)} samples to {ns.samples_output}")
    return 0


# --- generate ------------------------------------------------------------------------------------

def _read_prompts(path: str, field: str) -> List[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{path}: no such file (--input takes a JSONL file with one {{\"{field}\": ...}} a line)")
    out = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            text = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                have = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
                raise ConfigError(f"{path}:{lineno}: no string field '{field}' (has: {have}); name it with "
                                  "--prompt-field")
            out.append(text)
    if not out:
        raise ConfigError(f"{path}: no prompts (the file is empty)")
    return out


def cmd_generate(ns) -> int:
    from nemo_reason.rollout.sampler import SamplingParams, generate

    if bool(ns.prompt) == bool(ns.input):
        raise ConfigError("generate needs --prompt TEXT (repeatable) or --input prompts.jsonl, not both")
    prompts = _unescape_all(ns.prompt) if ns.prompt else _read_prompts(ns.input, ns.prompt_field)
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(ns, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(ns, name)} must be >= 1")
    if ns.temperature < 0 or not 0 < ns.top_p <= 1 or ns.top_k < 0:
        raise ConfigError("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")
    params = SamplingParams(n=ns.n, temperature=ns.temperature, top_p=ns.top_p, top_k=ns.top_k,
                            greedy=ns.greedy or ns.temperature == 0, max_new_tokens=ns.max_new_tokens,
                            stop=_unescape_all(ns.stop) or [], seed=ns.seed)
    out = open(ns.output, "w", encoding="utf-8") if ns.output else None
    try:
        with checkpoint_model(ns.checkpoint, ns.seed) as (model, tok, ckpt):
            _say(f"[generate] {len(prompts)} prompts x {ns.n} samples from {ckpt}")
            t0, done, tokens = time.time(), 0, 0
            for b in range(0, len(prompts), ns.batch_size):
                batch = prompts[b:b + ns.batch_size]
                ids = [tok.tokenize(p) for p in batch]
                samples = generate(model, tok, ids, dataclasses.replace(params, seed=ns.seed + b))
                seen = {}
                for s in samples:
                    i = b + s.prompt_index
                    j = seen[i] = seen.get(i, -1) + 1
                    tokens += len(s.tokens)
                    row = {"prompt_index": i, "sample_index": j, "prompt": prompts[i], "completion": s.text,
                           "tokens": len(s.tokens), "finish_reason": s.finish_reason,
                           "logprob": float(sum(s.logprobs))}
                    if ns.details:
                        row.update(token_ids=list(s.tokens), logprobs=[float(x) for x in s.logprobs])
                    if out is not None:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    else:
                        head = f"--- prompt {i}" + (f", sample {j}" if ns.n > 1 else "") + f" ({s.finish_reason}, " \
                               f"{len(s.tokens)} tokens)"
                        print(f"{head}\n{prompts[i]}{s.text}", flush=True)
                if out is not None:
                    out.flush()
                done += len(batch)
                dt = max(time.time() - t0, 1e-9)
                _say(f"[generate] {done}/{len(prompts)} prompts | {done / dt:.1f} prompts/s | {tokens / dt:,.0f} "
                     f"tokens/s")
    finally:
        if out is not None:
            out.close()
    if ns.output:
        _say(f"[generate] wrote {len(prompts) * ns.n} samples to {ns.output}")
    return 0


# --- parser --------------------------------------------------------------------------------------

def _sampling_options(p: argparse.ArgumentParser, n: int, temperature: float, top_p: float, max_new: int) -> None:
    p.add_argument("-n", "--n", type=int, default=n, help=f"samples per prompt (default {n})")
    p.add_argument("--temperature", type=float, default=temperature, help=f"default {temperature}; 0 = greedy")
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: all)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--max-new-tokens", type=int, default=max_new, help=f"default {max_new}")
    p.add_argument("--stop", action="append", default=None, metavar="S",
                   help="stop string (repeatable; \\n for a newline); eval: replaces each domain's own")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default 16)")


def add_eval_commands(sub) -> None:
    """Register ``eval`` and ``generate`` on the CLI's subparsers."""
    from nemo_reason.stages.eval import EvalConfig

    d = EvalConfig()
    p = sub.add_parser("eval", help="pass@1 / pass@k / maj@k of a checkpoint on held-out tasks or a JSONL",
                       description="Sample from CHECKPOINT on the held-out splits of the bundled corpora "
                                   "(checked against the training data) and/or a JSONL file, verify each "
                                   "completion, print pass@1, pass@k, maj@k and mean length per domain.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="iter_* folder, checkpoints/ folder or step folder")
    p.add_argument("--tasks", default=None, metavar="LIST",
                   help="comma-separated bundled domains: math,mcq,code (default: all three; none with --input)")
    p.add_argument("--num-prompts", type=int, default=d.num_prompts,
                   help=f"prompts per domain (default {d.num_prompts})")
    p.add_argument("--max-difficulty", type=int, default=0, metavar="N",
                   help="held-out records of difficulty <= N only (bundled math: 1-5; default 0: all)")
    p.add_argument("-k", "--k", type=int, default=None, help="k of pass@k and maj@k (default: n)")
    _sampling_options(p, d.n, d.temperature, d.top_p, d.max_new_tokens)
    p.add_argument("--prompt-template", default="", metavar="T",
                   help="template with {question}, {choices}, {instruction} or any record field; \\n allowed "
                        "(default: each domain's)")
    p.add_argument("--input", default=None, metavar="FILE.jsonl", help="evaluate a JSONL file too")
    p.add_argument("--question-field", default=d.question_field)
    p.add_argument("--answer-field", default=d.answer_field)
    p.add_argument("--tests-field", default=d.tests_field)
    p.add_argument("--verifier", default=d.verifier, help="verifier of --input: a REWARDS name or module:function")
    p.add_argument("--input-num", type=int, default=0, help="records of --input to use (default: all)")
    p.add_argument("--reward-workers", type=int, default=d.reward_workers)
    p.add_argument("--reward-timeout", type=float, default=d.reward_timeout_s, metavar="S")
    p.add_argument("--output", default=None, metavar="results.json", help="write every number as JSON")
    p.add_argument("--samples-output", default=None, metavar="FILE.jsonl", help="write each completion and score")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("generate", help="sample completions from a checkpoint",
                       description="Sample completions of --prompt texts or of a JSONL file's prompts from "
                                   "CHECKPOINT, with streaming progress (prompts/s, tokens/s).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="iter_* folder, checkpoints/ folder or step folder")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT", help="a prompt (repeatable; \\n for a newline)")
    p.add_argument("--input", default=None, metavar="prompts.jsonl", help="one JSON object a line")
    p.add_argument("--prompt-field", default="prompt", help="the field of --input holding the prompt")
    p.add_argument("--output", default=None, metavar="out.jsonl",
                   help="write one JSON line per sample (default: print the completions)")
    p.add_argument("--details", action="store_true", help="add token ids and per-token log-probs to --output")
    _sampling_options(p, 1, 1.0, 1.0, 64)
    p.set_defaults(fn=cmd_generate)
