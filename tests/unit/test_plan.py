"""`nemo-reason plan`: published parameter counts, every layout rule by name, Megatron-LM's memory
formulas by hand, MFU. Pure Python: no model is built."""

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nemo_reason.config.store import compose, list_recipes, recipes_dir
from nemo_reason.planner.layout import check_layout, layout_of
from nemo_reason.planner.memory import GIB, activation_memory, model_state_memory
from nemo_reason.planner.params import param_count
from nemo_reason.planner.report import format_report, padded_vocab, plan

# Published sizes (total, active per token or None for dense models).
PUBLISHED = {
    "llama3_8b": (8.03e9, None),         # Llama 3 model card / arXiv:2407.21783
    "llama3_70b": (70.6e9, None),
    "mixtral_8x22b": (141e9, 39e9),      # Mistral AI announcement: 141B total, 39B active
    "qwen2_57b_a14b": (57.4e9, 14.2e9),  # Qwen2 model card (57.4B), the name (A14B)
    "nemotron_h_8b": (8e9, None),        # arXiv:2504.03624
    "nemotron_h_56b": (56e9, None),
    "nemotron_h_8b_acemath": (8e9, None),       # post-training recipes on the 8B
    "nemotron_h_8b_acereason": (8e9, None),
    "nemotron_h_8b_compress": (8e9, None),      # the input of its prune step (the 8B)
    "nemotron_h_56b_minipuzzle": (56e9, None),  # the input of its prune step (the 56B)
    "nemotron4_15b": (15.7e9, None),     # arXiv:2402.16819: 3.2B embedding + 12.5B non-embedding
}


@functools.lru_cache(maxsize=None)
def _base(recipe):
    return compose(recipe, validate=False)


def _cfg(recipe, overrides=()):
    """``compose(recipe, overrides)`` for plain ``group.key=value`` overrides, Hydra run once per recipe."""
    cfg = copy.deepcopy(_base(recipe))
    for o in overrides:
        key, value = o.split("=", 1)
        group, name = key.split(".")
        assert hasattr(getattr(cfg, group), name), key
        setattr(getattr(cfg, group), name, yaml.safe_load(value))
    return cfg


def _within(got, want, tol=0.02):
    return abs(got - want) <= tol * want


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_plan_reproduces_published_parameter_counts(recipe):
    r = plan(_cfg(recipe))
    total, active = PUBLISHED[recipe]
    assert r["valid"], r["errors"]
    assert _within(r["params_total"], total), (r["params_total"], total)
    if active is None:
        assert r["params_active"] == r["params_total"]
    else:
        assert _within(r["params_active"], active), (r["params_active"], active)
        assert r["params_active"] < 0.5 * r["params_total"]


def test_every_published_architecture_has_a_published_count():
    """A recipe naming its model's vocabulary is a published architecture: it needs an entry above."""
    published = {name for name in list_recipes() if _base(name).model.vocab_size is not None}
    assert published == set(PUBLISHED)


def test_moe_counts_match_a_hand_count():
    """Qwen2-57B-A14B layer by layer: attention, router, 64 experts (8 active), shared experts + gate."""
    m = _cfg("qwen2_57b_a14b").model
    h, n, g, d, V, E, k, fe, fs, L = 3584, 28, 4, 128, 151936, 64, 8, 2560, 20480, 28
    attention = h + h * (n + 2 * g) * d + n * d * h + (n + 2 * g) * d  # Qwen2's q/k/v biases
    moe_common = h + E * h + 3 * h * fs + h  # norm, router, shared experts, shared gate
    expert = 3 * h * fe
    emb = 2 * V * h + h
    assert param_count(m, V) == L * (attention + moe_common + E * expert) + emb
    assert param_count(m, V, active=True) == L * (attention + moe_common + k * expert) + emb


