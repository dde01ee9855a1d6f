"""Reinforcement-learning math: advantage estimators, policy losses and KL estimators, each a small pure
function on tensors registered by name.

- :data:`ADVANTAGES`: ``fn(rewards, group_size=None, **options) -> advantages`` (same shape as
  ``rewards``), in :mod:`nemo_reason.rl.advantages` ("grpo", "rloo", "reinforce", "reinforce_pp",
  "reinforce_pp_baseline").
- :data:`POLICY_LOSSES`: ``fn(logprobs, old_logprobs, advantages, mask, **options) -> (loss, metrics)``,
  ``metrics`` mapping names to ``[sum, count]`` tensors (the convention of
  :mod:`nemo_reason.training.step`), in :mod:`nemo_reason.rl.losses` ("ppo", "gspo").
- :data:`KL_ESTIMATORS`: ``fn(logprobs, ref_logprobs) -> per-token KL`` ("k1", "k2", "k3"), in
  :mod:`nemo_reason.rl.kl`.

Shaping and filtering helpers (DAPO's soft overlong penalty, dynamic sampling's group filter) are in
:mod:`nemo_reason.rl.filters`; dynamic sampling with refill in :mod:`nemo_reason.rl.groups`; the prompt
stream in :mod:`nemo_reason.rl.prompts`. The builtin modules are imported on the first look-up, so
``import nemo_reason.rl`` costs nothing. Left out: rollout, scoring and the update loop (the ``grpo``
step), and anything that needs Megatron (these functions see plain, already gathered log-probs).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from nemo_reason.config.errors import ConfigError
from nemo_reason.registry import LazyRegistry, Registry

_BUILTIN = ("nemo_reason.rl.advantages", "nemo_reason.rl.losses", "nemo_reason.rl.kl")
_loaded = False


def load_builtin_rl() -> None:
    """Import the builtin advantage, loss and KL modules (once)."""
    global _loaded
    if not _loaded:
        _loaded = True  # first, so that a module looking a name up while importing does not recurse
        for mod in _BUILTIN:
            importlib.import_module(mod)


ADVANTAGES: Registry = LazyRegistry("advantage estimator", lambda: load_builtin_rl())
POLICY_LOSSES: Registry = LazyRegistry("policy loss", lambda: load_builtin_rl())
KL_ESTIMATORS: Registry = LazyRegistry("KL estimator", lambda: load_builtin_rl())


def _lookup(registry: Registry, name: str, field: str) -> Callable:
    if callable(name):
        return name
    names = registry.names()
    if name not in names:
        hints = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
        raise ConfigError(f"{field}: unknown {registry.kind} '{name}'"
                          + (f"; did you mean: {', '.join(hints)}?" if hints else "")
                          + f" (registered: {', '.join(names)})")
    return registry.get(name)


def get_advantage(name) -> Callable:
    """The advantage estimator registered as ``name`` (a callable is returned as it is); an unknown name
    raises :class:`ConfigError` naming the registered ones."""
    return _lookup(ADVANTAGES, name, "advantage")


def get_policy_loss(name) -> Callable:
    """The policy loss registered as ``name`` (a callable is returned as it is)."""
    return _lookup(POLICY_LOSSES, name, "policy_loss")


def get_kl_estimator(name) -> Callable:
    """The KL estimator registered as ``name`` (a callable is returned as it is)."""
    return _lookup(KL_ESTIMATORS, name, "kl")


__all__ = ["ADVANTAGES", "POLICY_LOSSES", "KL_ESTIMATORS", "get_advantage", "get_policy_loss",
           "get_kl_estimator", "load_builtin_rl"]
