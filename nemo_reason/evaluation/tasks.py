"""Evaluation tasks: held-out splits of the bundled corpora, and a user's JSONL, as prompts + gold.

An :class:`EvalTask` is one domain: its records (question, the sample a verifier reads, where each
came from), the verifier's name (``nemo_reason.rewards.REWARDS``), the prompt template and the
stop strings of generation.

**Held-out splits, checked.** The bundled corpora are generated from templates
(:mod:`nemo_reason.data.corpora`), so records at two seeds can share a question word for word
(of 2,000 math records at another seed about 5% repeat a training question; of code prompts,
most do). A held-out record is therefore *chosen*, not assumed: records are drawn at
:data:`EVAL_SEED` (a seed no recipe trains on) and kept only if their normalised question
(:func:`normalize_question`: case, whitespace) is not the question of any record of the training
sources (default: the bundled math, mcq and code sources at their default sizes and seeds, as
``bundled:NAME`` in a blend reads them; the eval step adds the bundled sources of the run's own
data), nor of an earlier kept record. :func:`check_held_out` then verifies the result
independently of how it was chosen and raises :class:`HeldOutError` on any overlap; the eval step
and ``nemo-reason eval`` both call it before generating. Filters on a training source
(``bundled:math@difficulty>=4``) are ignored there: the check covers the unfiltered superset.
``max_difficulty`` narrows the held-out split itself (records of difficulty <= N, for a model
trained on the easy templates) and leaves the check as it is.

Consequence worth knowing: the code corpus' prompts vary by few parameters, so its held-out split
holds only the templates with parameterised prompts (``clamp_all``, ``fizzbuzz_words`` at the
default training size).

**Templates.** ``{name}`` in a template is replaced by the record's field ``name`` (``question``
is always there; ``choices`` is rendered as ``A. ...`` lines; ``instruction`` is the domain's
instruction line); any other brace text (``\\boxed{}``) is left as written. The defaults follow
the corpora's own text (``Question: ...`` / ``Solution:``), which is what a tiny base model trained
on them continues; set a template with ``{instruction}`` for an instruction-tuned model.

**A user's JSONL**: :func:`load_jsonl_task` reads every line before anything is generated and
fails with ``file:line`` and the field on a record lacking the question or a field its verifier
declares (``nemo_reason.rewards.fields_of``: ``answer`` for math/mcq/exact, ``tests`` for code; the
file's own names for them are ``answer_field`` / ``tests_field``).

Left out: few-shot prompts, chat templates (a template string covers a fixed chat format).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from nemo_reason.config.errors import ConfigError

# The seed the held-out splits are drawn at; the check does not rely on nobody training on it.
EVAL_SEED = 314159
# What training reads when a recipe names bundled:math / bundled:mcq / bundled:code.
DEFAULT_TRAINING_SOURCES = ("bundled:math", "bundled:mcq", "bundled:code")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Domain:
    verifier: str
    template: str
    stop: tuple
    instruction: str
    question_key: str  # the corpus field holding the question


DOMAINS: Dict[str, Domain] = {
    "math": Domain("math", "Question: {question}\nSolution:", ("\nQuestion:",),
                   "Solve the problem step by step and put the final answer in \\boxed{}.", "question"),
    "mcq": Domain("mcq", "Question: {question}\n{choices}\nAnswer:", ("\n",),
                  "Answer with the letter of the correct option.", "question"),
    "code": Domain("code", "Task: {question}\n", ("\nTests:",),
                   "Write the Python function in one ```python block.", "prompt"),
}
USER_TEMPLATE = "Question: {question}\nAnswer:"
USER_INSTRUCTION = ""


class HeldOutError(ConfigError):
    """An evaluation record's question is also a training question."""


@dataclass
class EvalRecord:
    question: str
    sample: dict          # what the verifier reads: the record with "answer" / "tests" set
    where: str            # "bundled:math@314159#17" or "path.jsonl:12"
    prompt: str = ""


@dataclass
class EvalTask:
    domain: str
    verifier: str
    template: str
    stop: List[str]
    records: List[EvalRecord] = field(default_factory=list)
    held_out: dict = field(default_factory=dict)


# --- held-out check ------------------------------------------------------------------------------

def normalize_question(text: str) -> str:
    return " ".join(str(text).lower().split())


def question_hash(text: str) -> str:
    return hashlib.sha1(normalize_question(text).encode("utf-8")).hexdigest()[:16]


def _question_of(record: dict) -> Optional[str]:
    q = record.get("question", record.get("prompt"))
    return q if isinstance(q, str) and q.strip() else None


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def pool_source(domain: str, records: int = 0) -> str:
    """The training source a grpo step's prompt pool of ``domain`` is: ``bundled:<domain>`` (the
    corpus's default size), or ``bundled:<domain>:<records>`` for a larger pool (``pool_records``).
    The prompt keys and the held-out exclusion both use this name."""
    return f"bundled:{domain}:{records}" if records else f"bundled:{domain}"


