"""Minitron pruning of a MoE model (tiny_moe: 4 routed experts top-2 and a shared expert in every
layer) on the CPU: experts 4 -> 2 (the router's rows follow the kept experts), the routed experts'
and the shared expert's neurons, embedding channels; the weights shrink to the pruned config's
shapes, the count equals the planner's, the rebuilt model computes the same logits; the importance
report names the kept experts per layer, which are the most important ones (modelopt's mean output
L2 norm over routed tokens) and those whose router rows survived; and a dense
``ffn_hidden_size`` target on a model whose every MLP is MoE is refused, naming the MoE fields."""

import pytest
import torch

from nemo_reason.compress.targets import layout_errors
from nemo_reason.config.store import compose
from tests.unit.megatron_env import megatron_single  # noqa: F401
from tests.unit.test_prune import _prune


def test_prune_moe_experts_and_widths(megatron_single, tmp_path):  # noqa: F811
    export = {"hidden_size": 48, "num_moe_experts": 2, "moe_ffn_hidden_size": 96,
              "moe_shared_expert_intermediate_size": 32}
    cfg, new_m, imp, before, after, original, model = _prune("tiny_moe", export, tmp_path)
    assert (new_m.num_moe_experts, new_m.moe_router_topk, new_m.moe_ffn_hidden_size,
            new_m.moe_shared_expert_intermediate_size, new_m.hidden_size) == (2, 2, 96, 32, 48)
    assert before == 542_272 and after == 203_568, (before, after)  # (vocabulary padded to 384)
    mlp = model.decoder.layers[0].mlp
    assert mlp.router.weight.shape == (2, 48)
    # The kept experts' router rows are rows of the original router (restricted to the kept channels).
    old = original["decoder.layers.0.mlp.router.weight"]
    new = mlp.router.weight.detach()
    hits = [any(torch.allclose(old[e].index_select(0, torch.tensor(_kept_channels(original, model))), r)
                for e in range(4)) for r in new]
    assert all(hits), hits
    _check_expert_report(cfg, export, imp, original, model, tmp_path)


def _check_expert_report(cfg, export, imp, original, model, tmp_path):
    """importance.json's experts per layer: modelopt's importance and routed tokens of each, and the
    kept ones, which are the two most important and the ones whose router rows survived."""
    from nemo_reason.compress import importance

    report = importance.build_report(cfg.model, export, imp, ["T"] * cfg.model.num_layers)
    channels = torch.tensor(_kept_channels(original, model))
    for i, row in enumerate(report["layers"]):
        e = row["moe_experts"]
        assert e["size"] == 4 and e["kept"] == 2 and sum(e["tokens"]) == 2 * 2 * 4 * 64, e  # top-2 of 2 x 4 x 64
        ranked = sorted(range(4), key=lambda j: -e["values"][j])
        assert e["kept_experts"] == sorted(ranked[:2]), e
        assert e["kept_share"] == pytest.approx(sum(e["values"][j] for j in ranked[:2]) / sum(e["values"]))
        old = original[f"decoder.layers.{i}.mlp.router.weight"].index_select(1, channels)
        new = model.decoder.layers[i].mlp.router.weight.detach()
        survived = sorted(j for j in range(4) if any(torch.allclose(old[j], r) for r in new))
        assert survived == e["kept_experts"], (i, survived, e)
        assert row["expert_neurons"]["size"] == 4 * 128 and row["expert_neurons"]["kept"] == 2 * 96
        assert row["shared_expert_neurons"]["kept"] == 32
    assert len({tuple(r["moe_experts"]["kept_experts"]) for r in report["layers"]}) > 1  # not always the same
    table = importance.format_table(report)
    assert "experts 4->2" in table and "shared-expert neurons 64->32" in table, table
    importance.save_plot(report, tmp_path / "importance.png")


def _kept_channels(original, model):
    """Indices of the embedding channels modelopt kept (the pruned embedding's columns in the old one)."""
    old = original["embedding.word_embeddings.weight"]
    new = model.embedding.word_embeddings.weight.detach()
    return [int(torch.nonzero((old.T == col).all(dim=1))[0]) for col in new.T]


def test_dense_ffn_target_on_an_all_moe_model_is_refused():
    m = compose("tiny_moe", validate=False).model
    errors = layout_errors(m, {"ffn_hidden_size": 96})
    assert len(errors) == 1 and "no dense MLP layers" in errors[0] and "moe_ffn_hidden_size" in errors[0], errors
    assert layout_errors(m, {"moe_ffn_hidden_size": 96, "moe_shared_expert_intermediate_size": 32}) == []
    assert "legal values" in layout_errors(m, {"num_moe_experts": 1})[0]  # below moe_router_topk=2


@pytest.mark.parametrize("field", ["moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"])
def test_moe_targets_on_a_dense_model_are_refused(field):
    m = compose("tiny", validate=False).model
    assert "has no" in layout_errors(m, {field: 64})[0]
