"""`nemo-reason plan` of a pipeline's prune steps: the shape each prunes to and its parameters,
checked against the published compressed Nemotron-H models and the step's own budget search.
Pure Python: no model is built."""

import json
import subprocess
import sys

from nemo_reason.compress.targets import pruned_config, sizes_for_budget
from nemo_reason.config.store import compose
from nemo_reason.planner.params import param_count
from nemo_reason.planner.report import format_report, plan

# Nemotron-H-47B-Base's layer pattern (Megatron-Bridge NemotronHModelProvider47B): 45 Mamba-2, 48 MLP,
# 5 attention layers.
PATTERN_47B = "M-M-M-M-M-M-M-M-M*-M-M-M-M-M-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-M-M---MM---M-M*-M-M-M-M-M-"


def _prune(recipe, overrides=()):
    r = plan(compose(recipe, list(overrides), validate=False))
    assert len(r["prune"]) == 1, r["prune"]
    return r, r["prune"][0]


def test_8b_to_4b_reaches_the_published_4b_shape():
    r, p = _prune("nemotron_h_8b_compress")
    assert p["errors"] == []
    assert {k: p["sizes"][k] for k in ("hidden_size", "ffn_hidden_size", "mamba_num_heads", "num_layers")} == \
        {"hidden_size": 3072, "ffn_hidden_size": 12288, "mamba_num_heads": 112, "num_layers": 52}
    # The published 4B (Megatron-Bridge NemotronHModelProvider4B) counted directly: the same number.
    four_b = compose("nemotron_h_8b", ["model.hidden_size=3072", "model.ffn_hidden_size=12288",
                                       "model.mamba_num_heads=112"], validate=False)
    assert p["params_after"] == plan(four_b)["params_total"]
    assert p["params_before"] == r["params_total"]
    assert 4.4e9 < p["params_after"] < 4.6e9 and 8.0e9 < p["params_before"] < 8.2e9


def test_56b_minipuzzle_range_holds_the_published_47b():
    _, p = _prune("nemotron_h_56b_minipuzzle")
    assert p["errors"] == [] and p["params_after"] is None  # a hybrid's depth: a range
    published = compose("nemotron_h_56b", ["model.num_layers=98", "model.ffn_hidden_size=30720",
                                           f"model.hybrid_pattern={PATTERN_47B}"], validate=False)
    n47 = plan(published)["params_total"]
    assert p["params_after_min"] < n47 < p["params_after_max"], (p["params_after_min"], n47, p["params_after_max"])
    assert 46e9 < n47 < 48e9
    # The bounds by hand: 20 of the largest layers (MLP, 0.50 B each at FFN 30720) dropped, or the 10
    # attention and 10 of the next smallest (Mamba-2) dropped.
    per = p["layer_params"]
    assert p["params_after_max"] - p["params_after_min"] == 20 * per["-"] - (10 * per["*"] + 10 * per["M"])
    assert p["hybrid_pattern_min"].count("-") == 34 and p["hybrid_pattern_max"].count("*") == 0


def test_budget_target_resolves_as_the_step_does():
    cfg = compose("tiny", ["model.vocab_size=1000", "pipeline=[{type: pretrain},{type: prune, params: 4e5}]"],
                  validate=False)
    r = plan(cfg)
    p = r["prune"][0]
    want = sizes_for_budget(cfg.model, r["padded_vocab_size"], 4e5, fixed={})
    assert {k: p["sizes"][k] for k in want} == want
    assert p["params_after"] == param_count(pruned_config(cfg.model, want), r["padded_vocab_size"]) <= 4e5
    assert "prune step 'prune'" in format_report(r) and "from budget" in format_report(r)


def test_a_budget_no_shape_reaches_is_reported():
    # (targets the layout cannot hold exit 2 at composition already, naming the legal values)
    r, p = _prune("tiny", ["model.vocab_size=1000", "pipeline=[{type: pretrain},{type: prune, params: 1e3}]"])
    assert p["errors"] and "the smallest model" in p["errors"][0]
    assert "cannot prune" in format_report(r)


def test_plan_of_a_prune_pipeline_stays_torch_free():
    code = ("import sys, json; from nemo_reason.cli import main; "
            "sys.argv=['nemo-reason','plan','nemotron_h_8b_compress','--json']; rc = main(); "
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("NOTORCH"), out.stdout[-500:] + out.stderr[-2000:]
    report = json.loads(out.stdout.strip().rsplit("\n", 1)[0])
    assert report["prune"][0]["params_after"] < report["params_total"]