def training_sources(data_cfg, pipeline=None) -> List[str]:
    """The bundled sources a run's data config (a DataConfig or its plain mapping) trains on:
    ``source``, ``blend``, every phase's ``blend``; the defaults first. With ``pipeline`` (the run's
    step list, configs or mappings) also what its steps draw from: an sft step's ``sources``, a grpo
    step's larger prompt pool (``pool_records``: ``bundled:<domain>:<records>`` per domain)."""
    found = list(DEFAULT_TRAINING_SOURCES)
    paths = [_get(data_cfg, "source", "")]
    paths += [_get(e, "path", "") for e in (_get(data_cfg, "blend") or [])]
    for phase in _get(data_cfg, "phases") or []:
        paths += [_get(e, "path", "") for e in (_get(phase, "blend") or [])]
    for step in pipeline or []:
        paths += list(_get(step, "sources") or [])
        records = _get(step, "pool_records", 0) or 0
        paths += [pool_source(d, records) for d in (_get(step, "domains") or []) if records]
    for p in paths:
        if isinstance(p, str) and p.startswith("bundled:") and p not in found:
            found.append(p)
    return found


_TRAINING_CACHE: Dict[tuple, Set[str]] = {}


def training_question_hashes(sources: Sequence[str] = DEFAULT_TRAINING_SOURCES) -> Set[str]:
    """Hashes of the normalised question of every record the ``sources`` generate (filters dropped:
    the superset). Sources without questions (prose) contribute nothing."""
    from nemo_reason.data.corpora import generate
    from nemo_reason.data.sources import parse_source

    key = tuple(sorted(set(sources)))
    if key in _TRAINING_CACHE:
        return _TRAINING_CACHE[key]
    out: Set[str] = set()
    seen = set()
    for name in key:
        spec = parse_source(name)
        if spec.corpus == "prose" or (spec.corpus, spec.num, spec.seed) in seen:
            continue
        seen.add((spec.corpus, spec.num, spec.seed))
        for rec in generate(spec.corpus, spec.num, spec.seed):
            q = _question_of(rec)
            if q is not None:
                out.add(question_hash(q))
    _TRAINING_CACHE[key] = out
    return out


def check_held_out(records: Sequence[EvalRecord], sources: Sequence[str] = DEFAULT_TRAINING_SOURCES,
                   strict: bool = True) -> dict:
    """Verify no record's question is a question of the training ``sources``; raise
    :class:`HeldOutError` naming the first overlaps when ``strict``, else only count them."""
    train = training_question_hashes(sources)
    hits = [r for r in records if question_hash(r.question) in train]
    if hits and strict:
        shown = "; ".join(f"{r.where}: {r.question[:70]!r}" for r in hits[:3])
        raise HeldOutError(f"{len(hits)} of {len(records)} evaluation records also appear in the training data "
                           f"({', '.join(sources)}): {shown}. The held-out split must not overlap: do not train "
                           f"on bundled corpora at seed {EVAL_SEED}, or evaluate on a --input file")
    return {"checked_against": list(sources), "overlap": len(hits), "records": len(records)}


# --- prompts -------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> List[str]:
    return _FIELD.findall(template)


def render_prompt(template: str, fields: dict, where: str = "") -> str:
    """``template`` with each ``{name}`` replaced by ``fields[name]``; other braces untouched."""
    def sub(m):
        name = m.group(1)
        if name not in fields or fields[name] is None:
            raise ConfigError(f"{where}: the prompt template uses {{{name}}}, which this record lacks (it has: "
                              f"{', '.join(sorted(k for k in fields if fields[k] is not None))}); fix the "
                              "template (prompt_template / --prompt-template) or the record")
        value = fields[name]
        if name == "choices" and isinstance(value, (list, tuple)):
            value = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(value))
        return str(value)

    return _FIELD.sub(sub, template)


def prompt_fields(question: str, record: dict, instruction: str) -> dict:
    """The fields a prompt template may use for ``record``."""
    return {**record, "question": question, "instruction": instruction}


# --- bundled held-out tasks ----------------------------------------------------------------------

