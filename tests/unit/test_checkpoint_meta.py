"""Self-describing, verifiable checkpoints, on real Megatron checkpoints of a tiny GPT (one process):
meta.json and the tokenizer copy read back with no recipe, show-checkpoint, the architecture check
in load(), and resume past a damaged newest checkpoint (set aside, never deleted)."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_reason.config.errors import ConfigError
from tests.unit.megatron_env import megatron_single  # noqa: F401

OVERRIDES = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "trainer.seq_length=32",
             "data.tokenizer=byte"]
REPO = Path(__file__).resolve().parents[2]


def _build(overrides):
    import torch
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model
    from nemo_reason.training.optimizer import build_optimizer, build_scheduler

    cfg = compose("tiny", overrides)
    torch.manual_seed(0)
    chunks = build_model(cfg, 258)
    ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=False)
    model = [DistributedDataParallel(config=c.config, ddp_config=ddp, module=c) for c in chunks]
    optimizer = build_optimizer(cfg, model)
    return cfg, chunks, model, optimizer, build_scheduler(cfg, optimizer)


@pytest.fixture(scope="module")
def saved(megatron_single, tmp_path_factory):  # noqa: F811
    """Checkpoints of steps 1 and 2 (different weights) of a tiny GPT, saved with meta."""
    import torch

    from nemo_reason.backend import dist as bdist
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.checkpoint.meta import build_meta, tokenizer_record
    from nemo_reason.config.store import to_yaml
    from nemo_reason.data.tokenizer import ByteTokenizer

    cfg, chunks, model, optimizer, scheduler = _build(OVERRIDES)
    root = tmp_path_factory.mktemp("run") / "pretrain" / "checkpoints"
    meta = build_meta(cfg.model, tokenizer_record(cfg.data, ByteTokenizer()), step_type="pretrain",
                      fingerprint="fp-123", seq_length=cfg.trainer.seq_length, note="from the test")
    weights = {}
    tokens = torch.randint(0, 258, (2, 17))
    for step in (1, 2):  # one real optimizer step before each save (the optimizer then has state)
        model[0].zero_grad_buffer()
        optimizer.zero_grad()
        model[0](tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean().backward()
        model[0].finish_grad_sync()
        assert optimizer.step()[0]
        scheduler.step(increment=1)
        weights[step] = {k: v.clone() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}
        ckpt.save(root, step, 16 * step, model, optimizer, scheduler, to_yaml(cfg), bdist.get_rng_state(), meta=meta)
    n_params = sum(p.numel() for p in chunks[0].parameters())
    return {"cfg": cfg, "root": root, "chunks": chunks, "model": model, "optimizer": optimizer,
            "scheduler": scheduler, "weights": weights, "params": n_params}


def _copy(saved, tmp_path) -> Path:
    dest = tmp_path / "pretrain" / "checkpoints"
    shutil.copytree(saved["root"], dest)
    return dest


def _truncate_a_shard(ckpt_dir: Path) -> str:
    shard = sorted(ckpt_dir.glob("*.distcp"))[0]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    return shard.name


def test_meta_reads_back_without_a_recipe(saved, capsys):
    from nemo_reason.checkpoint.marker import read_marker, verify
    from nemo_reason.checkpoint.meta import model_config_of, read_meta

    newest = saved["root"] / "iter_0000002"
    info = read_meta(newest)
    assert info.model == saved["cfg"].model  # the whole ModelConfig, field for field
    assert model_config_of(newest) == saved["cfg"].model
    assert (info.step, info.consumed_samples, info.tokens) == (2, 32, 32 * 32)
    assert info.params == saved["params"]  # counted from the checkpoint's own metadata
    assert (info.step_type, info.fingerprint, info.source) == ("pretrain", "fp-123", "meta.json")
    assert info.tokenizer["name"] == "byte" and info.tokenizer["vocab_size"] == 258
    assert info.layout["tp"] == 1 and info.extra["note"] == "from the test"
    files = read_marker(newest)["files"]
    assert "meta.json" in files and "config.yaml" in files and any(f.endswith(".distcp") for f in files)
    assert verify(newest) == (True, [])


def test_hf_tokenizer_is_copied_and_loads_without_the_original(tmp_path):
    from nemo_reason.checkpoint.meta import load_tokenizer, tokenizer_record, write_meta
    from nemo_reason.config.schema import DataConfig
    from nemo_reason.data.bpe import train_bpe
    from nemo_reason.data.tokenizer import build_tokenizer

    texts = ["the answer is 42", "two plus two is four", "checkpoints describe themselves"] * 20
    src = tmp_path / "tok"
    train_bpe(texts, 300, src)
    tok = build_tokenizer("hf", str(src))
    record = tokenizer_record(DataConfig(tokenizer="hf", tokenizer_path=str(src)), tok)
    ckpt = tmp_path / "iter_0000005"
    ckpt.mkdir()
    written = write_meta(ckpt, {"tokenizer": record}, step=5, consumed_samples=0, layout={}, saved_at=0.0)
    assert written["tokenizer"]["file"] == "tokenizer/tokenizer.json"
    assert (ckpt / "tokenizer" / "tokenizer_config.json").is_file()
    shutil.rmtree(src)  # the original is gone
    back = load_tokenizer(ckpt)
    text = "the answer is four"
    assert back.tokenize(text) == tok.tokenize(text)
    assert (back.vocab_size, back.eod, back.pad) == (tok.vocab_size, tok.eod, tok.pad)
    # A step continuing from the checkpoint under a run whose data.tokenizer says otherwise (an imported
    # model under a recipe with the bundled BPE) records, and copies on, the checkpoint's tokenizer.
    carried = tokenizer_record(DataConfig(tokenizer="bundled"), back)
    assert carried["name"] == "hf" and carried["vocab_size"] == 300 and carried["sha256"] == record["sha256"]
    nxt = tmp_path / "iter_0000010"
    nxt.mkdir()
    write_meta(nxt, {"tokenizer": carried}, step=10, consumed_samples=0, layout={}, saved_at=0.0)
    shutil.rmtree(ckpt)  # only the new checkpoint's copy is left
    assert load_tokenizer(nxt).tokenize(text) == tok.tokenize(text)


def _show(args, capsys):
    from nemo_reason.checkpoint.commands import add_checkpoint_commands

    parser = argparse.ArgumentParser()
    add_checkpoint_commands(parser.add_subparsers())
    ns = parser.parse_args(["show-checkpoint", *args])
    rc = ns.fn(ns)
    return rc, capsys.readouterr().out


def test_show_checkpoint_prints_what_it_holds(saved, capsys):
    step_dir = saved["root"].parent  # a step folder: its newest checkpoint
    rc, out = _show([str(step_dir)], capsys)
    assert rc == 0, out
    assert "iter_0000002" in out
    assert "gpt: 2 layers, hidden 64, ffn 128, 4 heads (2 query groups, head size 16)" in out
    assert f"{saved['params']:,}" in out and f"{32 * 32:,} (32 samples)" in out
    assert "2 (pretrain)" in out and "byte, 258 tokens" in out and "tp=1 pp=1" in out
    assert "verifies     yes" in out
    rc, out = _show([str(saved["root"] / "iter_0000001"), "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["step"] == 1 and doc["verified"] is True and doc["params"] == saved["params"]
    assert doc["architecture"]["hidden_size"] == 64 and doc["model"]["num_query_groups"] == 2


def test_show_checkpoint_runs_without_torch(saved):
    code = ("import sys, argparse; from nemo_reason.checkpoint.commands import add_checkpoint_commands; "
            "p = argparse.ArgumentParser(); add_checkpoint_commands(p.add_subparsers()); "
            "ns = p.parse_args(sys.argv[1:]); rc = ns.fn(ns); "
            "assert 'torch' not in sys.modules and 'megatron' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "show-checkpoint", str(saved["root"]), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 2


def test_loading_another_architecture_names_the_fields(saved):
    from nemo_reason.checkpoint import io as ckpt

    cfg, chunks, model, _, _ = _build(["model.num_layers=2", "model.hidden_size=96", "model.ffn_hidden_size=192"])
    newest = saved["root"] / "iter_0000002"
    with pytest.raises(ConfigError) as err:
        ckpt.load(newest, model, None, None, load_optimizer=False, model_cfg=cfg.model)
    msg = str(err.value)
    assert "checkpoint has hidden_size=64, the model being loaded has hidden_size=96" in msg
    assert "checkpoint has ffn_hidden_size=128, the model being loaded has ffn_hidden_size=192" in msg
    assert "kv_channels" in msg and "num_layers" not in msg and "\n" not in msg
    # Without the config to compare, Megatron's shape error still comes back as one line naming the path.
    with pytest.raises(ConfigError) as err:
        ckpt.load(newest, model, None, None, load_optimizer=False)
    assert str(newest) in str(err.value) and "\n" not in str(err.value)


def test_resume_skips_a_damaged_newest_checkpoint(saved, tmp_path, capsys):
    import torch

    from nemo_reason.checkpoint import io as ckpt

    root = _copy(saved, tmp_path)
    shard = _truncate_a_shard(root / "iter_0000002")
    chosen = ckpt.find_resumable(root)
    assert chosen == root / "iter_0000001"
    out = capsys.readouterr().out
    assert "iter_0000002" in out and shard in out and "set aside" in out and "resuming from" in out
    assert (root / "corrupt" / "iter_0000002" / shard).is_file()  # kept, not deleted
    assert not (root / "iter_0000002").exists() and (root / "latest").read_text() == "1"
    state = ckpt.load(chosen, saved["model"], saved["optimizer"], saved["scheduler"], model_cfg=saved["cfg"].model)
    assert (state.step, state.consumed_samples) == (1, 16)
    for k, v in saved["chunks"][0].state_dict().items():
        if torch.is_tensor(v) and k in saved["weights"][1]:
            assert torch.equal(v, saved["weights"][1][k]), k


def test_no_verifying_checkpoint_is_an_error_naming_them(saved, tmp_path):
    from nemo_reason.checkpoint import io as ckpt

    root = _copy(saved, tmp_path)
    for d in ("iter_0000001", "iter_0000002"):
        _truncate_a_shard(root / d)
    with pytest.raises(ConfigError) as err:
        ckpt.find_resumable(root)
    assert "iter_0000001" in str(err.value) and "iter_0000002" in str(err.value)
    assert (root / "iter_0000001").is_dir() and (root / "iter_0000002").is_dir()  # left for the user to decide
    # Loaded directly (run.init_checkpoint), a damaged checkpoint is one line naming it, not a traceback.
    with pytest.raises(ConfigError) as err:
        ckpt.load(root / "iter_0000002", saved["model"], None, None, load_optimizer=False)
    assert str(root / "iter_0000002") in str(err.value) and "damaged" in str(err.value)
    with pytest.raises(ConfigError) as err:  # unverified, Megatron's own failure is wrapped the same way
        ckpt.load(root / "iter_0000002", saved["model"], None, None, load_optimizer=False, verify=False)
    assert str(root / "iter_0000002") in str(err.value) and "\n" not in str(err.value)


def test_checkpoints_from_before_meta_and_checksums_still_read(saved, tmp_path, capsys):
    from nemo_reason.checkpoint import io as ckpt
    from nemo_reason.checkpoint.marker import MARKER, verify
    from nemo_reason.checkpoint.meta import read_meta

    root = _copy(saved, tmp_path)
    old = root / "iter_0000002"
    (old / "meta.json").unlink()
    (old / MARKER).write_text(json.dumps({"step": 2}))  # the marker format before manifests
    info = read_meta(old)
    assert info.source == "config.yaml" and info.model == saved["cfg"].model
    assert (info.step, info.tokens, info.step_type, info.tokenizer["name"]) == (2, 32 * 32, "pretrain", "byte")
    assert verify(old) == (None, [])
    assert ckpt.find_resumable(root) == old
    rc, out = _show([str(old)], capsys)
    assert rc == 0 and "unknown: written before" in out and "hidden 64" in out


def test_architecture_compares_the_network_not_the_spelling():
    import dataclasses

    from nemo_reason.checkpoint.meta import architecture_diff, with_architecture
    from nemo_reason.config.store import compose

    hybrid = compose("tiny_hybrid").model
    spelled_out = dataclasses.replace(hybrid, num_query_groups=hybrid.num_query_groups or hybrid.num_attention_heads,
                                      mamba_num_heads=hybrid.mamba_heads, backend="local", hidden_dropout=0.1,
                                      mamba_chunk_size=hybrid.mamba_chunk_size * 2)
    assert architecture_diff(hybrid, spelled_out) == []  # defaults resolved; implementation and training knobs ignored
    other = dataclasses.replace(hybrid, hybrid_pattern=None, hybrid_attention_ratio=0.5, hybrid_mlp_ratio=0.0)
    assert [k for k, _, _ in architecture_diff(hybrid, other)] == ["hybrid_pattern"]
    moe = compose("tiny_moe").model
    fewer = dataclasses.replace(moe, num_moe_experts=2, moe_router_topk=1, moe_aux_loss_coeff=0.5)
    assert architecture_diff(moe, fewer) == [("num_moe_experts", moe.num_moe_experts, 2)]
    dense = compose("tiny").model
    rebuilt = with_architecture(dense, hybrid)  # a recipe's model given a checkpoint's architecture
    assert architecture_diff(hybrid, rebuilt) == [] and rebuilt.backend == dense.backend
