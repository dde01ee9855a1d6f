"""Rollout speed: nemo_reason.rollout.sampler.generate against Hugging Face ``generate`` (KV cache).

Both sides get the same architecture at the `tiny` sizes with random weights, the same batch
(random 16-token prompts), sampling at temperature 1 (no top-k/top-p), a fixed number of new
tokens (no end-of-sequence stop on either side), one torch thread, in one process:

- dense: our `tiny` GPTModel (4 layers, hidden 128, ffn 512, 4 heads / 2 KV groups, squared ReLU,
  LayerNorm, RoPE) against HF ``NemotronForCausalLM`` with the same sizes (``relu2``, full rotary);
- hybrid: our `tiny_hybrid` MambaModel (``M-M*-M-``, portable Mamba-2 mixer) against HF
  ``NemotronHForCausalLM`` with the same pattern and Mamba sizes (HF's torch fallback for the
  Mamba kernels, as neither side has mamba-ssm on CPU).

The vocabulary is 1024 (the bundled BPE tokenizer's size) on both. Runs alternate ours / HF
``--repeats`` times after a warm-up; the best tokens/s of each is reported (the median too), since
the machine is shared. transformers is a benchmark-only dependency (``pip install
"transformers>=4.45"``). With ``--record`` it appends a dated subsection (``--title``) to the rollout
section of docs/benchmarks.md, after the earlier ones.

    python benchmarks/bench_rollout.py --threads 1 --repeats 5 [--record [--title "..."]]
"""

from machine import append_to_section, describe
from megatron_env import single_process
import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VOCAB = 1024
PROMPT = 16
SHAPES = [(32, 64), (8, 32)]
SECTION = "## Rollout vs Hugging Face generate (benchmarks/bench_rollout.py)"


class _Vocab:
    """What generate needs of a tokenizer, without end-of-document (fixed-length runs, as HF's)."""

    vocab_size = VOCAB
    eod = None

    def detokenize(self, ids):
        return " ".join(map(str, ids))


def _megatron():
    from nemo_reason.backend import dist as bdist

    single_process()
    bdist.seed_everything(1234)


def ours(recipe):
    import torch

    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model
    from nemo_reason.rollout.sampler import SamplingParams, generate

    torch.manual_seed(0)
    model = build_model(compose(recipe, []), VOCAB)[0]
    params = sum(p.numel() for p in model.parameters())

    def run(prompts, new):
        generate(model, _Vocab(), prompts.tolist(), SamplingParams(max_new_tokens=new, temperature=1.0))

    return run, params


def hf(kind):
    import torch
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    if kind == "dense":
        cfg = transformers.NemotronConfig(num_hidden_layers=4, hidden_act="relu2", partial_rotary_factor=1.0,
                                          **common)
        model = transformers.NemotronForCausalLM(cfg)
    else:
        cfg = transformers.NemotronHConfig(num_hidden_layers=7, hybrid_override_pattern="M-M*-M-", mamba_num_heads=8,
                                           mamba_head_dim=32, ssm_state_size=16, n_groups=2, chunk_size=32,
                                           mlp_hidden_act="relu2", **common)
        model = transformers.NemotronHForCausalLM(cfg)
    model.eval()
    params = sum(p.numel() for p in model.parameters())

    def run(prompts, new):
        with torch.inference_mode():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
                                 eos_token_id=None)
        assert out.shape[1] == prompts.shape[1] + new

    return run, params, f"{type(model).__name__} (transformers {transformers.__version__})"


def timed(run, prompts, new):
    t = time.perf_counter()
    run(prompts, new)
    return prompts.shape[0] * new / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["dense", "hybrid"], choices=["dense", "hybrid"])
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--title", default="", help="the title of the recorded subsection")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    _megatron()
    rows, notes = [], []
    for kind in args.models:
        mine, our_params = ours({"dense": "tiny", "hybrid": "tiny_hybrid"}[kind])
        theirs, hf_params, hf_name = hf(kind)
        notes.append(f"- {kind}: ours {our_params:,} parameters; {hf_name} {hf_params:,}")
        for batch, new in SHAPES:
            prompts = torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
            mine(prompts, 4), theirs(prompts, 4)  # warm-up (lazy init, compiled activations)
            a, b = [], []
            for _ in range(args.repeats):
                a.append(timed(mine, prompts, new))
                b.append(timed(theirs, prompts, new))
            rows.append((kind, batch, new, max(a), statistics.median(a), max(b), statistics.median(b)))
            r = rows[-1]
            print(f"{kind} {batch}x{new}: ours {r[3]:,.0f} (median {r[4]:,.0f}) tok/s, HF {r[5]:,.0f} "
                  f"(median {r[6]:,.0f}) tok/s, best/best {r[3] / r[5]:.2f}x", flush=True)
    table = ["| model | batch x new tokens | ours tok/s best (median) | HF generate tok/s best (median) | ours / HF (best) |",
             "|---|---|---:|---:|---:|"]
    for kind, batch, new, ab, am, bb, bm in rows:
        table.append(f"| {kind} | {batch} x {new} | {ab:,.0f} ({am:,.0f}) | {bb:,.0f} ({bm:,.0f}) | {ab / bb:.2f}x |")
    lines = [f"- machine: {describe(threads=True, load=True)}",
             f"- prompts of {PROMPT} random tokens, vocabulary {VOCAB}, temperature 1, fixed length (no eos), "
             f"fp32, {args.repeats} alternating repeats after a warm-up", *notes, "", *table]
    print("\n".join(lines))
    if args.record:
        _record(lines, args.title)


def _record(lines, title):
    """Append a dated subsection at the end of the rollout section of docs/benchmarks.md (the section
    is created at the end of the file if missing); earlier subsections stay."""
    doc = REPO / "docs" / "benchmarks.md"
    argv = [a for a in sys.argv[1:] if a != "--record"]
    if "--title" in argv:
        i = argv.index("--title")
        del argv[i:i + 2]
    cmd = " ".join(["python benchmarks/bench_rollout.py", *argv])
    today = datetime.date.today()
    sub = (f"### {title or 'Run'} ({today})\n\nCommand: `{cmd} --record`\n\n" + "\n".join(lines) + "\n")
    append_to_section(doc, SECTION, sub)


if __name__ == "__main__":
    main()
