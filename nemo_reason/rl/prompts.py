"""The prompt side of the ``grpo`` step: an endless, deterministic stream of training prompts over a
weighted blend of domains, one data-parallel rank's share of it.

**Sources.** Each entry of ``domains`` is a bundled corpus (``math``, ``mcq``, ``code``) at its default
size and seed, i.e. exactly the training source ``bundled:NAME`` that the evaluation's held-out
splits are chosen to avoid: :func:`nemo_reason.evaluation.tasks.held_out_task` keeps only records
whose question is in none of ``DEFAULT_TRAINING_SOURCES`` and :func:`check_held_out` verifies it,
so no held-out prompt can be drawn here (:func:`build_prompt_source` refuses a source outside that
list, and the run seed only orders the stream, it never picks other records). A domain may appear
more than once with different ``templates`` (``[mcq, mcq]`` with ``[mcq, open]``: both CrossThink
forms of the same records). Templates and the verifiable-answer and difficulty filters are
:mod:`nemo_reason.rl.crossthink`'s. ``max_difficulty`` keeps only records whose corpus field
``difficulty`` is at most that (bundled math: 1 one-step sums, 2 products/rates/averages, ... 5),
counted as ``too_difficult`` in the log line; the pool is the same default source, narrowed.

**The stream.** Global draw ``g`` (0, 1, 2, ...) picks entry ``e`` by ``domain_weights`` with a
uniform that is a hash of ``(seed, g)`` (sampled, so every data-parallel rank sees every domain),
and takes the entry's next prompt in a seeded permutation of its (filtered) pool, a fresh
permutation per pass over the pool. Rank ``r`` of ``dp`` gets draws ``r, r + dp, r + 2 dp, ...``: the
ranks' prompts are disjoint, and the prompts of one optimizer step (all ranks' ``take(n)``) are the
global draws ``[s n dp, (s + 1) n dp)``, the same set whatever ``dp`` is. The order depends only on
the seed and how many prompts were taken; :meth:`PromptSource.state_dict` is that position (and the
per-entry counts), so a resumed run continues exactly (and a position alone is enough: it is
replayed).

Left out: user JSONL sources (the eval side's ``load_jsonl_task`` is the reader to reuse),
curricula over difficulty, re-testing difficulty as the policy improves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from nemo_reason.config.errors import ConfigError

_MASK = (1 << 64) - 1


@dataclass
class PromptFields:
    """The prompt fields of the ``grpo`` step's config (``GRPOConfig`` inherits them)."""

    # Bundled corpora to draw training prompts from (math, mcq, code); an entry may repeat with another template.
    domains: List[str] = field(default_factory=lambda: ["math"])
    # Records of each bundled corpus the prompt pool is drawn from, before the filters (0: the corpus's default
    # size, e.g. 5,000 math records, the `bundled:<domain>` training source); the held-out splits avoid them too.
    pool_records: int = 0
    # Blend weight per entry of domains (empty: equal); each prompt's entry is drawn by weight, seeded.
    domain_weights: List[float] = field(default_factory=list)
    # Template per entry of domains (empty: native for all): native (the domain's own), mcq (options kept, a letter
    # answers, verifier mcq) or open (options removed, the option's text answers, verifier exact, math when numeric).
    templates: List[str] = field(default_factory=list)
    # CrossThink's short-answer filter: open-ended prompts whose answer has more words are dropped (0: no limit).
    max_answer_words: int = 10
    # Record filter: only records whose corpus `difficulty` is <= max_difficulty (math: 1-5; 0: off). Records
    # without a difficulty are dropped when it is on. The held-out pass@1 of the step uses the same filter.
    max_difficulty: int = 0
    # Difficulty filter: k rollouts per candidate prompt by the step's input model; solved k of k: dropped (0: off).
    difficulty_samples: int = 0
    # Candidate prompts per domain entry the difficulty filter tests (0: all); the stream draws only the kept ones.
    difficulty_pool: int = 256
    # Prompts per generate call of the difficulty filter.
    difficulty_batch: int = 32
    # Verifier per entry of domains replacing the template's ('' keeps it): a registered reward or 'module:function'.
    verifiers: List[str] = field(default_factory=list)

    def entries(self) -> List[tuple]:
        """``[(domain, template, weight, verifier override)]``, one per entry of ``domains``."""
        n = len(self.domains)
        weights = list(self.domain_weights) or [1.0] * n
        templates = list(self.templates) or ["native"] * n
        verifiers = list(self.verifiers) or [""] * n
        return list(zip(self.domains, templates, [float(w) for w in weights], verifiers))

    def validate_prompts(self, where: str) -> None:
        """The fields' own rules (call from the step config's ``validate``)."""
        from nemo_reason.rl.crossthink import check_template, is_native

        n = len(self.domains)
        if n == 0:
            raise ConfigError(f"{where}: domains is empty; name at least one bundled corpus (math, mcq, code)")
        for name in ("domain_weights", "templates", "verifiers"):
            got = getattr(self, name)
            if got and len(got) != n:
                raise ConfigError(f"{where}: {name} has {len(got)} entries but domains has {n}; give one per "
                                  f"domain ({list(self.domains)}) or leave it empty")
        if any(w < 0 for w in self.domain_weights) or (self.domain_weights and sum(self.domain_weights) <= 0):
            raise ConfigError(f"{where}: domain_weights must be >= 0 with a positive sum, got {self.domain_weights}")
        seen = set()
        for domain, template, _, _ in self.entries():
            check_template(domain, template, f"{where}: ")
            form = (domain, "native" if is_native(domain, template) else template)
            if form in seen:
                raise ConfigError(f"{where}: domain {domain!r} with template {template!r} is listed twice (for mcq, "
                                  "native and mcq are the same form); merge them (add their weights)")
            seen.add(form)
        for name in ("max_answer_words", "difficulty_samples", "difficulty_pool", "max_difficulty", "pool_records"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: {name} must be >= 0 (0 turns it off / means all)")
        if self.difficulty_batch < 1:
            raise ConfigError(f"{where}: difficulty_batch must be >= 1")


@dataclass
class Prompt:
    domain: str           # the bundled corpus (a key of evaluation.tasks.DOMAINS: its stop strings)
    text: str             # the rendered prompt
    sample: dict          # what the verifier reads
    verifier: str         # a registered reward or 'module:function'
    key: str              # stable id: "bundled:mcq#123:open"
    template: str = "native"
    stop: tuple = ()      # stop strings of generation (the domain's)

    @property
    def label(self) -> str:
        """How metrics name this prompt's entry: the domain, ``mcq_open`` for another template."""
        from nemo_reason.rl.crossthink import is_native

        return self.domain if is_native(self.domain, self.template) else f"{self.domain}_{self.template}"


def _uniform(seed: int, g: int) -> float:
    """A uniform in [0, 1) from ``(seed, g)`` alone (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + (g + 1) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


class PromptSource:
    """This data-parallel rank's endless share of the blend (see the module docstring)."""

    def __init__(self, pools: Sequence[Sequence[Prompt]], weights: Sequence[float], labels: Sequence[str],
                 seed: int, dp_rank: int = 0, dp_size: int = 1, report: Optional[dict] = None):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        for label, pool in zip(labels, pools):
            if not pool:
                raise ConfigError(f"prompt source {label!r}: no prompt is left after the filters "
                                  f"({(report or {}).get(label, {})}); lower difficulty_samples, raise "
                                  "difficulty_pool or max_answer_words, or drop this domain")
        total = float(sum(weights))
        self.pools, self.labels, self.seed = [list(p) for p in pools], list(labels), int(seed)
        self.weights = [w / total for w in weights]
        self._cum = [sum(self.weights[:i + 1]) for i in range(len(self.weights))]
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.report = report or {}
        self._global = 0                       # global draws consumed (all ranks)
        self._counts = [0] * len(self.pools)   # of them, per entry
        self._perm: Dict[int, tuple] = {}      # entry -> (epoch, permutation)

    # -- the stream
    def _entry(self, g: int) -> int:
        u = _uniform(self.seed, g)
        for e, c in enumerate(self._cum):
            if u < c:
                return e
        return len(self._cum) - 1

    def _item(self, e: int, k: int) -> Prompt:
        pool = self.pools[e]
        epoch = k // len(pool)
        cached = self._perm.get(e)
        if cached is None or cached[0] != epoch:
            order = list(range(len(pool)))
            random.Random(f"prompts:{self.seed}:{e}:{epoch}").shuffle(order)
            cached = self._perm[e] = (epoch, order)
        return pool[cached[1][k % len(pool)]]

    def _advance(self) -> tuple:
        e = self._entry(self._global)
        k = self._counts[e]
        self._counts[e] += 1
        self._global += 1
        return e, k

    def take(self, n: int) -> List[Prompt]:
        """This rank's next ``n`` prompts."""
        out = []
        for _ in range(n):
            for r in range(self.dp_size):
                e, k = self._advance()
                if r == self.dp_rank:
                    out.append(self._item(e, k))
        return out

    @property
    def taken(self) -> int:
        return self._global // self.dp_size

    # -- resume
    def _signature(self) -> list:
        return [[label, len(pool), round(w, 12)] for label, pool, w in zip(self.labels, self.pools, self.weights)]

    def state_dict(self) -> dict:
        return {"taken": self.taken, "seed": self.seed, "dp_size": self.dp_size, "counts": list(self._counts),
                "pools": self._signature()}

    def load_state_dict(self, d: dict) -> None:
        """Continue after ``d["taken"]`` prompts of this rank (the per-entry counts are replayed when
        absent); refuses a state of another blend, seed or data-parallel size."""
        for name, mine in (("seed", self.seed), ("dp_size", self.dp_size), ("pools", self._signature())):
            if name in d and d[name] != mine:
                raise ConfigError(f"prompt source state: {name} was {d[name]!r}, this run has {mine!r}; a prompt "
                                  "stream resumes only with the same domains, filters, weights, seed and "
                                  "data-parallel size (start the step afresh)")
        self._global, self._counts, self._perm = 0, [0] * len(self.pools), {}
        total = int(d["taken"]) * self.dp_size
        if d.get("counts") is not None and len(d["counts"]) == len(self.pools) and sum(d["counts"]) == total:
            self._global, self._counts = total, [int(c) for c in d["counts"]]
        else:
            while self._global < total:
                self._advance()

    # -- the log line
    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)

    def describe(self) -> str:
        parts = []
        for label, pool, w in zip(self.labels, self.pools, self.weights):
            r = self.report.get(label, {})
            drops = ", ".join(f"{n} {why}" for why, n in sorted(r.get("dropped", {}).items()) if n)
            parts.append(f"{label} {len(pool)} prompts (weight {w:.2f}"
                         + (f"; dropped {drops} of {r.get('records', '?')}" if drops else "") + ")")
        return "prompts: " + "; ".join(parts)


