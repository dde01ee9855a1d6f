"""The grpo step's parts without a model: dynamic sampling with refill (which groups a batch keeps, how
many rounds it refills, zero-weight filler when still short), the vocab-parallel entropy against the
one-rank entropy over real gloo processes, and the composition rule of several updates per rollout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from nemo_reason.rl.groups import collect_groups, has_signal
from tests.spawn import spawn


@dataclass
class G:
    name: str
    rewards: torch.Tensor


def _g(name, *r):
    return G(name, torch.tensor(r, dtype=torch.float32))


def test_refill_replaces_dropped_groups_until_enough():
    first = [_g("a", 0, 1, 0, 1), _g("b", 1, 1, 1, 1), _g("c", 0, 0, 0, 0)]
    rounds = {1: [_g("d", 0, 0, 0, 0), _g("e", 1, 0, 0, 0)], 2: [_g("f", 0, 1, 1, 1)]}
    calls = []

    def refill(take, use, round_):
        calls.append((take, use, round_))
        return rounds[round_][:use]

    groups, weights, stats = collect_groups(first, refill, 3, max_refills=5)
    assert [g.name for g in groups] == ["a", "e", "f"] and weights == [1.0, 1.0, 1.0]
    assert calls == [(2, 2, 1), (1, 1, 2)]
    assert (stats.refills, stats.generated, stats.dropped, stats.short) == (2, 6, 3, 0)


def test_still_short_after_max_refills_fills_with_zero_weight():
    first = [_g("a", 0, 1), _g("b", 1, 1), _g("c", 0, 0)]
    groups, weights, stats = collect_groups(first, lambda take, use, r: [_g(f"r{r}", 1, 1)] * use, 3, max_refills=2)
    assert [g.name for g in groups] == ["a", "r2", "r2"] and weights == [1.0, 0.0, 0.0]
    assert (stats.refills, stats.generated, stats.dropped, stats.short) == (2, 7, 6, 2)


def test_no_refill_without_dynamic_sampling_or_when_none_is_short():
    first = [_g("a", 1, 1), _g("b", 0, 1)]
    never = lambda *a: pytest.fail("refill called")  # noqa: E731
    groups, weights, stats = collect_groups(first, never, 2, dynamic=False)
    assert [g.name for g in groups] == ["a", "b"] and weights == [1.0, 1.0] and stats.refills == 0
    groups, weights, stats = collect_groups([_g("a", 0, 1)], never, 1)
    assert weights == [1.0] and stats.refills == 0 and not has_signal(torch.tensor([2.0, 2.0]))


def test_an_agreed_need_takes_prompts_on_a_rank_that_needs_none():
    # Another data-parallel rank is short by 2: this one takes 2 prompts (its stream stays in step)
    # and generates none.
    calls = []
    groups, weights, stats = collect_groups([_g("a", 0, 1)], lambda t, u, r: calls.append((t, u)) or [], 1,
                                            max_refills=1, agree=lambda need: 2)
    assert calls == [(2, 0)] and weights == [1.0] and stats.refills == 1


def _entropy_ranks(rank, logits):
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist
    from nemo_reason.rl.losses import entropy_from_logits

    bdist.init_process_group()
    try:
        shard = logits.chunk(2, dim=-1)[dist.get_rank()].clone()
        with torch.no_grad():
            return entropy_from_logits(shard, dist.group.WORLD)
    finally:
        bdist.destroy_process_group()


@pytest.mark.slow  # two more processes; the default suite checks TP=2 entropy in tests/distributed/test_grpo_parity.py
def test_vocab_parallel_entropy_equals_the_whole_vocabulary():
    from nemo_reason.rl.losses import entropy_from_logits

    logits = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    ref = entropy_from_logits(logits)
    for res in spawn(_entropy_ranks, 2, args=(logits,), timeout=120):
        assert res.returncode == 0, res.output[-2000:]
        torch.testing.assert_close(res.value, ref, atol=1e-10, rtol=0)


def test_several_updates_per_rollout_must_fill_the_rollout():
    from nemo_reason.config.errors import ConfigError
    from nemo_reason.config.store import compose
    from nemo_reason.stages.grpo import GRPOConfig

    cfg = compose("tiny", ["trainer.global_batch_size=4", "trainer.micro_batch_size=4"])
    GRPOConfig(type="grpo", prompts_per_step=2, group_size=4, updates_per_batch=2).check(cfg)
    with pytest.raises(ConfigError, match=r"2 x 4: set overrides: \{trainer.global_batch_size: 6\}"):
        GRPOConfig(type="grpo", prompts_per_step=3, group_size=4, updates_per_batch=2).check(cfg)
    with pytest.raises(ConfigError, match="kl_coef"):
        GRPOConfig(type="grpo", kl_coef=-1).validate()
    with pytest.raises(ConfigError, match="KL estimator"):
        GRPOConfig(type="grpo", kl_coef=0.1, kl_estimator="k9").validate()


def test_overlong_filter_masks_a_truncated_response_out_of_the_loss():
    from nemo_reason.rollout.sampler import Sample
    from nemo_reason.stages.grpo import _sequence

    done = Sample(0, [7, 8], [-1.0, -2.0], "ab", "eos")
    cut = Sample(0, [7, 8, 9], [-1.0, -2.0, -3.0], "abc", "length")
    assert _sequence([1, 2, 3], done, 0.5, 8, True)["loss_mask"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    kept = _sequence([1, 2, 3], cut, 0.5, 8, False)
    assert kept["loss_mask"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert kept["old_logprobs"].tolist() == [0, 0, -1, -2, -3, 0, 0, 0]
    assert kept["labels"].tolist()[:5] == [2, 3, 7, 8, 9]
    assert _sequence([1, 2, 3], cut, 0.5, 8, True)["loss_mask"].sum() == 0
