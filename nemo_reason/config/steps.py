"""Pipeline step configs: the fields every step has, and the registry of each step type's own dataclass.

A step type registers a dataclass that extends :class:`StepConfig` with its own fields
(``nemo_reason.stages.register_step("grpo", config=GRPOConfig)`` puts it in :data:`STEP_CONFIGS`).
A recipe sets those fields on the step's entry of ``pipeline``::

    pipeline:
      - type: pretrain
        name: phase1
      - type: grpo
        group_size: 8               # a GRPOConfig field
        overrides: {optim.lr: 1e-6} # run-config fields for this step only

:func:`type_step` turns one composed entry (a plain mapping) into its typed dataclass, refusing a
misspelled field with the closest valid ones, like every other group. This module is data: it
knows no step implementation; the registry is filled by whoever registers step types.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type

from omegaconf import DictConfig, OmegaConf

from nemo_reason.config.errors import ConfigError
from nemo_reason.registry import Registry


@dataclass
class StepConfig:
    # Registered step type (see `nemo-reason list`).
    type: str = "pretrain"
    # Folder name under run.dir; defaults to the type (suffixed when a type repeats).
    name: Optional[str] = None
    # Dotted overrides applied to the run config for this step only, e.g. {"optim.lr": 1e-4}.
    overrides: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """The step's own field rules (a subclass extends it); cross-group rules stay in RunConfig."""

    def check(self, cfg) -> None:
        """Rules between this step's fields and the run config as the step sees it (``cfg``: its
        overrides applied); checked at composition, so they exit 2 before any step runs."""


# step type name -> its StepConfig subclass
STEP_CONFIGS: Registry = Registry("pipeline step type")

COMMON_FIELDS = tuple(f.name for f in dataclasses.fields(StepConfig))


def step_fields(cls: Type[StepConfig]) -> List[dataclasses.Field]:
    """The fields a step type adds to the common ones (type, name, overrides)."""
    return [f for f in dataclasses.fields(cls) if f.name not in COMMON_FIELDS]


def field_docs(cls: type) -> Dict[str, str]:
    """The comment lines just above each field of a dataclass (the schema's documentation style),
    joined into one line per field; a field without a comment gets ""."""
    import inspect

    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: List[str] = []
        for line in lines[1:]:
            text = line.strip()
            if text.startswith("#"):
                pending.append(text.lstrip("# ").strip())
            elif ":" in text and not text.startswith(("def ", "@", '"', "'")) and text.split(":")[0].isidentifier():
                docs[text.split(":")[0]] = " ".join(pending)
                pending = []
            else:
                pending = []
    return docs


def type_step(entry: Any, index: int) -> StepConfig:
    """The typed config of pipeline entry ``index`` (a mapping, or already a StepConfig)."""
    if isinstance(entry, StepConfig) and type(entry) is not StepConfig:
        return entry
    if isinstance(entry, StepConfig):
        entry = dataclasses.asdict(entry)
    if isinstance(entry, DictConfig):
        entry = OmegaConf.to_container(entry, resolve=True)
    if not isinstance(entry, dict):
        raise ConfigError(f"pipeline[{index}]: expected a mapping like {{type: pretrain}}, got {entry!r}")
    kind = entry.get("type", StepConfig.type)
    try:
        cls = STEP_CONFIGS.get(kind)
    except KeyError as exc:
        raise ConfigError(f"pipeline[{index}].type: {exc.args[0]}") from None
    where = f"pipeline[{index}] ({entry.get('name') or kind})"
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in entry:
        if key not in valid:
            hints = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
            own = [f.name for f in step_fields(cls)]
            raise ConfigError(
                f"{where}: '{key}' is not a field of step type '{kind}'"
                + (f"; did you mean: {', '.join(hints)}?" if hints else "")
                + f" ({kind} fields: {', '.join(own) if own else 'none of its own'}; every step also has "
                  f"{', '.join(COMMON_FIELDS)}; run-config fields go under overrides)")
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), entry)
        step = OmegaConf.to_object(node)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's validation errors become one message
        first = str(exc).strip().splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{where}" + (f".{key}" if key else "") + f": {first}") from None
    step.validate()
    return step
