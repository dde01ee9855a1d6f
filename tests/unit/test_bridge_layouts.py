"""An imported checkpoint loads at another layout: TP=2 gives transformers' logits; export from TP=2.

Import runs at one process; the checkpoint is Megatron ``dist_checkpointing`` (torch_dist), so two
real gloo ranks (``tests.spawn``) load it at tensor-parallel size 2, Megatron splitting the fused
QKV per query group and the gated fc1 per half. Their logits (gathered over the vocabulary) must
match the transformers model's within the gate's bound. Llama (GQA: one key/value head per rank)
and Qwen2 (q/k/v biases split with the weight, tied embedding) share one spawn. The ranks also save
the model they loaded at TP=2; exporting that checkpoint (one process again) gives back the
original Hugging Face tensors bit for bit.

Slow (two ranks importing Megatron-Core: about 40 s on an idle 2-core machine).
"""

import pytest
import torch

from tests.spawn import spawn
from tests.unit.hf_tiny import TINY, hf_folder, tiny_tokenizer

transformers = pytest.importorskip("transformers")


def _logits_at_tp2(ckpts, tokens, save_root):
    import dataclasses
    from pathlib import Path

    from nemo_reason.bridge.megatron_side import run_config
    from nemo_reason.checkpoint.meta import load_tokenizer, model_config_of
    from nemo_reason.config.schema import ParallelConfig
    from nemo_reason.parallel import ParallelDims
    from nemo_reason.stages import StepContext
    from nemo_reason.training.state import build_train_state

    out = []
    for ckpt in ckpts:
        cfg = run_config(dataclasses.replace(model_config_of(ckpt), backend="local"))
        cfg = dataclasses.replace(cfg, parallel=ParallelConfig(tp=2))
        ctx = StepContext(ParallelDims.from_config(cfg.parallel, 2), Path("."), Path("."), "tp2")
        vocab = load_tokenizer(ckpt).vocab_size
        model = build_train_state(cfg, ctx, vocab, init_checkpoint=Path(ckpt), build_optimizer_state=False).chunks[0]
        with torch.no_grad():
            pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
            out.append(model(tokens, pos, None, runtime_gather_output=True).float())
        from nemo_reason.bridge.megatron_side import save_checkpoint
        from nemo_reason.checkpoint.meta import read_meta

        info = read_meta(ckpt)
        save_checkpoint(Path(save_root) / Path(ckpt).name, model, info.model, info.tokenizer, hf=info.extra["hf"])
    return out


def _rank(rank, ckpts, tokens, save_root):
    from tests.unit.megatron_env import in_layout

    return in_layout(_logits_at_tp2, 2, ckpts, tokens, save_root)


@pytest.mark.slow
def test_imported_checkpoint_at_tp2_matches_transformers(tmp_path):
    from nemo_reason.bridge.convert import import_hf
    from nemo_reason.bridge.parity import probe_tokens

    tok = tiny_tokenizer(tmp_path / "tok")
    cases = {"llama": transformers.LlamaConfig(**TINY, rope_theta=500000.0),
             "qwen2": transformers.Qwen2Config(**TINY, tie_word_embeddings=True)}
    tokens = probe_tokens(300, seq=24, seed=5)
    refs, ckpts = [], []
    for name, cfg in cases.items():
        hf = hf_folder(tmp_path / name, cfg, tok)
        import_hf(hf, tmp_path / f"{name}_ckpt", log=None)
        ckpts.append(str(tmp_path / f"{name}_ckpt"))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
        with torch.no_grad():
            refs.append(model(input_ids=tokens).logits.float())
    results = spawn(_rank, 2, args=(ckpts, tokens, str(tmp_path / "tp2")), timeout=600)
    for r in results:
        for name, ref, got in zip(cases, refs, r.value):
            diff = (got[..., :ref.shape[-1]] - ref).abs().max().item()
            assert diff <= 1e-4 * ref.abs().max().item(), (name, r.rank, diff)
    # Export from the TP=2 checkpoints: the original tensors.
    from safetensors.torch import load_file

    from nemo_reason.bridge.convert import export_hf
    from nemo_reason.checkpoint.meta import read_meta

    for name in cases:
        saved = tmp_path / "tp2" / f"{name}_ckpt"
        assert read_meta(next(saved.glob("iter_*"))).layout["tp"] == 2
        export_hf(saved, tmp_path / f"{name}_out", log=None)
        a, b = {}, {}
        for f in (tmp_path / name).glob("*.safetensors"):
            a.update(load_file(str(f)))
        for f in (tmp_path / f"{name}_out").glob("*.safetensors"):
            b.update(load_file(str(f)))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
