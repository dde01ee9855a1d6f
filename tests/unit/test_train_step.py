"""The one-step core's metric reduction: every reported ``[sum, count]`` is an exact global mean."""

import pytest
import torch

from nemo_reason.training.step import reduce_metrics


def test_sums_and_counts_add_before_dividing():
    reports = [{"lm loss": torch.tensor([2.0, 4.0]), "kl": torch.tensor([1.0, 1.0])},
               {"lm loss": torch.tensor([6.0, 4.0])},
               {"kl": 3.0}]  # a scalar counts as [value, 1]
    got = reduce_metrics(reports)
    assert got == {"kl": pytest.approx(2.0), "lm loss": pytest.approx(1.0)}  # not the mean of means (0.5 + 1.5) / 2


def test_no_reports_no_metrics_and_bad_shapes_refused():
    assert reduce_metrics([]) == {}
    with pytest.raises(ValueError, match="sum, count"):
        reduce_metrics([{"x": torch.zeros(3)}])


def _rank_reports(rank):
    from nemo_reason.backend import dist as bdist

    bdist.init_process_group()
    # Rank 0 plays a first pipeline stage (no reports); rank 1 the last, with two metrics.
    reports = [] if rank == 0 else [{"lm loss": torch.tensor([3.0, 2.0]), "acc": torch.tensor([1.0, 4.0])}]
    if rank == 1:
        reports.append({"lm loss": torch.tensor([1.0, 2.0])})
    out = reduce_metrics(reports)
    bdist.destroy_process_group()
    return out


def test_ranks_agree_on_metric_names_and_values():
    from tests.spawn import spawn

    results = spawn(_rank_reports, 2)
    for r in results:
        assert r.value == {"acc": pytest.approx(0.25), "lm loss": pytest.approx(1.0)}