@pytest.mark.parametrize("recipe,overrides,gpus,rule,words", [
    ("llama3_8b", [], 7, "world_tp_cp_pp", "7 GPUs do not divide"),
    ("llama3_8b", ["parallel.tp=3"], 24, "heads_tp", "32 attention heads"),
    ("llama3_8b", ["parallel.tp=3"], 24, "groups_tp", "8 query groups"),
    ("llama3_8b", ["parallel.tp=3"], 24, "ffn_tp", "14336"),
    ("llama3_70b", ["parallel.pp=3", "parallel.vpp=null"], 48, "layers_pp_vpp", "80 layers"),
    ("llama3_8b", ["parallel.cp=3"], 6, "seq_cp", "2 x context parallel size = 6"),
    ("llama3_70b", ["trainer.seq_length=8188"], None, "seq_sp", "4094 tokens"),
    ("llama3_8b", ["trainer.seq_length=16384"], None, "seq_max_pos", "max_position_embeddings=8192"),
    ("llama3_8b", ["trainer.global_batch_size=130"], None, "batch_dp", "global batch 130"),
    ("llama3_70b", ["trainer.global_batch_size=132"], None, "vpp_microbatches", "(66)"),
    ("llama3_8b", ["parallel.vpp=2"], None, "parallel", "parallel.vpp"),
    ("llama3_8b", ["parallel.ep=2"], None, "ep_without_moe", "parallel.ep=2"),
    ("mixtral_8x22b", ["parallel.ep=3"], None, "experts_ep", "8 experts"),
    ("mixtral_8x22b", ["parallel.ep=4"], 48, "world_expert", "1 x 4 x 8 = 32"),
    ("mixtral_8x22b", ["parallel.etp=3"], 192, "expert_ffn_etp", "16384"),
    ("mixtral_8x22b", ["parallel.sequence_parallel=false"], None, "moe_tp_sp", "sequence_parallel=true"),
    ("mixtral_8x22b", ["model.add_bias_linear=true", "parallel.etp=2"], 256, "moe_bias_etp", "parallel.etp=1"),
    ("nemotron_h_8b", ["parallel.tp=16"], 16, "mamba_groups_tp", "8 Mamba groups"),
    ("nemotron_h_8b", ["parallel.pp=2", "parallel.vpp=2"], 16, "hybrid_vpp", "interleaved"),
    ("llama3_8b", ["trainer.precision=fp8", "trainer.fp8_first_last_layers_bf16=true"], None, "fp8", "delayed"),
    ("llama3_8b", ["run.stop_after=nope"], None, "config", "run.stop_after"),
])
def test_each_broken_rule_is_named(recipe, overrides, gpus, rule, words):
    cfg = _cfg(recipe, overrides)
    found = {v.rule: v.message for v in check_layout(cfg, gpus)}
    assert rule in found, found
    assert words in found[rule], found[rule]


def test_all_violations_are_listed_at_once():
    cfg = _cfg("llama3_8b", ["parallel.tp=3", "trainer.global_batch_size=130"])
    rules = {v.rule for v in check_layout(cfg, 7)}
    assert {"world_tp_cp_pp", "heads_tp", "groups_tp", "ffn_tp"} <= rules


def test_gpus_overrides_the_launcher_world_size():
    cfg = _cfg("mixtral_8x22b")
    assert layout_of(cfg).world == 128 and layout_of(cfg, 256).dp == 16
    assert plan(cfg, world=256)["valid"] and plan(cfg, world=256)["layout"]["edp"] == 4


def test_json_report_keys():
    r = json.loads(json.dumps(plan(_cfg("mixtral_8x22b"), step_time=10.0)))
    assert {"valid", "errors", "params_total", "params_active", "flops_per_token", "memory_gb", "mfu"} <= set(r)
    assert {"weights", "gradients", "optimizer", "optimizer_replicated", "optimizer_distributed", "activations",
            "activations_by_recompute", "fp8_savings", "total"} <= set(r["memory_gb"])
    assert set(r["memory_gb"]["activations_by_recompute"]) == {"none", "selective", "full"}
    assert "MFU" in format_report(r) and "experts: ETP x EP x PP x EDP" in format_report(r)


def _megatron_activations(s, b, h, f, L, V, tp, pp, vpp=None, micro=None):
    """Megatron-LM ``compute_activation_memory`` (sequence parallel, selective recompute), by hand."""
    act = s * b * h * (18 + 4 * f / h) * L + 8 * s * b * pp + s * b * h * pp
    if vpp:
        act *= 1 + (pp - 1) / (pp * vpp)
    elif pp > 1:
        act *= min(1, micro / pp)
    if pp == 1:
        act += s * b * h * 4 * (1 + V / h)
    return act / tp


@pytest.mark.parametrize("overrides,gpus,pp,vpp,micro", [
    ([], 8, 1, None, None),
    (["parallel.pp=4"], 32, 4, None, 1152),
    (["parallel.pp=4", "parallel.vpp=2"], 32, 4, 2, None),
])
def test_activations_match_megatron_for_a_classic_gpt(overrides, gpus, pp, vpp, micro):
    """MHA, f = 4h, non-gated, TP 8 + SP: Korthikanti's 34 s b h per layer, as Megatron-LM computes it."""
    cfg = _cfg("nemotron4_15b", ["model.num_query_groups=null", *overrides])
    lay = layout_of(cfg, gpus)
    s, b, h, f, L, V, n = 4096, 1, 6144, 24576, 32, 256000, 48
    want = _megatron_activations(s, b, h, f, L, V, 8, pp, vpp, micro)
    assert activation_memory(cfg, lay, V, "selective") == pytest.approx(want, rel=1e-12)
    scores = 5 * n * s * s * b / 8 * L * ((1 + (pp - 1) / (pp * vpp)) if vpp else 1)
    assert activation_memory(cfg, lay, V, "none") == pytest.approx(want + scores, rel=1e-12)
    if pp == 1:  # full recompute: each layer's input, one layer rebuilt, embedding, fp32 logits
        sbh = s * b * h
        full = sbh * (L * 2 / 8 + 34 / 8 + (8 / h + 1) / 8 + 4 * (1 / 8 + V / h / 8))
        assert activation_memory(cfg, lay, V, "full") == pytest.approx(full, rel=1e-12)
    assert activation_memory(cfg, lay, V, "full") < 0.3 * want


