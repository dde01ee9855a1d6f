"""Nemotron-CrossThink's data recipe for RL prompts: templates, the verifiable-answer filter, the
difficulty filter.

**Templates** turn a question-answer record of a bundled corpus into a prompt, its verifier and the
sample the verifier reads (:func:`render`):

- ``native``: the domain's own template and verifier (:data:`nemo_reason.evaluation.tasks.DOMAINS`),
  the one math and code always use;
- ``mcq`` (multiple-choice records only): the options kept, the answer a letter, verifier ``mcq``;
  for the bundled mcq corpus this *is* its native template;
- ``open`` (multiple-choice records only): the options removed, the question asked open-ended, the
  answer the correct option's text; verifier ``math`` when that text is a number, else ``exact``
  (SQuAD-normalised string match). CrossThink reports open-ended questions train better than
  options to guess from.

**The verifiable-answer filter** (:func:`drop_reason`), applied before anything is drawn: a record
the chosen verifier cannot score (no answer) is dropped (``no_answer``); an open-ended record whose
answer has more than ``max_answer_words`` words (``long_answer``: long free-form answers make noisy
rewards), or which cannot be asked without its options (``needs_options``: "which of the
following ...", "all of the above" answers) is dropped. The bundled mcq questions are all askable
without options and their answers have at most two words, so on them this filter drops nothing; it
matters for a user's data.

**The difficulty filter** (:func:`difficulty_filter`): each candidate prompt is rolled out ``k`` times
by the model the step starts from (:func:`nemo_reason.rollout.sampler.generate`, batched, the step's
sampling settings), scored by its verifier (:func:`nemo_reason.rewards.batch.score_batch`), and
dropped when all ``k`` are correct (CrossThink: filtering out what a smaller model solves helps).
Under data parallelism each rank tests every ``dp``-th candidate and the solve counts are gathered
over the data-parallel group, so every rank keeps the same set (tensor-parallel ranks of one
data-parallel rank test the same share: generation is collective over TP). The result is cached as
``difficulty.json`` in the step's folder, under a signature of the candidates, ``k``, the sampling
settings, the verifiers and the step's fingerprint (its config and input checkpoint): a resumed step
reads it instead of rolling out again (its model is no longer the input model), a changed step
recomputes.

Left out: LLM-based answer extraction and the Common Crawl QA harvesting of the paper, dedup across
sources, templates written by the user (a custom ``template`` string is what the eval side has).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nemo_reason.config.errors import ConfigError

TEMPLATE_NAMES = ("native", "mcq", "open")
# Which templates each bundled domain accepts (the first is its default).
DOMAIN_TEMPLATES = {"math": ("native",), "mcq": ("native", "mcq", "open"), "code": ("native",)}
OPEN_TEMPLATE = "Question: {question}\nAnswer:"
OPEN_INSTRUCTION = "Answer with a short phrase or number."
CACHE_FILE = "difficulty.json"

# Question or answer text that only makes sense next to the options.
_NEEDS_OPTIONS = re.compile(
    r"\b(which|what)\s+of\s+(the\s+)?(following|these|those|above|below|options|choices|statements)\b"
    r"|\b(all|none|both|neither)\s+of\s+the\s+(above|following|options)\b"
    r"|\b(the|these)\s+(following\s+)?(options|choices)\b|\boption\s+[A-J]\b|\bchoose\b|\bselect\s+(the|one)\b",
    re.I)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?$")


def check_template(domain: str, template: str, where: str = "") -> None:
    allowed = DOMAIN_TEMPLATES.get(domain)
    if allowed is None:
        raise ConfigError(f"{where}unknown domain {domain!r}; domains: {', '.join(DOMAIN_TEMPLATES)}")
    if template not in allowed:
        raise ConfigError(f"{where}template {template!r} does not apply to domain {domain!r} (it takes: "
                          f"{', '.join(allowed)}); mcq and open turn multiple-choice records into prompts, "
                          "math and code keep their native template")


def is_native(domain: str, template: str) -> bool:
    """Whether ``template`` renders ``domain`` exactly as its native template does."""
    return template == "native" or (domain == "mcq" and template == "mcq")


def option_text(record: dict) -> Optional[str]:
    """The text of a multiple-choice record's correct option (``answer_text``, else the option its
    letter names), None when it has neither."""
    if isinstance(record.get("answer_text"), str) and record["answer_text"].strip():
        return record["answer_text"].strip()
    from nemo_reason.rewards.mcq import ALL_LETTERS, gold_letter

    choices, answer = record.get("choices"), record.get("answer")
    if not choices or answer is None:
        return None
    letter = gold_letter(answer)
    i = ALL_LETTERS.find(letter) if letter else -1
    return str(choices[i]).strip() if 0 <= i < len(choices) else None


def drop_reason(domain: str, template: str, record: dict, max_answer_words: int) -> Optional[str]:
    """Why the verifiable-answer filter drops ``record`` under ``template`` (None: kept)."""
    from nemo_reason.evaluation.tasks import DOMAINS

    question = record.get(DOMAINS[domain].question_key)
    if not isinstance(question, str) or not question.strip():
        return "no_question"
    if template == "open":
        answer = option_text(record)
        if not answer:
            return "no_answer"
        if _NEEDS_OPTIONS.search(question) or _NEEDS_OPTIONS.search(answer):
            return "needs_options"
        if max_answer_words and len(answer.split()) > max_answer_words:
            return "long_answer"
        return None
    need = "tests" if DOMAINS[domain].verifier == "code" else "answer"
    return None if record.get(need) is not None else "no_answer"


def render(domain: str, template: str, record: dict, key: str) -> Tuple[str, dict, str]:
    """``(prompt text, sample for the verifier, verifier name)`` of ``record`` under ``template``."""
    from nemo_reason.evaluation.tasks import DOMAINS, prompt_fields, render_prompt

    d = DOMAINS[domain]
    question = record[d.question_key]
    if template != "open":
        return render_prompt(d.template, prompt_fields(question, record, d.instruction), key), record, d.verifier
    answer = option_text(record)
    # The verifier sees the answer text and no options (no letter can be read back into an answer).
    sample = {k: v for k, v in record.items() if k not in ("choices", "options")}
    sample["answer"] = answer
    verifier = "math" if _NUMBER.match(answer) else "exact"
    return render_prompt(OPEN_TEMPLATE, prompt_fields(question, sample, OPEN_INSTRUCTION), key), sample, verifier


# --- difficulty filter ---------------------------------------------------------------------------

def difficulty_signature(prompts: Sequence, k: int, params: dict, fingerprint: Optional[str]) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"k": k, "params": params, "fingerprint": fingerprint}, sort_keys=True).encode())
    for p in prompts:
        h.update(f"\0{p.key}\0{p.verifier}\0{p.text}".encode("utf-8"))
    return h.hexdigest()[:20]


def read_cache(path: Path, signature: str) -> Optional[Dict[str, int]]:
    """The cached solve counts when ``path`` holds results for ``signature``, else None."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("signature") != signature:
        return None
    solved = data.get("solved")
    return {str(k): int(v) for k, v in solved.items()} if isinstance(solved, dict) else None


