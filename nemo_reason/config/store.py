"""Compose recipes with Hydra onto the dataclass schema, and explain every failure.

``compose(recipe, overrides)`` returns a validated :class:`RunConfig`. Overrides use Hydra's
grammar (``a.b=1``, ``+a.new=1``, ``~a.b``, lists, ...). A misspelled key or a value of the wrong
type raises :class:`ConfigError` naming the key and the closest valid keys; the CLI turns it
into exit code 2 before any work starts.

Recipes live in ``recipes/`` at the top of the repository (or ``$NEMO_REASON_RECIPES``, or the
copy installed under ``<prefix>/share/nemo_reason/recipes``); a RECIPE argument may also be a
path to a YAML file.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_reason.config.schema import ConfigError, RunConfig
from nemo_reason.config.steps import type_step

SCHEMA_NAME = "nemo_reason_base"
_STORED = False


def recipes_dir() -> Path:
    env = os.environ.get("NEMO_REASON_RECIPES")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[2] / "recipes",
        Path(sys.prefix) / "share" / "nemo_reason" / "recipes",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError(
        "cannot find the recipes/ folder: set NEMO_REASON_RECIPES=/path/to/recipes "
        "(it sits at the top of the nemo_reason repository)"
    )


def list_recipes() -> List[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _register_schema() -> None:
    global _STORED
    if _STORED:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
    _STORED = True


def _all_keys(node, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            try:
                child = node._get_node(k)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(child, DictConfig):
                keys.extend(_all_keys(child, full))
    return keys


def suggest(key: str, valid: Iterable[str], n: int = 3) -> List[str]:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=n, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {v.rsplit(".", 1)[-1]: v for v in valid}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.6)]
    return close


def _schema_keys() -> List[str]:
    return _all_keys(OmegaConf.structured(RunConfig))


def _unknown_key_error(key: str) -> ConfigError:
    hints = suggest(key, _schema_keys())
    msg = f"unknown config key '{key}'"
    if hints:
        msg += f"; did you mean: {', '.join(hints)}?"
    msg += " (`nemo-reason show RECIPE` lists every key; free-form keys go under +extra.)"
    return ConfigError(msg)


def _explain(exc: BaseException, overrides: Sequence[str]) -> ConfigError:
    """Turn a Hydra/OmegaConf failure into one message that names the key and the fix."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(x) for x in chain)
    full_key = None
    for x in chain:
        fk = getattr(x, "full_key", None)
        if fk:
            full_key = fk
            break
    m = re.search(r"[Kk]ey '([^']+)' (?:is )?not in", text)
    # A wrong key inside a list of dataclasses (data.blend=[{wieght: 1, ...}]): name the list and the fields.
    in_item = re.search(r"Key '([^']+)' not in '(\w+)'", text)
    over_list = re.search(r"Could not override '([^']+)'", text)
    if in_item and over_list and in_item.group(1) != over_list.group(1).rsplit(".", 1)[-1]:
        import dataclasses

        from nemo_reason.config import schema

        cls = getattr(schema, in_item.group(2), None)
        if dataclasses.is_dataclass(cls):
            fields = ", ".join(f.name for f in dataclasses.fields(cls))
            return ConfigError(f"{over_list.group(1)}: '{in_item.group(1)}' is not a field of {cls.__name__} "
                               f"(fields: {fields})")
    if m or "not in struct" in text or "ConfigAttributeError" in type(chain[-1]).__name__:
        key = full_key or (m.group(1) if m else None)
        if key is None:
            over = re.search(r"Could not override '([^']+)'", text)
            key = over.group(1) if over else "?"
        if "." not in key:
            over = re.search(r"Could not override '([^']+)'", text)
            if over:
                key = over.group(1)
        return _unknown_key_error(key)
    conv = re.search(r"Value '([^']*)' (?:of type '[^']+' )?could not be converted to (\w+)", text)
    if conv:
        where = full_key or "?"
        return ConfigError(f"{where}: value '{conv.group(1)}' is not a valid {conv.group(2)}")
    missing = re.search(r"Could not load '([^']+)'", text) or re.search(
        r"Cannot find primary config '([^']+)'", text)
    if missing:
        return ConfigError(f"{missing.group(0)}: recipes are {', '.join(list_recipes())}")
    # `key=a,b,c` is Hydra's sweep syntax, which compose refuses: a list value needs brackets.
    ambiguous = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:
        key, value = ambiguous.groups()
        return ConfigError(f"{key}={value}: a comma-separated value is Hydra's sweep syntax; write a list as "
                           f"{key}=[{value}] (or quote it: {key}='{value}')")
    first = str(chain[0]).strip().splitlines()[0] if str(chain[0]).strip() else type(chain[0]).__name__
    return ConfigError(f"invalid configuration: {first}")


