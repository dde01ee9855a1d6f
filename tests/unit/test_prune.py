"""Minitron pruning with modelopt on the portable (CPU) modules: the weights really shrink to the
pruned config's shapes, the parameter count equals the planner's, Mamba heads are cut equally in each
group, and a model rebuilt at the pruned config with the pruned weights computes the same logits."""

import dataclasses

import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401

VOCAB = 260  # padded to 384


def _build(recipe, model_cfg=None):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    cfg = compose(recipe, ["model.mamba_chunk_size=16"] if recipe == "tiny_hybrid" else [])
    if model_cfg is not None:
        cfg = dataclasses.replace(cfg, model=model_cfg)
    model = build_model(cfg, VOCAB)[0].eval()
    model.requires_grad_(False)
    return cfg, model


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"tokens": torch.randint(0, 256, (4, 64), generator=g), "position_ids": torch.arange(64).expand(4, 64)}
            for _ in range(2)]


def _prune(recipe, export, tmp_path):
    from nemo_reason.compress.minitron import apply_minitron, copy_weights, max_logit_diff, shape_mismatches
    from nemo_reason.compress.targets import current_sizes, pruned_config
    from nemo_reason.planner.params import param_count

    torch.manual_seed(0)
    cfg, model = _build(recipe)
    before = sum(p.numel() for p in model.parameters())
    assert before == param_count(cfg.model, 384)
    batches = _batches()

    def loop(m):
        for b in batches:
            m(b["tokens"], b["position_ids"], None)

    original = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    imp = apply_minitron(model, export, loop, tmp_path)
    new_m = pruned_config(cfg.model, {**current_sizes(cfg.model), **export}, imp.hybrid_pattern)
    new_m.validate()
    _, rebuilt = _build(recipe, new_m)
    assert shape_mismatches(model, rebuilt) == []
    after = sum(p.numel() for p in model.parameters())
    assert after == sum(p.numel() for p in rebuilt.parameters()) == param_count(new_m, 384)
    copy_weights(model, rebuilt)
    assert max_logit_diff(model, rebuilt, batches) <= 1e-5
    return cfg, new_m, imp, before, after, original, model


def test_prune_dense_by_half(megatron_single, tmp_path):  # noqa: F811
    export = {"hidden_size": 96, "ffn_hidden_size": 256, "num_attention_heads": 2, "num_layers": 3}
    cfg, new_m, imp, before, after, _, model = _prune("tiny", export, tmp_path)
    assert before == 821_504 and after == 296_256
    assert (new_m.hidden_size, new_m.ffn_hidden_size, new_m.num_attention_heads, new_m.num_layers) == (96, 256, 2, 3)
    assert new_m.kv_channels == 32 and new_m.num_query_groups == 2
    assert len(imp.kept_layers) == 3 and set(imp.layer_scores) == {1, 2, 3, 4}
    assert imp.activations["decoder.layers.0.mlp"].shape == (512,)


def test_prune_hybrid_group_aware(megatron_single, tmp_path):  # noqa: F811
    export = {"hidden_size": 96, "ffn_hidden_size": 256, "mamba_num_heads": 4, "mamba_head_dim": 16,
              "num_layers": 5}
    cfg, new_m, imp, before, after, original, model = _prune("tiny_hybrid", export, tmp_path)
    assert after < 0.55 * before
    assert new_m.mamba_num_heads == 4 and new_m.mamba_head_dim == 16 and new_m.num_layers == 5
    assert len(new_m.hybrid_pattern) == 5 and new_m.hybrid_pattern.count("M") == 3
    # Group-aware: of each group's 4 heads (A_log of the first Mamba layer), 2 are kept.
    first = imp.kept_layers[0] - 1
    assert cfg.model.hybrid_pattern[first] == "M"
    old = original[f"decoder.layers.{first}.mixer.A_log"]
    new = model.decoder.layers[0].mixer.A_log.detach()
    idx = [int((old == v).nonzero()[0]) for v in new]
    assert sorted(i // 4 for i in idx) == [0, 0, 1, 1], idx
    # The in-place model runs at its new sizes (the portable mixer's dims follow the hparams).
    assert model.decoder.layers[0].mixer.dims.headdim == 16