def write_cache(path: Path, signature: str, k: int, solved: Dict[str, int], kept: List[str], stats: dict) -> None:
    from nemo_reason.data.indexed import atomic_write

    body = {"signature": signature, "k": k, "kept": kept, "stats": stats, "solved": solved}
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def solve_counts(model, tokenizer, prompts: Sequence, k: int, *, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch: int) -> Dict[str, int]:
    """``{prompt.key: correct samples of k}`` for ``prompts`` (this rank's share), by rollouts."""
    from nemo_reason.rewards.batch import score_batch
    from nemo_reason.rollout.sampler import SamplingParams, generate

    out: Dict[str, int] = {}
    groups: Dict[tuple, list] = {}
    for p in prompts:  # one generate call per stop set (a domain's), one score call per verifier
        groups.setdefault(tuple(p.stop), []).append(p)
    for gi, (stop, group) in enumerate(sorted(groups.items())):
        for bi in range(0, len(group), batch):
            chunk = group[bi:bi + batch]
            params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                    stop=list(stop), seed=seed + 1_000_003 * gi + bi)
            got = generate(model, tokenizer, [tokenizer.tokenize(p.text) for p in chunk], params)
            by_verifier: Dict[str, list] = {}
            for g in got:
                by_verifier.setdefault(chunk[g.prompt_index].verifier, []).append(g)
            for verifier, gs in by_verifier.items():
                scores = score_batch(verifier, [chunk[g.prompt_index].sample for g in gs], [g.text for g in gs],
                                     workers=0)
                for g, r in zip(gs, scores.scores):
                    key = chunk[g.prompt_index].key
                    out[key] = out.get(key, 0) + int(r >= 1.0)
            for p in chunk:
                out.setdefault(p.key, 0)
    return out