def _resolve_recipe(recipe: str) -> Tuple[Path, str]:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve().parent, p.stem
    rdir = recipes_dir()
    if not (rdir / f"{recipe}.yaml").is_file():
        hints = difflib.get_close_matches(recipe, list_recipes(), n=3, cutoff=0.4)
        msg = f"unknown recipe '{recipe}'"
        if hints:
            msg += f"; did you mean: {', '.join(hints)}?"
        msg += f" (recipes: {', '.join(list_recipes())})"
        raise ConfigError(msg)
    return rdir, recipe


def _hydra_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)


def _translate_deletes(overrides: Sequence[str]) -> List[str]:
    """``~key`` on a schema field means "drop the recipe's value": back to the schema default.
    (Hydra would delete the key, which a typed config cannot lose.) Keys under ``extra`` are
    deleted as usual."""
    schema = OmegaConf.structured(RunConfig)
    valid = set(_schema_keys())
    out = []
    for o in overrides:
        if o.startswith("~") and not o.startswith("~extra."):
            key = o[1:].split("=", 1)[0]
            if key not in valid:
                raise _unknown_key_error(key)
            node = OmegaConf.select(schema, key)
            if isinstance(node, (DictConfig, ListConfig)):
                raise ConfigError(f"~{key}: only single fields can be reset, not the group '{key}'")
            out.append(f"{key}={_hydra_value(node)}")
        else:
            out.append(o)
    return out


def _check_no_stray_keys(cfg: DictConfig) -> None:
    """Reject keys that ``+`` added inside typed groups: only ``extra`` is free-form."""
    valid = set(_schema_keys())
    schema = OmegaConf.structured(RunConfig)
    # Dict fields (launcher.env, ...) take any key, like `extra`.
    free = tuple(k + "." for k in valid if OmegaConf.get_type(OmegaConf.select(schema, k)) is dict)
    for key in _all_keys(cfg):
        top = key.split(".", 1)[0]
        if top in ("extra", "pipeline") or key in valid or key.startswith(free):
            continue
        err = _unknown_key_error(key)
        raise err


def compose_dictconfig(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the recipe with overrides into a typed (structured) DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_schema()
    config_dir, name = _resolve_recipe(recipe)
    overrides = _translate_deletes(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types; all become one message
        raise _explain(exc, overrides) from None
    finally:
        GlobalHydra.instance().clear()
    _check_no_stray_keys(cfg)
    return cfg


def to_run_config(cfg: DictConfig) -> RunConfig:
    try:
        OmegaConf.resolve(cfg)
        obj = OmegaConf.to_object(cfg)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, ()) from None
    if not isinstance(obj, RunConfig):  # pragma: no cover - the schema is the recipe's base
        raise ConfigError(f"recipe does not build on {SCHEMA_NAME}: add it to its defaults list")
    return type_pipeline(obj)


def type_pipeline(cfg: RunConfig) -> RunConfig:
    """Each pipeline entry becomes its step type's config dataclass (config/steps.py)."""
    cfg.pipeline = [type_step(entry, i) for i, entry in enumerate(cfg.pipeline)]
    return cfg


def compose(recipe: str, overrides: Sequence[str] = (), validate: bool = True) -> RunConfig:
    cfg = to_run_config(compose_dictconfig(recipe, overrides))
    cfg.launcher.resolve()
    if validate:
        cfg.validate()
    for step in cfg.pipeline:
        # Every step's overrides, the run config they make, and the step's rules against it, up front.
        scfg = step_config(cfg, step)
        if validate and step.overrides:
            try:
                scfg.validate()
            except ConfigError as err:
                raise ConfigError(f"step '{step.name or step.type}' overrides: {err}") from None
        step.check(scfg)
    return cfg


def step_config(cfg: RunConfig, step) -> RunConfig:
    """The run config as one pipeline step sees it: ``step.overrides`` applied on top."""
    if not step.overrides:
        return cfg
    base = OmegaConf.structured(cfg)
    valid = set(_schema_keys())
    try:
        for k, v in step.overrides.items():
            if k.split(".", 1)[0] == "pipeline":
                raise ConfigError("overrides may not change `pipeline`")
            if k not in valid and k.split(".", 1)[0] != "extra":
                raise _unknown_key_error(k)
            OmegaConf.update(base, k, v, merge=True)
        out = OmegaConf.to_object(base)
    except ConfigError as err:
        raise ConfigError(f"step '{step.name or step.type}' overrides: {err}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"step '{step.name or step.type}' overrides: {_explain(exc, ())}") from None
    return out


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_yaml(path: str | os.PathLike) -> RunConfig:
    """Read a resolved config.yaml (as saved next to checkpoints) back into a RunConfig."""
    base = OmegaConf.structured(RunConfig)
    return type_pipeline(OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(path))))


def flatten(cfg: RunConfig) -> dict:
    """Dotted key -> value, for logging hyperparameters."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, DictConfig):
            for k in node.keys():
                walk(node[k], f"{prefix}{k}.")
        elif isinstance(node, ListConfig):
            out[prefix[:-1]] = OmegaConf.to_container(node)
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.structured(cfg), "")
    return out


def recipe_name_default(cfg: RunConfig, recipe: Optional[str]) -> None:
    if recipe and cfg.run.name == "run":
        cfg.run.name = Path(recipe).stem