def _entry_pool(domain: str, template: str, verifier: str, max_answer_words: int, max_difficulty: int = 0,
                records: int = 0):
    """``(prompts, records, dropped {reason: n})`` of one entry, before the difficulty filter: the first
    ``records`` records of the bundled corpus (0: its default size; a prefix of any larger pool)."""
    from nemo_reason.data.corpora import DEFAULT_SEED, DEFAULT_SIZE, generate
    from nemo_reason.evaluation.tasks import DEFAULT_TRAINING_SOURCES, DOMAINS, pool_source
    from nemo_reason.rl import crossthink

    source = pool_source(domain)
    if source not in DEFAULT_TRAINING_SOURCES:  # the held-out splits avoid exactly these sources
        raise ConfigError(f"domain {domain!r}: {source} is not one of the training sources the held-out "
                          f"evaluation splits exclude ({', '.join(DEFAULT_TRAINING_SOURCES)})")
    stop = tuple(DOMAINS[domain].stop)
    # The keys of the default pool stay `bundled:<domain>#i` (difficulty caches, resumed prompt state).
    source = pool_source(domain, records)
    prompts, dropped, n = [], {}, 0
    for i, rec in enumerate(generate(domain, records or DEFAULT_SIZE.get(domain, 2000), DEFAULT_SEED)):
        n += 1
        why = crossthink.drop_reason(domain, template, rec, max_answer_words)
        if why is None and max_difficulty and not _easy_enough(rec, max_difficulty):
            why = "too_difficult"
        if why is not None:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        key = f"{source}#{i}:{template}"
        text, sample, native_verifier = crossthink.render(domain, template, rec, key)
        prompts.append(Prompt(domain, text, sample, verifier or native_verifier, key, template, stop))
    return prompts, n, dropped


