"""Pure validation and the preflight: config rules never look at the machine, the preflight does
(fp8 needs CUDA, files exist, ...); imports run downhill; the layout rules come from one table and
are all named at once; data.split as a list; a split too small for Megatron exits before work."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from nemo_reason.config.schema import ConfigError, DataConfig
from nemo_reason.config.store import compose
from nemo_reason.preflight import check_init_checkpoint, preflight

PKG = Path(__file__).resolve().parents[2] / "nemo_reason"
LAYERED = ("config", "data", "launch", "backend", "models", "planner", "parallel", "ops", "checkpoint")


def _imports():
    """(importing module, imported module) for every nemo_reason import, including those inside functions."""
    out = []
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        pkg_parts = parts[:-1] if parts[-1] == "__init__" else parts
        here = ".".join(pkg_parts)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out += [(here, a.name) for a in node.names if a.name.startswith("nemo_reason")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package
                    base = (parts[:-1])[:len(parts[:-1]) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.startswith("nemo_reason"):
                    out.append((here, name))
    return out


def _sub(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "" is the root package (registers the steps): ignored


def test_imports_run_downhill():
    edges = _imports()
    bad = [(a, b) for a, b in edges if _sub(a) == "config" and _sub(b) in ("data", "launch", "backend", "models")]
    bad += [(a, b) for a, b in edges if _sub(a) == "models" and _sub(b) == "data"]
    bad += [(a, b) for a, b in edges if _sub(a) == "backend" and _sub(b) == "launch"]
    assert not bad, bad
    # No cycle among the subpackages (depth-first search over the package-level graph).
    graph = {}
    for a, b in edges:
        if _sub(a) in LAYERED and _sub(b) in LAYERED and _sub(a) != _sub(b):
            graph.setdefault(_sub(a), set()).add(_sub(b))

    def cycle_from(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = cycle_from(nxt, path + [nxt])
            if found:
                return found
        return None

    for start in graph:
        assert cycle_from(start, [start]) is None, cycle_from(start, [start])


def test_no_module_import_cycles_in_data():
    """The former circle bpe -> prepare -> prepare_worker -> tokenizer -> bpe (and any other)."""
    graph = {}
    for a, b in _imports():
        if _sub(a) == "data" and _sub(b) == "data" and a != b:
            graph.setdefault(a, set()).add(b)

    def reach(node, seen):
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    cycles = sorted(m for m in graph if m in reach(m, set()))
    assert not cycles, cycles


def test_validation_does_not_look_at_the_machine(tmp_path):
    # fp8 on this CPU machine composes and validates (a login node submits GPU jobs) ...
    cfg = compose("nemotron_h_56b", ["launcher=slurm", "trainer.precision=fp8"])
    assert cfg.trainer.precision == "fp8"
    # ... and so do files that are not here: their checks are the preflight's.
    cfg = compose("tiny", ["data.phases=[]", "data.blend=[{weight:1,path:/no/such/prefix}]",
                           "data.tokenizer=hf", f"data.tokenizer_path={tmp_path}/none",
                           f"run.init_checkpoint={tmp_path}/iter_0000001"])
    with pytest.raises(ConfigError, match="/no/such/prefix.bin/.idx not found"):
        preflight(cfg)
    cfg.data.blend = []
    with pytest.raises(ConfigError, match=r"data.tokenizer_path=.*: not found"):
        preflight(cfg)
    cfg.data.tokenizer, cfg.data.tokenizer_path = "byte", None
    with pytest.raises(ConfigError, match="not a complete checkpoint folder"):
        preflight(cfg)
    (tmp_path / "iter_0000001").mkdir()
    (tmp_path / "iter_0000001" / "complete.json").write_text(json.dumps({}))
    check_init_checkpoint(str(tmp_path / "iter_0000001"))


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.precision=fp8"], "trainer.precision=fp8 needs an NVIDIA GPU"),
    (["trainer.precision=fp16"], "trainer.precision=fp16 needs CUDA"),
    (["model.backend=te"], "model.backend=te needs CUDA"),
])
def test_preflight_names_what_this_machine_lacks(overrides, needle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks a CPU machine")
    with pytest.raises(ConfigError) as e:
        preflight(compose("tiny", overrides))
    assert needle in str(e.value)


def test_every_broken_layout_rule_is_named_at_once():
    from nemo_reason.planner.layout import check_layout

    with pytest.raises(ConfigError) as e:
        compose("tiny", ["parallel.tp=3"])
    msg = str(e.value)
    planned = {v.rule for v in check_layout(compose("tiny", ["parallel.tp=3"], validate=False))}
    assert planned == {"world_tp_cp_pp", "heads_tp", "groups_tp", "ffn_tp"}
    for rule in planned:  # run names each rule plan names, with the field
        assert f"[{rule}]" in msg, msg
    assert "model.num_attention_heads=4 is not divisible by parallel.tp=3" in msg
    assert "model.ffn_hidden_size=512" in msg and "world size 1" in msg


def test_layer_counts_are_one_function():
    from nemo_reason.config.layers import layer_counts, model_layers
    from nemo_reason.planner.params import moe_layer_count

    hybrid = compose("tiny_hybrid").model
    pattern = "".join(model_layers(hybrid))
    assert layer_counts(hybrid) == {s: pattern.count(s) for s in "M*-E"} and len(pattern) == hybrid.num_layers
    moe = compose("tiny_moe", ["model.moe_layer_freq=2"]).model
    c = layer_counts(moe)
    assert c["*"] == moe.num_layers and c["E"] == moe_layer_count(moe) == (moe.num_layers + 1) // 2
    assert c["-"] + c["E"] == moe.num_layers


def test_backend_names_match():
    from nemo_reason.backend import BACKENDS
    from nemo_reason.config.model import BACKENDS as CONFIG_BACKENDS

    assert tuple(BACKENDS) == tuple(CONFIG_BACKENDS)


def test_split_as_list_or_string():
    assert compose("tiny", ["data.split=[80,10,10]"]).data.split_string() == "80,10,10"
    assert compose("tiny", ["data.split='80,10,10'"]).data.split_weights() == [80.0, 10.0, 10.0]
    with pytest.raises(ConfigError, match=r"write a list as data.split=\[80,10,10\]"):
        compose("tiny", ["data.split=80,10,10"])
    with pytest.raises(ConfigError, match="three non-negative weights"):
        DataConfig(split=[1, 2]).validate()


def test_split_ranges_follow_megatron():
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    from nemo_reason.data.loader import split_ranges

    for split, n in (("98,1,1", 20), ("80,10,10", 20), ("18,1,1", 20), ("100,0,0", 7), ("969,30,1", 1234)):
        matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
        want = [None if m is None else (int(round(m[0] * n)), int(round(m[1] * n))) for m in matrix]
        assert split_ranges([float(x) for x in split.split(",")], n) == want, split


def test_an_empty_split_is_refused_with_the_counts(tmp_path):
    from nemo_reason.data.loader import check_splits
    from nemo_reason.data.prepare import PrepareConfig, prepare

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " + "words " * 20}) + "\n" for i in range(20)))
    prefix = prepare(PrepareConfig(inputs=[str(src)], output_prefix=str(tmp_path / "small"), tokenizer="byte", workers=1)).prefixes[0]
    with pytest.raises(ConfigError) as e:
        check_splits([prefix], [98, 1, 1], "98,1,1")
    msg = str(e.value)
    assert "data.split=98,1,1 leaves the valid and test split" in msg and "(20 documents)" in msg
    assert "valid 0 documents / 0 tokens" in msg and "data.split=[18,1,1]" in msg
    check_splits([prefix], [18, 1, 1], "18,1,1")  # one document each: Megatron can fill it