def held_out_task(domain: str, num: int, sources: Sequence[str] = DEFAULT_TRAINING_SOURCES,
                  template: str = "", stop: Optional[Sequence[str]] = None, seed: int = EVAL_SEED,
                  max_candidates: int = 50_000, max_difficulty: int = 0) -> EvalTask:
    """``num`` records of bundled ``domain`` at ``seed`` whose questions are in no training source;
    with ``max_difficulty`` > 0 only records whose ``difficulty`` is at most that (the held-out
    check still covers every record of the sources, unfiltered)."""
    from nemo_reason.data.corpora import generate

    if domain not in DOMAINS:
        import difflib

        hints = difflib.get_close_matches(domain, list(DOMAINS), n=2, cutoff=0.4)
        raise ConfigError(f"unknown evaluation task {domain!r}" + (f"; did you mean: {', '.join(hints)}?" if hints
                          else "") + f" (bundled tasks: {', '.join(DOMAINS)}; bring your own with --input/input)")
    d = DOMAINS[domain]
    train = training_question_hashes(sources)
    taken: Set[str] = set()
    records: List[EvalRecord] = []
    template = template or d.template
    for i, rec in enumerate(generate(domain, max_candidates, seed)):
        if max_difficulty and not (isinstance(rec.get("difficulty"), (int, float))
                                   and rec["difficulty"] <= max_difficulty):
            continue
        q = rec[d.question_key]
        h = question_hash(q)
        if h in train or h in taken:
            continue
        taken.add(h)
        where = f"bundled:{domain}@{seed}#{i}"
        r = EvalRecord(q, dict(rec), where)
        r.prompt = render_prompt(template, prompt_fields(q, rec, d.instruction), where)
        records.append(r)
        if len(records) == num:
            break
    if not records:
        if max_difficulty:
            raise HeldOutError(f"bundled {domain}: no held-out record of difficulty <= {max_difficulty} among "
                               f"{max_candidates} candidates at seed {seed} (the corpus may have no difficulty "
                               "field); raise max_difficulty or set it to 0")
        raise HeldOutError(f"bundled {domain}: every one of {max_candidates} candidate records at seed {seed} is a "
                           f"training question of {', '.join(sources)}; nothing is held out")
    task = EvalTask(domain, d.verifier, template, list(d.stop if stop is None else stop), records)
    task.held_out = {"seed": seed, "requested": num, **check_held_out(records, sources)}
    if max_difficulty:
        task.held_out["max_difficulty"] = max_difficulty
    return task


# --- a user's JSONL ------------------------------------------------------------------------------

def load_jsonl_task(path: str, question_field: str = "question", answer_field: str = "answer",
                    tests_field: str = "tests", verifier: str = "math", template: str = "",
                    stop: Optional[Sequence[str]] = None, num: int = 0, domain: str = "",
                    sources: Sequence[str] = DEFAULT_TRAINING_SOURCES) -> EvalTask:
    """Every record of ``path`` (the first ``num`` when > 0), checked before anything is generated;
    how many of its questions the training ``sources`` also hold is counted, not refused."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{path}: no such file (the evaluation input, a JSONL file with one record a line)")
    from nemo_reason.rewards import fields_of, get_reward

    # The sample fields the verifier declares, as named in this file.
    rename = {"answer": answer_field, "tests": tests_field}
    needs = [(f, rename.get(f, f)) for f in fields_of(get_reward(verifier))]
    template = template or USER_TEMPLATE
    records: List[EvalRecord] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            q = rec.get(question_field)
            if not isinstance(q, str) or not q.strip():
                raise ConfigError(f"{where}: the record has no question field '{question_field}' (its fields: "
                                  f"{', '.join(rec) or 'none'}); name it with --question-field / question_field")
            for need, name in needs:
                if rec.get(name) is None:
                    opt = f"--{need}-field / {need}_field" if need in rename else f"a field '{need}'"
                    raise ConfigError(f"{where}: the verifier '{verifier}' needs the record's {need} but it has no "
                                      f"field '{name}' (its fields: {', '.join(rec)}); name it with {opt}")
                tests = rec[name]
                if need == "tests" and not (isinstance(tests, list) and all(isinstance(t, str) for t in tests)):
                    raise ConfigError(f"{where}: field '{name}' must be a list of assert lines (strings)")
            sample = dict(rec)
            if answer_field in rec:
                sample["answer"] = rec[answer_field]
            if tests_field in rec:
                sample["tests"] = rec[tests_field]
            r = EvalRecord(q, sample, where)
            r.prompt = render_prompt(template, prompt_fields(q, sample, USER_INSTRUCTION), where)
            records.append(r)
            if num and len(records) == num:
                break
    if not records:
        raise ConfigError(f"{path}: no records (the file is empty)")
    name = domain or p.stem
    task = EvalTask(name if name not in DOMAINS else f"{name}_input", verifier, template,
                    list(stop or ()), records)
    task.held_out = {"input": str(p), **check_held_out(records, sources, strict=False)}
    return task


def describe_task(task: EvalTask, n: int) -> str:
    """One line: prompts x samples, verifier, and what the held-out check found."""
    h = task.held_out
    line = f"{task.domain}: {len(task.records)} prompts x {n} samples, verifier {task.verifier}"
    if "seed" in h:
        if h.get("max_difficulty"):
            line += f", difficulty <= {h['max_difficulty']}"
        line += f", held out (seed {h['seed']}): none of them in {', '.join(h['checked_against'])}"
        if len(task.records) < h["requested"]:
            line += f"; only {len(task.records)} of the {h['requested']} asked for exist"
    else:
        line += f", {h['overlap']} of them also in the bundled training corpora"
    return line


def bundled_tasks(names: Iterable[str], num: int, sources: Sequence[str] = DEFAULT_TRAINING_SOURCES,
                  template: str = "", stop: Optional[Sequence[str]] = None, max_difficulty: int = 0) -> List[EvalTask]:
    return [held_out_task(n, num, sources, template, stop, max_difficulty=max_difficulty) for n in names]
