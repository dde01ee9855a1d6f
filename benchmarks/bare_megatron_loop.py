"""The reference for the overhead benchmark: a bare Megatron-Core training loop, nothing of ours
but what CPU execution needs (the CPU-compatibility redirections and, with --attention sdpa, the
portable core attention).

Same model (vocabulary included) and batch shape as `nemo-reason run tiny`: Megatron GPTModel (local spec), DDP,
get_megatron_optimizer, get_forward_backward_func, on pre-made random batches; no data pipeline,
logging, metrics, loss all-reduce or checkpoints. Prints one JSON line with tokens/s.

    python benchmarks/bare_megatron_loop.py --steps 60 --warmup 10 [--attention megatron]
"""

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--attention", choices=["sdpa", "megatron"], default="sdpa")
    args = ap.parse_args()

    import torch
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_reason.backend import cpu_compat
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend.portable.attention import SDPACoreAttention
    from nemo_reason.config.store import compose
    from nemo_reason.data.vocab import vocab_size_of
    from nemo_reason.models.gpt import transformer_config
    from nemo_reason.models.vocab import padded_vocab_size

    cfg = compose("tiny")
    t = cfg.trainer
    os.environ.setdefault("MASTER_PORT", "29533")
    bdist.init_process_group()
    cpu_compat.install()
    parallel_state.initialize_model_parallel(1, 1)
    bdist.seed_everything(cfg.run.seed)
    tcfg = transformer_config(cfg, "local")
    spec = get_gpt_layer_local_spec(normalization=cfg.model.normalization)
    if args.attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    # The recipe's vocabulary (its tokenizer's, padded as the model builder pads it): the output layer
    # is a large share of a tiny model's FLOPs.
    vocab = vocab_size_of(cfg.data.tokenizer, cfg.data.tokenizer_path, cfg.data.cache_dir)
    padded = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, 1)
    model = GPTModel(tcfg, spec, vocab_size=padded, max_sequence_length=cfg.model.max_position_embeddings,
                     share_embeddings_and_output_weights=False, position_embedding_type="rope")
    ddp = DistributedDataParallel(tcfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1, clip_grad=1.0), [ddp])
    tcfg.no_sync_func = ddp.no_sync
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.grad_scale_func = opt.scale_loss
    n_micro = t.global_batch_size // t.micro_batch_size
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (n_micro, t.micro_batch_size, t.seq_length + 1), generator=g)
    pos = torch.arange(t.seq_length).unsqueeze(0).expand(t.micro_batch_size, -1)

    def forward_step(it, m):
        x = next(it)
        out = m(x[:, :-1], pos, None, labels=x[:, 1:])
        return out, lambda o: (o.float().mean(), {"loss": o.detach().float().mean()})

    fwd_bwd = get_forward_backward_func()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        ddp.zero_grad_buffer()
        opt.zero_grad()
        fwd_bwd(forward_step_func=forward_step, data_iterator=iter(tokens), model=ddp, num_microbatches=n_micro,
                seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=False)
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    tok = t.global_batch_size * t.seq_length
    print(json.dumps({"loop": f"bare megatron ({args.attention} attention)", "steps": args.steps,
                      "tokens_per_s": tok * len(times) / sum(times), "step_time_s": sum(times) / len(times)}))
    parallel_state.destroy_model_parallel()
    bdist.destroy_process_group()


if __name__ == "__main__":
    main()