def test_weights_and_optimizer_bytes_by_hand():
    """Llama 3 8B on TP1/CP2/DP4: 2 + 4 + 12 bytes per parameter; the distributed optimizer shards
    the 12 over DP x CP = 8, and switching it on changes only the optimizer term."""
    cfg = _cfg("llama3_8b")
    lay = layout_of(cfg)
    V = padded_vocab(128256, 128, 1)
    n = param_count(cfg.model, V)
    st = model_state_memory(cfg, lay, V)
    assert st["weights"] == 2 * n and st["gradients"] == 4 * n
    assert st["optimizer_replicated"] == 12 * n
    assert st["optimizer_distributed"] == pytest.approx(12 * n / 8)
    on = plan(cfg)["memory_gb"]
    cfg.optim.distributed = False
    off = plan(cfg)["memory_gb"]
    assert off["total"] - on["total"] == pytest.approx((12 * n - 12 * n / 8) / GIB)


def test_expert_states_shard_over_expert_parallel_groups():
    cfg = _cfg("mixtral_8x22b")  # experts: ETP1 x EP8 x PP8, EDP 2; dense: TP2 x PP8, DP 8
    r = plan(cfg)["memory_gb"]
    dense, expert = r["params_per_gpu"]["dense"], r["params_per_gpu"]["expert"]
    from nemo_reason.planner.params import expert_param_count

    assert expert == expert_param_count(cfg.model) / 64
    assert r["optimizer_distributed"] * GIB == pytest.approx(12 * (dense / 8 + expert / 2))


def test_fp8_saves_activation_and_weight_memory():
    r = plan(_cfg("llama3_8b"))["memory_gb"]
    assert r["fp8_savings"]["activations"] > 0 and r["fp8_savings"]["weights_with_fp8_param_gather"] > 0
    cfg = _cfg("llama3_8b", ["trainer.precision=fp8", "trainer.fp8_param_gather=true"])
    fp8 = plan(cfg)["memory_gb"]
    assert fp8["weights"] == pytest.approx(r["weights"] / 2)
    assert fp8["activations"] == pytest.approx(r["activations"] - r["fp8_savings"]["activations"])


def test_mfu_from_step_time():
    cfg = _cfg("llama3_8b")
    r = plan(cfg, step_time=2.0, peak_tflops=1000.0)
    assert r["mfu"]["mfu"] == pytest.approx(r["flops_per_step"] / (2.0 * 8 * 1000e12))
    assert plan(cfg, step_time=2.0)["mfu"]["peak_tflops"] == 989.4


def test_vocabulary_padding_is_the_tokenizers():
    # data.tokenizer.padded_vocab_size: a multiple of lcm(make_vocab_size_divisible_by, tp)
    assert padded_vocab(128256, 128, 1) == 128256 and padded_vocab(128256, 128, 4) == 128256
    assert padded_vocab(32000, 128, 3) == 32256
    assert padded_vocab(151646, 128, 2) == 151680 and padded_vocab(258, 128, 3) % 3 == 0


def test_cli_exit_codes(capsys):
    from nemo_reason.cli import main

    assert main(["plan", "llama3_8b", "parallel.tp=3", "--gpus", "24"]) == 1
    assert "32 attention heads" in capsys.readouterr().out
    assert main(["plan", "llama3_8b", "parallel.tpp=2"]) == 2
    assert main(["plan", "--json", "qwen2_57b_a14b", "--step-time", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["mfu"]["step_time_s"] == 3


def test_cli_plan_json_in_a_fresh_process():
    """As a user types it; ``-X importtime`` proves the planner answers without importing torch or Megatron."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "nemo_reason.cli", "plan", "llama3_8b", "--json"],
                         capture_output=True, text=True, cwd=Path(recipes_dir()).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert not {"torch", "megatron"} & imported
    r = json.loads(out.stdout)
    assert r["valid"] and _within(r["params_total"], 8.03e9)
