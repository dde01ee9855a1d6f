"""Blended, phased training data built by Megatron-Core from real indexed datasets (the generated
corpus at two seeds) in a temporary cache: deterministic per seed, blend proportions as weighted,
the switch at the boundary, and the sample order after a resume equal to an uninterrupted run's."""

import os
from collections import Counter

import pytest
import torch

from nemo_reason.config.store import compose
from nemo_reason.data.loader import build_data, micro_batches

GBS, MBS = 8, 4
STEPS = 20  # phase "broad" steps 1-12 (0.6 x 20), "hq" steps 13-20
BASE = ["trainer.max_steps=20", f"trainer.global_batch_size={GBS}", f"trainer.micro_batch_size={MBS}",
        "trainer.seq_length=32", "trainer.eval_every=5", "trainer.eval_iters=1", "data.num_documents=300",
        "data.phases=[{name:broad,share:0.6,blend:[{weight:0.75,path:synthetic},{weight:0.25,path:'synthetic:7'}]},"
        "{name:hq,share:0.4,blend:[{weight:0.2,path:synthetic},{weight:0.8,path:'synthetic:7'}]}]"]


@pytest.fixture(scope="module")
def gloo_world_of_one():
    """Megatron's blended dataset reads the rank when it writes its cache: a real 1-rank group."""
    import torch.distributed as dist

    from nemo_reason.backend import dist as bdist
    from nemo_reason.launch.ports import free_port

    created = not dist.is_initialized()
    saved = {}
    if created:
        saved = {k: os.environ.pop(k, None) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        os.environ["MASTER_PORT"] = str(free_port())
        bdist.init_process_group()
    yield
    if created:
        dist.destroy_process_group()
    for k, v in saved.items():  # leave the environment as found (later CLI runs inherit it)
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _data(tmp_path, *extra, cache="cache"):
    cfg = compose("tiny", BASE + [f"data.cache_dir={tmp_path / cache}", *extra])
    return cfg, build_data(cfg, 1)


def _tokens(dataset, indices):
    return torch.stack([torch.as_tensor(dataset[i]["tokens"]) for i in indices])


def _stream(data, consumed, dp_rank=0, dp=1):
    return [b["tokens"] for b in micro_batches(data.train, consumed, MBS, dp_rank, dp)]


def test_same_seed_same_samples_other_seed_other_samples(tmp_path, gloo_world_of_one):
    # Two separate caches: the second build recomputes every index instead of reading the first's.
    _, a = _data(tmp_path, cache="a")
    _, b = _data(tmp_path, cache="b")
    _, c = _data(tmp_path, "run.seed=99", cache="a")
    idx = range(len(a.train))
    assert len(a.train) == STEPS * GBS
    assert torch.equal(_tokens(a.train, idx), _tokens(b.train, idx))
    assert not torch.equal(_tokens(a.train, idx), _tokens(c.train, idx))
    # The cache holds Megatron's index files (Megatron-LM's --data-cache-path).
    assert list((tmp_path / "a" / "index_cache").glob("*-BlendedDataset-train-dataset_index.npy"))


def test_blend_proportions_follow_the_weights(tmp_path, gloo_world_of_one):
    _, data = _data(tmp_path, "trainer.max_steps=100")
    n_broad = 60 * GBS
    for ds, n, weights in ((data.train_datasets[0], n_broad, (0.75, 0.25)),
                           (data.train_datasets[1], 40 * GBS, (0.2, 0.8))):
        counts = Counter(int(ds[i]["dataset_id"]) for i in range(n))
        for src, w in enumerate(weights):
            assert abs(counts[src] / n - w) < 0.01, (counts, weights)
    # ... and the run reads exactly those samples, in that order, phase after phase.
    first_hq = data.train_datasets[1]
    assert torch.equal(_tokens(data.train, range(n_broad, n_broad + GBS)), _tokens(first_hq, range(GBS)))


def test_phase_switches_at_the_boundary_step(tmp_path, gloo_world_of_one):
    _, data = _data(tmp_path)
    assert [(p.name, p.start_step, p.end_step) for p in data.phases] == [("broad", 0, 12), ("hq", 12, 20)]
    assert [data.phase_at(s).name for s in range(STEPS)] == ["broad"] * 12 + ["hq"] * 8
    assert data.train.locate(12 * GBS - 1) == (0, 12 * GBS - 1)
    assert data.train.locate(12 * GBS) == (1, 0)
    assert data.phase_switch(12).startswith("[nemo-reason] data phase 1 (broad) -> 2 (hq) at step 12 (tokens 3,072)")
    assert data.phase_switch(11) is None and data.phase_switch(13) is None
    # Evaluations after steps 5, 10 read broad's validation documents; after 15, 20 hq's.
    assert len(data.valid) == 4 * GBS
    assert data.valid.locate(2 * GBS - 1)[0] == 0 and data.valid.locate(2 * GBS)[0] == 1
    # Both phases draw on `synthetic`; phase 2 (seeded run.seed + 1) does not replay phase 1's order.
    first = [torch.as_tensor(d.datasets[0][0]["tokens"]) for d in data.train_datasets]
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("resume_step", [12, 15])  # exactly at the boundary; in the middle of phase 2
def test_resumed_sample_order_equals_uninterrupted(tmp_path, gloo_world_of_one, resume_step):
    _, full = _data(tmp_path)
    uninterrupted = _stream(full, 0)
    assert len(uninterrupted) == STEPS * GBS // MBS
    # A restarted process builds its data afresh (from the cached indices) and resumes from the
    # checkpoint's consumed-samples count alone.
    _, again = _data(tmp_path)
    resumed = _stream(again, resume_step * GBS)
    per_step = GBS // MBS
    assert len(resumed) == (STEPS - resume_step) * per_step
    for got, ref in zip(resumed, uninterrupted[resume_step * per_step:]):
        assert torch.equal(got, ref)


def test_data_parallel_ranks_read_disjoint_slices_of_the_same_order(tmp_path, gloo_world_of_one):
    _, data = _data(tmp_path)
    single = torch.cat(_stream(data, 0))
    r0, r1 = _stream(data, 0, 0, 2), _stream(data, 0, 1, 2)
    # Micro-batch k of rank r holds samples [k*MBS*2 + r*MBS, +MBS): interleave to get the 1-rank order.
    merged = torch.cat([t for pair in zip(r0, r1) for t in pair])
    assert torch.equal(merged, single)


def test_fixed_validation_blend(tmp_path, gloo_world_of_one):
    _, data = _data(tmp_path, "data.valid_blend=[{weight:1,path:'synthetic:99'}]")
    assert len(data.valid) == (STEPS // 5 + 1) * GBS and len(data.valid.segments) == 1


def test_bundled_sources_blend(tmp_path, gloo_world_of_one):
    """Named bundled corpora (small sizes) are built into the cache and blended like any prefix."""
    _, data = _data(tmp_path, "data.phases=[]",
                    "data.blend=[{weight:3,path:'bundled:math:300'},{weight:1,path:'bundled:mcq:300'}]")
    assert not data.phased and [p.name for p in data.phases] == ["main"]
    assert [round(w, 2) for _, w in data.blends[0]] == [0.75, 0.25]
    assert all("/sources/" in prefix for prefix, _ in data.blends[0])
    ids = Counter(int(data.train_datasets[0][i]["dataset_id"]) for i in range(len(data.train)))
    assert abs(ids[0] / len(data.train) - 0.75) < 0.01


def test_index_build_waits_for_another_run_building_the_same_cache(tmp_path, gloo_world_of_one):
    """Megatron writes its index cache in place; a second run sharing the cache must not read a
    half-written index (EOFError seen with two runs at once): rank 0 builds under the cache's lock."""
    import fcntl
    import threading
    import time

    _data(tmp_path)  # the sources and one index, so only the seed-2 index remains to build
    index_dir = tmp_path / "cache" / "index_cache"
    before = set(index_dir.iterdir())
    result = {}
    with open(index_dir / ".build.lock", "w") as held:  # "another run" building right now
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: result.update(data=_data(tmp_path, "run.seed=2")[1]))
        worker.start()
        time.sleep(2.0)
        assert worker.is_alive() and set(index_dir.iterdir()) == before, "built while the lock was held"
    worker.join(timeout=120)
    assert not worker.is_alive() and len(result["data"].train) > 0
    assert set(index_dir.iterdir()) > before