def _easy_enough(record: dict, max_difficulty: int) -> bool:
    d = record.get("difficulty")
    return isinstance(d, (int, float)) and not isinstance(d, bool) and d <= max_difficulty


def build_prompt_source(step_cfg, cfg, ctx, tokenizer, model=None, log=print) -> PromptSource:
    """The prompt stream of a grpo step for this data-parallel rank: the CrossThink filters applied,
    the difficulty filter run (or read from ``ctx.step_dir/difficulty.json``) with ``model``, the
    step's input policy. Call it before the first training step (a resumed step reads the cache)."""
    from nemo_reason.rl import crossthink

    where = f"step '{getattr(ctx, 'step_name', '')}' (grpo)"
    step_cfg.validate_prompts(where)
    seed = int(cfg.run.seed)
    dp_rank, dp_size = int(ctx.dims.dp_rank), int(ctx.dims.dp)
    rank = int(getattr(ctx, "rank", 0))
    k = int(step_cfg.difficulty_samples)
    pools, weights, labels, report, candidates = [], [], [], {}, []
    for e, (domain, template, weight, verifier) in enumerate(step_cfg.entries()):
        prompts, n, dropped = _entry_pool(domain, template, verifier, step_cfg.max_answer_words,
                                          int(getattr(step_cfg, "max_difficulty", 0)),
                                          int(getattr(step_cfg, "pool_records", 0)))
        label = prompts[0].label if prompts else (domain if crossthink.is_native(domain, template)
                                                  else f"{domain}_{template}")
        if k and prompts:
            want = step_cfg.difficulty_pool or len(prompts)
            if want < len(prompts):  # a seeded sample of the pool, kept in corpus order
                chosen = sorted(random.Random(f"difficulty:{seed}:{domain}:{template}").sample(range(len(prompts)),
                                                                                                  want))
                prompts = [prompts[i] for i in chosen]
                dropped["untested"] = n - sum(dropped.values()) - want
            candidates.extend(prompts)
        pools.append(prompts)
        weights.append(weight)
        labels.append(label)
        report[label] = {"records": n, "dropped": dropped}
    if k:
        kept, stats = crossthink.difficulty_filter(
            candidates, k, model=model, tokenizer=tokenizer, cache=ctx.step_dir / crossthink.CACHE_FILE,
            fingerprint=getattr(ctx, "fingerprint", None), dp_rank=dp_rank, dp_size=dp_size,
            max_new_tokens=int(getattr(step_cfg, "max_new_tokens", 32)),
            temperature=float(getattr(step_cfg, "temperature", 1.0)), top_p=float(getattr(step_cfg, "top_p", 1.0)),
            seed=seed * 100_003 + 17, batch=int(step_cfg.difficulty_batch))
        for label, i in zip(labels, range(len(pools))):
            before = len(pools[i])
            pools[i] = [p for p in pools[i] if p.key in kept]
            report[label]["dropped"]["solved_k_of_k"] = before - len(pools[i])
            report[label]["tested"] = before
        report["_difficulty"] = stats
    source = PromptSource(pools, weights, labels, seed, dp_rank, dp_size, report)
    if log is not None and rank == 0:
        line = f"[grpo] {source.describe()}"
        if k:
            s = report["_difficulty"]
            line += (f" | difficulty filter (k={k}): {s['dropped']} of {s['tested']} candidates solved k of k, "
                     + ("read from " + crossthink.CACHE_FILE if s["from_cache"] else f"{s['rollouts']} rollouts in {s['seconds']:.1f} s"))
        log(line)
    return source