def gather_counts(counts: Dict[str, int], dp_size: int) -> Dict[str, int]:
    """Every data-parallel rank's counts merged (the same dict on every rank)."""
    if dp_size <= 1:
        return counts
    import torch.distributed as dist
    from megatron.core import parallel_state

    parts: List[Optional[dict]] = [None] * dp_size
    dist.all_gather_object(parts, counts, group=parallel_state.get_data_parallel_group())
    merged: Dict[str, int] = {}
    for part in parts:
        merged.update(part)
    return merged


def all_ranks_have(flag: bool, dp_size: int) -> bool:
    """True only if ``flag`` holds on every data-parallel rank (so all take the same branch)."""
    if dp_size <= 1:
        return flag
    import torch.distributed as dist
    from megatron.core import parallel_state

    parts: List[Optional[bool]] = [None] * dp_size
    dist.all_gather_object(parts, bool(flag), group=parallel_state.get_data_parallel_group())
    return all(parts)


def difficulty_filter(candidates: Sequence, k: int, *, model, tokenizer, cache: Path, fingerprint: Optional[str],
                      dp_rank: int, dp_size: int, max_new_tokens: int, temperature: float, top_p: float,
                      seed: int, batch: int) -> Tuple[set, dict]:
    """The keys of ``candidates`` the model does not solve ``k`` of ``k`` times, and what happened
    (``{"tested", "dropped", "from_cache", "rollouts", "seconds"}``); the same on every data-parallel rank."""
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    signature = difficulty_signature(candidates, k, params, fingerprint)
    solved = read_cache(cache, signature)
    from_cache = all_ranks_have(solved is not None and all(p.key in solved for p in candidates), dp_size)
    rollouts, t0 = 0, time.time()
    if not from_cache:
        if model is None:
            raise ConfigError(f"the difficulty filter (difficulty_samples={k}) rolls out the step's input model, but "
                              "none was given and no cached result matches; pass the policy model to "
                              "build_prompt_source, or set difficulty_samples: 0")
        mine = list(candidates)[dp_rank::dp_size]
        counts = solve_counts(model, tokenizer, mine, k, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed + 7_919 * dp_rank, batch=batch)
        rollouts = len(mine) * k
        solved = gather_counts(counts, dp_size)
    kept = {p.key for p in candidates if solved[p.key] < k}
    stats = {"tested": len(candidates), "dropped": len(candidates) - len(kept), "from_cache": from_cache,
             "rollouts": rollouts, "seconds": round(time.time() - t0, 2)}
    if not from_cache:  # every rank writes the same file (atomically): the step folder may be node-local
        write_cache(cache, signature, k, {p.key: solved[p.key] for p in candidates},
                    [p.key for p in candidates if p.key in kept], {"tested": stats["tested"],
                                                                   "dropped": stats["dropped"]})
    return kept, stats
