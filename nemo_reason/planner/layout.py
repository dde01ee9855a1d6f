"""Layout checks for a planned run: every parallelism rule, all violations at once, in plain words.

The rules are the table in :mod:`nemo_reason.config.layout`, the same one ``RunConfig.validate``
raises from (one error listing every broken rule); here each broken rule becomes a
:class:`Violation` with its short name (``Violation.rule``) that tests and ``--json`` consumers can
key on (the names are listed in that module), plus:

    parallel           a parallel.* value that is wrong by itself (sizes < 1, vpp without pp, ...)
    config             any other rule RunConfig.validate enforces (a safety net: plan never
                       calls valid what `run` would refuse)

Hardware (CUDA, Transformer Engine, GPU generation) is not checked: a plan is for the cluster,
not for the machine it is typed on (validation never looks at the machine either).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional

from nemo_reason.config.errors import ConfigError
from nemo_reason.config.layout import Layout, broken_rules, layout_of  # noqa: F401  (re-exported)


@dataclass
class Violation:
    rule: str
    message: str


def check_layout(cfg, world: Optional[int] = None) -> List[Violation]:
    """Every broken layout rule of ``cfg`` on ``world`` ranks (default: the launcher's)."""
    p = cfg.parallel
    out: List[Violation] = []
    try:
        p.validate()
    except ConfigError as err:
        out.append(Violation("parallel", str(err)))
        if min(p.tp, p.pp, p.cp, p.ep, p.etp or 1, p.vpp or 1) < 1:
            return out  # sizes below 1: nothing else can be computed
    world = layout_of(cfg, world).world
    out += [Violation(name, msg) for name, msg in broken_rules(cfg, world)]
    if not out:
        out += _safety_net(cfg, world)
    return out


def _safety_net(cfg, world: int) -> List[Violation]:
    """Whatever else ``RunConfig.validate`` refuses, on ``world`` ranks, without hardware checks."""
    c = copy.deepcopy(cfg)
    l = c.launcher
    nproc = l.nproc_per_node or l.gpus_per_node or 1
    if world % nproc == 0:
        l.nodes, l.nproc_per_node = world // nproc, nproc
    else:
        l.nodes, l.nproc_per_node = 1, world
    try:
        c.validate()
    except ConfigError as err:
        return [Violation("config", str(err))]
    return []
