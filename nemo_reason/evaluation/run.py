"""Evaluate a model on tasks: sample ``n`` completions per prompt, verify them, report metrics.

``evaluate(model, tokenizer, tasks, params, k)`` runs, per task (domain):

1. the prompts, ``batch_size`` at a time, through the rollout sampler
   (:func:`nemo_reason.rollout.sampler.generate`, ``params.n`` samples each, the task's stop
   strings), printing a progress line per batch with prompts/s and generated tokens/s;
2. the completions through the task's verifier (:func:`nemo_reason.rewards.batch.score_batch`:
   in worker processes, time-bounded; a verifier that crashes on a sample scores it 0 and is
   counted in ``verifier_failures``);
3. :func:`nemo_reason.evaluation.metrics.summarize`: pass@1, pass@k, maj@k (final answers from
   :func:`answer_key`), mean score and mean response length in tokens, plus how generation ended.

Data parallel: given ``dp=(rank, size, group)``, each data-parallel rank generates every
``size``-th prompt, the completions are gathered, and global rank 0 scores them; the other ranks
return ``None``. Tensor-parallel peers generate the same prompts together.

Left out: scoring while generating (overlap), per-difficulty breakdowns.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Dict, List, Optional, Sequence

from nemo_reason.evaluation import metrics
from nemo_reason.evaluation.tasks import EvalTask


def trim_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string (the sampler may hand back the stop string itself)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# --- final answers for maj@k ---------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?:^|[\s(\[:*])([A-J])(?:$|[\s).\]:*,])")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def _last_boxed(text: str) -> Optional[str]:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _canonical_number(s: str) -> str:
    s = s.strip().rstrip(".").strip("$ ")
    try:
        x = float(s.replace(",", ""))
    except ValueError:
        return " ".join(s.lower().split())
    return repr(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def _math_key(text: str) -> Optional[str]:
    boxed = _last_boxed(text)
    if boxed is not None:
        return _canonical_number(boxed) if boxed.strip() else None
    lines = [m.group(1) for m in _ANSWER_LINE.finditer(text)]
    if lines:
        return _canonical_number(lines[-1].strip().splitlines()[0])
    nums = _NUMBER.findall(text)
    return _canonical_number(nums[-1]) if nums else None


def _mcq_key(text: str) -> Optional[str]:
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip().upper()[:1] or None
    m = _ANSWER_LINE.findall(text)
    scan = m[-1] if m else text
    letters = _LETTER.findall(" " + scan.strip() + " ")
    return letters[0] if letters else None


def _code_key(text: str) -> Optional[str]:
    blocks = _FENCE.findall(text)
    code = blocks[-1] if blocks else text
    code = "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())
    return code or None


def _text_key(text: str) -> Optional[str]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    return re.sub(r"[^\w\s]", "", lines[-1].lower()).strip() or None


_KEYS: Dict[str, Callable[[str], Optional[str]]] = {"math": _math_key, "mcq": _mcq_key, "code": _code_key}


def _module_answer(mod, completion: str):
    """The verifier module's own final answer of ``completion``: ``extract_answer`` (one) or
    ``extract_answers`` (several candidates: a vote only when they agree, after its ``normalize``),
    ``chosen_letters`` (mcq: a vote only for exactly one letter); ``...`` when the module has none."""
    one, many = getattr(mod, "extract_answer", None), getattr(mod, "extract_answers", None)
    letters = getattr(mod, "chosen_letters", None)  # rewards.mcq
    if callable(letters):
        found = letters(completion)
        return found[0] if len(found) == 1 else None
    if callable(one):
        return one(completion)
    if callable(many):
        norm = getattr(mod, "normalize", None)
        found = list(dict.fromkeys(norm(a) if callable(norm) else a.strip() for a in many(completion)))
        return found[0] if len(found) == 1 and found[0] else None
    return ...


def answer_key(verifier: str, completion: str) -> Optional[str]:
    """The final answer of ``completion`` as a vote for maj@k (None: no answer). The verifier
    module's own extraction is used where it has one, so votes and scores read the same answer."""
    import importlib

    try:
        mod = importlib.import_module(f"nemo_reason.rewards.{verifier}") if verifier.isidentifier() else None
    except ImportError:
        mod = None
    if mod is not None:
        try:
            got = _module_answer(mod, completion)
        except Exception:  # noqa: BLE001 - a vote is optional; the score is what counts
            got = None
        if got is not ...:
            if got is None or not str(got).strip():
                return None
            return _canonical_number(str(got)) if verifier == "math" else " ".join(str(got).split())
    return _KEYS.get(verifier, _text_key)(completion)


# --- evaluation ----------------------------------------------------------------------------------

def _gather(obj, dp):
    import torch.distributed as dist

    out = [None] * dp[1]
    dist.all_gather_object(out, obj, group=dp[2])
    return out


