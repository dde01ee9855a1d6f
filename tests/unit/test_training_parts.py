"""Pieces of the training loop against their definitions: LR schedules (Megatron's scheduler),
the data sampler's resume arithmetic, FLOPs, vocabulary padding, checkpoint discovery."""

import json
import math

import pytest

from nemo_reason.config.store import compose
from nemo_reason.data.loader import PretrainingSampler
from nemo_reason.data.tokenizer import ByteTokenizer, padded_vocab_size
from nemo_reason.planner.flops import gpt_flops_per_step


class _FakeOpt:
    """Stands in for a Megatron optimizer: the scheduler only reads/writes param_groups."""

    def __init__(self):
        self.param_groups = [{"lr": 0.0, "weight_decay": 0.0}]


def _lrs(overrides, steps):
    from nemo_reason.training.optimizer import build_scheduler

    cfg = compose("tiny", overrides)
    opt = _FakeOpt()
    sched = build_scheduler(cfg, opt)
    out = []
    for _ in range(steps):
        sched.step(1)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_schedule_warms_up_then_decays_to_min():
    lrs = _lrs(["trainer.max_steps=100", "optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr=0.1"], 100)
    assert lrs[4] == pytest.approx(0.5)  # step 5 of 10 warmup steps
    assert lrs[9] == pytest.approx(1.0)
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90))  # step 55: 45 of 90 decay steps
    assert lrs[54] == pytest.approx(mid)
    assert lrs[-1] == pytest.approx(0.1)


def test_wsd_schedule_is_flat_then_decays():
    lrs = _lrs(["trainer.max_steps=100", "optim.schedule=wsd", "optim.warmup_steps=10", "optim.lr=1.0",
                "optim.min_lr=0.0", "optim.wsd_decay_steps=20"], 100)
    assert all(x == pytest.approx(1.0) for x in lrs[10:80])
    assert lrs[89] == pytest.approx(0.5)  # halfway through the linear decay
    assert lrs[-1] == pytest.approx(0.0)


def test_sampler_resume_continues_the_same_sequence():
    full = [b for r in range(2) for b in PretrainingSampler(64, 0, 4, r, 2)]
    assert sorted(i for b in full for i in b) == list(range(64))  # every sample once
    first = list(PretrainingSampler(64, 0, 4, 1, 2))
    resumed = list(PretrainingSampler(64, 24, 4, 1, 2))  # 24 samples = 3 micro-batch rounds
    assert resumed == first[3:]


def test_flops_match_a_hand_count():
    b, s, L, h, f, n, g, V = 2, 16, 3, 32, 128, 4, 2, 256
    d = h // n
    per_token_fwd_matmul_macs = L * (h * (n * d) + 2 * h * (g * d) + (n * d) * h  # q, k, v, out
                                     + s / 2 * n * d * 2  # causal scores and context (half)
                                     + 2 * h * f) + h * V  # MLP, logits
    expected = 3 * 2 * per_token_fwd_matmul_macs * b * s
    got = gpt_flops_per_step(batch=b, seq=s, num_layers=L, hidden=h, ffn=f, heads=n, groups=g,
                             kv_channels=d, vocab=V, gated=False)
    assert got == pytest.approx(expected)


def test_vocab_padding_is_the_same_for_every_tp_that_divides_128():
    assert {padded_vocab_size(ByteTokenizer().vocab_size, 128, tp) for tp in (1, 2, 4, 8)} == {384}
    assert padded_vocab_size(258, 128, 3) % 3 == 0


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "Answer: 42 — ok"
    assert tok.detokenize(tok.tokenize(text) + [tok.eod]) == text


def test_discovery_ignores_partial_and_unmarked_checkpoints(tmp_path):
    from nemo_reason.checkpoint.io import MARKER, find_latest, iter_dir_name

    for step, marked in ((5, True), (10, True), (15, False)):
        d = tmp_path / iter_dir_name(step)
        d.mkdir()
        if marked:
            (d / MARKER).write_text(json.dumps({"step": step}))
    (tmp_path / f".tmp_{iter_dir_name(20)}").mkdir()
    (tmp_path / "latest").write_text("20")  # a stale hint is not trusted
    assert find_latest(tmp_path).name == iter_dir_name(10)
    assert find_latest(tmp_path / "missing") is None