def evaluate(model, tokenizer, tasks: List[EvalTask], params, k: int, *, batch_size: int = 16,
             reward_workers: int = 2, reward_timeout_s: float = 10.0, log: Optional[Callable[[str], None]] = print,
             dp: Optional[tuple] = None, rank: int = 0, keep_samples: bool = True) -> Optional[dict]:
    """Metrics per task (``{"domains": {name: {...}}, ...}``); ``params`` is the rollout's
    ``SamplingParams`` (its ``stop`` is replaced by each task's)."""
    from nemo_reason.rollout.sampler import generate

    if not 1 <= k <= params.n:
        raise ValueError(f"k={k} must be in [1, n={params.n}]: pass@k and maj@k need n >= k samples per prompt")
    say = log if (log is not None and rank == 0) else (lambda s: None)
    dp_rank, dp_size = (dp[0], dp[1]) if dp else (0, 1)
    out: Dict[str, dict] = {}
    rows: List[dict] = []
    t_all = time.time()
    for ti, task in enumerate(tasks):
        mine = list(range(dp_rank, len(task.records), dp_size))
        p = dataclasses.replace(params, stop=list(task.stop))
        gen: Dict[int, list] = {}
        t0, done, new_tokens = time.time(), 0, 0
        for bi in range(0, len(mine), batch_size):
            idx = mine[bi:bi + batch_size]
            prompts = [tokenizer.tokenize(task.records[i].prompt) for i in idx]
            # A different stream per batch and task, the same for every run with this seed.
            bp = dataclasses.replace(p, seed=params.seed + 1_000_003 * ti + 7_919 * dp_rank + bi)
            for s in generate(model, tokenizer, prompts, bp):
                gen.setdefault(idx[s.prompt_index], []).append(
                    (trim_at_stop(s.text, task.stop), len(s.tokens), s.finish_reason))
                new_tokens += len(s.tokens)
            done += len(idx)
            dt = max(time.time() - t0, 1e-9)
            seen = min(done * dp_size, len(task.records))  # all data-parallel ranks, about
            say(f"[eval] {task.domain}: {seen}/{len(task.records)} prompts | {seen / dt:.1f} prompts/s | "
                f"{new_tokens * dp_size / dt:,.0f} tokens/s")
        gen_seconds = time.time() - t0
        if dp_size > 1:
            merged: Dict[int, list] = {}
            for part in _gather(gen, dp):
                merged.update(part)
            gen = merged
        if rank != 0:
            continue
        out[task.domain] = _score_task(task, gen, params.n, k, reward_workers, reward_timeout_s, rows,
                                       keep_samples)
        out[task.domain]["generate_seconds"] = round(gen_seconds, 3)
        total = sum(length for rows_ in gen.values() for _, length, _ in rows_)
        out[task.domain]["tokens_per_s"] = round(total / max(gen_seconds, 1e-9), 1)
    if rank != 0:
        return None
    sampling = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name != "stop"}
    return {"k": k, "n": params.n, "sampling": sampling, "domains": out, "seconds": round(time.time() - t_all, 3),
            "samples": rows}


def _score_task(task: EvalTask, gen: Dict[int, list], n: int, k: int, workers: int, timeout_s: float,
                rows: List[dict], keep: bool) -> dict:
    from nemo_reason.rewards import get_reward
    from nemo_reason.rewards.batch import score_batch

    order = sorted(gen)
    samples, completions, owner = [], [], []
    for i in order:
        for text, _, _ in gen[i]:
            samples.append(task.records[i].sample)
            completions.append(text)
            owner.append(i)
    scored = score_batch(get_reward(task.verifier), samples, completions, workers=workers, timeout_s=timeout_s)
    scores = [float(s) for s in scored.scores]
    keys = [answer_key(task.verifier, text) for text in completions]
    per_scores: Dict[int, List[float]] = {i: [] for i in order}
    per_keys: Dict[int, List[Optional[str]]] = {i: [] for i in order}
    for i, key, s in zip(owner, keys, scores):
        per_scores[i].append(s)
        per_keys[i].append(key)
    lengths = [length for i in order for _, length, _ in gen[i]]
    finish: Dict[str, int] = {}
    for i in order:
        for _, _, why in gen[i]:
            finish[why] = finish.get(why, 0) + 1
    res = metrics.summarize([per_scores[i] for i in order], [per_keys[i] for i in order], lengths, k)
    res.update(prompts=len(order), samples=len(completions), verifier=task.verifier,
               verifier_failures=_count(getattr(scored, "failures", 0)), finish=finish, held_out=task.held_out)
    if keep:
        flat = [(i, length, why) for i in order for _, length, why in gen[i]]
        for (i, length, why), text, s, key in zip(flat, completions, scores, keys):
            rec = task.records[i]
            rows.append({"domain": task.domain, "record": rec.where, "prompt": rec.prompt, "completion": text,
                         "tokens": length, "finish_reason": why, "score": s, "answer": key})
    return res


def _count(failures) -> int:
    """BatchScores.failures as a number (a count, or the list of failed samples)."""
    return len(failures) if isinstance(failures, (list, tuple, dict, set)) else int(failures or 0)


def metric_items(results: dict) -> Dict[str, float]:
    """``{"math/pass@1": ..., ...}``: the flat numbers a step's metrics carry."""
    k = results["k"]
    flat: Dict[str, float] = {}
    for name, r in results["domains"].items():
        for key in ("pass@1", f"pass@{k}", f"maj@{k}", "mean_score", "mean_length"):
            flat[f"{name}/{key}"] = r[key]
        flat[f"{name}/prompts"] = r["prompts"]
        flat[f"{name}/verifier_failures"] = r["verifier_failures"]
    return flat


def format_table(results: dict) -> str:
    """One row per domain: prompts, samples, pass@1, pass@k, maj@k, mean length (tokens)."""
    k = results["k"]
    head = ("domain", "prompts", "samples", "pass@1", f"pass@{k}", f"maj@{k}", "mean len", "failures")
    rows = [head]
    for name, r in results["domains"].items():
        rows.append((name, str(r["prompts"]), str(r["samples"]), f"{r['pass@1']:.3f}", f"{r[f'pass@{k}']:.3f}",
                     f"{r[f'maj@{k}']:.3f}", f"{r['mean_length']:.1f}", str(r["verifier_failures"])))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[c]) if c == 0 else cell.rjust(widths[c]) for c, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
