"""Per-GPU memory of a training run: weights, gradients, optimizer states, activations.

Weights, gradients, optimizer (Megatron-LM ``theoretical_memory_usage.py``,
``compute_weight_and_optimizer_memory``): the most loaded GPU holds its pipeline stage's share of
the transformer layers plus the input embedding (first stage) or the output layer (last stage),
each divided by TP. Bytes per parameter with bf16 mixed precision and Adam are Megatron's
18 = 2 (bf16 weight) + 4 (fp32 gradient buffer; our DDP reduces in fp32) + 4 (fp32 main weight)
+ 8 (Adam m and v); with the distributed optimizer the 12 optimizer bytes are sharded over
data-parallel ranks: 6 + 12/DP (DP x CP: context-parallel ranks hold the same weights, and
Megatron's distributed optimizer shards over both). fp32 training keeps no main copy (4 + 4 + 8); SGD keeps one
momentum buffer instead of Adam's two. MoE: routed-expert weights are split over ETP x EP x PP
(not TP x PP) and their optimizer states over the expert data-parallel ranks
EDP = world / (ETP x EP x PP) (MoE Parallel Folding).

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", eqs. 1-5; Megatron-LM ``compute_activation_memory``): a transformer layer stores
``s b h (34 + 5 a s / h)`` bytes per micro-batch in 16-bit precision, of which ``10 s b h``
(layer-norm inputs, the inputs of the first attention and MLP matmuls, dropout masks) are
replicated over tensor-parallel ranks unless sequence parallelism splits them, ``24 s b h`` are
split by TP, and ``5 a s^2 b`` are the attention scores. We keep that structure term by term and
generalise it to GQA (K and V sized by the query groups), gated MLPs (fc1 output 2f), MoE layers
(k routed copies of each token through experts of size f_e, shared experts) and, as our own
estimate (Megatron-LM has none for hybrids), Mamba-2 layers. Recompute modes:

    none        everything above, including the s^2 attention scores (no FlashAttention)
    selective   the scores are recomputed (what FlashAttention/cuDNN attention do anyway; default)
    full        each layer keeps only its input (2 s b h), plus one layer's working set

The first pipeline stage holds the most: ``min(pp, micro-batches)`` micro-batches in flight
(1F1B), times ``1 + (pp-1)/(pp vpp)`` when interleaved, as Megatron-LM. With PP = 1 the fp32
logits and the loss's inputs are added (``4 s b h (1 + V/h)`` / TP). Context parallelism divides
the tokens per rank by CP.

fp8 (Transformer Engine): the inputs of every linear layer are kept for backward in fp8 (1 byte
instead of 2), and with ``trainer.fp8_param_gather`` the weights are stored in fp8 (1 byte). Not
modelled: TE's transient fp8 weight copies, the CUDA context and NCCL buffers (~2-5 GiB),
allocator fragmentation, and the MoE load imbalance (the experts' share is the average).
"""

from __future__ import annotations

from typing import Dict

from nemo_reason.planner.params import embedding_params, expert_param_count, param_count

GIB = 1024 ** 3
RECOMPUTE = ("none", "selective", "full")


# --- weights, gradients, optimizer states -------------------------------------------------------

def params_per_gpu(m, lay, padded_vocab: int) -> Dict[str, float]:
    """Parameters on the most loaded GPU: {"dense": .., "expert": ..} (dense includes embeddings)."""
    h = m.hidden_size
    expert = expert_param_count(m)
    layers = param_count(m, padded_vocab) - embedding_params(m, padded_vocab) - expert
    table = padded_vocab * h
    pos = m.max_position_embeddings * h if m.position_embedding_type == "learned_absolute" else 0
    first = table + pos                                  # word (+ position) embeddings
    norm = 2 * h if m.normalization == "LayerNorm" else h
    last = (table if (m.untie_embeddings_and_output_weights or lay.pp > 1) else 0) + norm  # output layer, final norm
    edge = first + last if lay.pp == 1 else max(first, last)
    return {"dense": layers / (lay.tp * lay.pp) + edge / lay.tp, "expert": expert / (lay.etp * lay.ep * lay.pp)}


def _state_bytes(precision: str, optimizer: str, fp8_param_gather: bool) -> Dict[str, float]:
    half = precision != "fp32"
    weight = 1.0 if (precision == "fp8" and fp8_param_gather) else (2.0 if half else 4.0)
    moments = 8.0 if optimizer == "adam" else 4.0
    return {"weights": weight, "gradients": 4.0, "optimizer": moments + (4.0 if half else 0.0)}


def model_state_memory(cfg, lay, padded_vocab: int) -> Dict[str, float]:
    """Bytes on the most loaded GPU for weights, gradients and optimizer states, the optimizer both
    replicated and distributed (the config picks which counts in the total)."""
    t = cfg.trainer
    per = params_per_gpu(cfg.model, lay, padded_vocab)
    n = per["dense"] + per["expert"]
    b = _state_bytes(t.precision, cfg.optim.name, t.fp8_param_gather)
    replicated = n * b["optimizer"]
    # Megatron shards dense states over DP x CP (CP ranks hold the same weights), expert states over EDP.
    distributed = b["optimizer"] * (per["dense"] / (lay.dp * lay.cp) + per["expert"] / lay.edp)
    bf16_weights = n * (2.0 if t.precision != "fp32" else 4.0)
    return {
        "weights": n * b["weights"], "gradients": n * b["gradients"],
        "optimizer": distributed if cfg.optim.distributed else replicated,
        "optimizer_replicated": replicated, "optimizer_distributed": distributed,
        "fp8_param_gather_saving": bf16_weights - n * 1.0 if t.precision != "fp32" else 0.0,
    }


# --- activations -------------------------------------------------------------------------------

def _gate(m) -> int:
    return 2 if m.activation == "swiglu" else 1


def layer_activation_terms(m, kind: str, lay) -> Dict[str, float]:
    """Bytes per token and hidden unit (multiply by s b h) one layer keeps for backward, 16-bit.

    ``rep``: replicated over TP unless sequence parallel; ``split``: split by TP; ``scores``: the
    attention-score term (split by TP; dropped by selective recompute); ``local``: already per GPU
    (MoE experts, whose tokens follow the expert layout); ``fp8_rep`` / ``fp8_split`` /
    ``fp8_local``: the part fp8 saves (half of the linear layers' inputs)."""
    h, gate = m.hidden_size, _gate(m)
    z = {"rep": 0.0, "split": 0.0, "scores": 0.0, "local": 0.0, "fp8_rep": 0.0, "fp8_split": 0.0, "fp8_local": 0.0}
    if kind == "attention":
        n = m.num_attention_heads
        g = m.num_query_groups or n
        qr = (m.kv_channels or h // n) * n / h
        z["rep"] = 2 + 2 + 1            # norm input, QKV input, dropout mask
        z["split"] = qr * (2 + 4 * g / n + 2)  # Q, K and V, context (= output-projection input)
        z["scores"] = 5 * n / h         # x s: softmax output 2, dropout mask 1, dropout output 2 (per head)
        z["fp8_rep"], z["fp8_split"] = 1, qr
    elif kind == "mlp":
        f = m.ffn_hidden_size / h
        z["rep"] = 2 + 2 + 1            # norm input, fc1 input, dropout mask
        z["split"] = 2 * f * gate + 2 * f  # activation input (fc1 output), fc2 input
        z["fp8_rep"], z["fp8_split"] = 1, f
    elif kind == "moe":
        k, fe = m.moe_router_topk, (m.moe_ffn_hidden_size or m.ffn_hidden_size) / h
        fs = (m.moe_shared_expert_intermediate_size or 0) / h
        z["rep"] = 2 + 2 + 1            # norm input, norm output (router, dispatch, shared fc1), dropout mask
        z["split"] = 2 * fs * gate + 2 * fs  # shared experts (tensor parallel like a dense MLP)
        # Each token goes to k experts. Per GPU that is k/TP token copies; ETP ranks share their tokens
        # (each holds all of them at h, a 1/ETP slice at f_e): fc1 input and unpermute input at h.
        z["local"] = k * ((2 + 2) * lay.etp / lay.tp + (2 * fe * gate + 2 * fe) / lay.tp)
        z["fp8_local"] = k * (lay.etp / lay.tp + fe / lay.tp)
    elif kind == "mamba":
        d_in = m.mamba_heads * m.mamba_head_dim / h
        gn = m.mamba_num_groups * m.mamba_state_dim / h
        heads = m.mamba_heads / h
        z["rep"] = 2 + 2                # norm input, in_proj input
        # in_proj output (z, xBC, dt), conv output (x, B, C), scan output y, gated-norm output (out_proj input)
        z["split"] = 2 * (2 * d_in + 2 * gn + heads) + 2 * (d_in + 2 * gn) + 2 * d_in + 2 * d_in
        z["fp8_rep"], z["fp8_split"] = 1, d_in
    else:
        raise ValueError(kind)
    return z


def _layer_kinds(m) -> Dict[str, int]:
    from nemo_reason.config.layers import ATTENTION, MAMBA, MLP, MOE, layer_counts

    c = layer_counts(m)
    kinds = {"attention": c[ATTENTION], "mlp": c[MLP], "moe": c[MOE]}
    return {"mamba": c[MAMBA], **kinds} if m.type == "hybrid" else kinds


def _per_layer_bytes(z: Dict[str, float], lay, seq: int, recompute: str, fp8: bool) -> float:
    """Bytes per token-hidden (x s b h / cp) one layer keeps on one GPU."""
    rep_div = lay.tp if lay.sequence_parallel else 1
    rep, split, local = z["rep"], z["split"], z["local"]
    if fp8:
        rep, split, local = rep - z["fp8_rep"], split - z["fp8_split"], local - z["fp8_local"]
    out = rep / rep_div + split / lay.tp + local
    if recompute == "none":
        out += z["scores"] * seq / lay.tp
    return out


def activation_memory(cfg, lay, padded_vocab: int, recompute: str = "selective", fp8: bool = False) -> float:
    """Activation bytes on the first pipeline stage (the most loaded), per Megatron-LM's accounting."""
    m, t = cfg.model, cfg.trainer
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r}: use one of {RECOMPUTE}")
    h, b, seq = m.hidden_size, t.micro_batch_size, t.seq_length
    sbh = seq / lay.cp * b * h * (2.0 if t.precision == "fp32" else 1.0)  # terms above are 16-bit bytes
    kinds = _layer_kinds(m)
    per_kind = {k: _per_layer_bytes(layer_activation_terms(m, k, lay), lay, seq, "selective" if recompute == "full"
                                    else recompute, fp8) for k, n in kinds.items() if n}
    if recompute == "full":
        # Only each layer's input (2 s b h, split under SP) is kept; one layer is rebuilt at a time.
        # A GPT "layer" holds attention + MLP (or MoE): its working set is their sum.
        if m.type == "hybrid":
            work = max(per_kind.values())
        else:
            work = per_kind.get("attention", 0) + max(per_kind.get("mlp", 0), per_kind.get("moe", 0))
        layers = m.num_layers * 2 / (lay.tp if lay.sequence_parallel else 1)
    else:
        layers = sum(per_kind[k] * n for k, n in kinds.items() if n)
        work = 0.0
    # Megatron-LM: all L layers' worth on the first stage (L/pp layers x pp micro-batches in flight).
    if lay.vpp:
        inflight = 1 + (lay.pp - 1) / (lay.pp * lay.vpp)
    elif lay.pp > 1:
        inflight = min(1.0, lay.micro_batches / lay.pp)
    else:
        inflight = 1.0
    total = layers * inflight + work
    # Embedding: token ids (8 bytes) and the dropout output, pp micro-batches in flight.
    in_flight_mb = lay.pp * inflight if lay.vpp else (min(lay.pp, lay.micro_batches) if lay.pp > 1 else 1)
    rep_div = lay.tp if lay.sequence_parallel else 1
    total += (8 / h + 1) * in_flight_mb / rep_div
    if lay.pp == 1:
        # fp32 logits (split by TP: vocab-parallel) and the final norm output.
        total += 4 * (1 / rep_div + padded_vocab / h / lay.tp)
    return total * sbh


def memory_report(cfg, lay, padded_vocab: int, recompute: str = "selective") -> Dict[str, object]:
    """All figures in GiB (2^30 bytes) for the most loaded GPU."""
    t = cfg.trainer
    fp8 = t.precision == "fp8"
    states = model_state_memory(cfg, lay, padded_vocab)
    acts = {r: activation_memory(cfg, lay, padded_vocab, r, fp8) for r in RECOMPUTE}
    acts_fp8 = activation_memory(cfg, lay, padded_vocab, recompute, True)
    total = states["weights"] + states["gradients"] + states["optimizer"] + acts[recompute]
    per = params_per_gpu(cfg.model, lay, padded_vocab)
    return {
        "weights": states["weights"] / GIB,
        "gradients": states["gradients"] / GIB,
        "optimizer": states["optimizer"] / GIB,
        "optimizer_replicated": states["optimizer_replicated"] / GIB,
        "optimizer_distributed": states["optimizer_distributed"] / GIB,
        "activations": acts[recompute] / GIB,
        "activations_by_recompute": {r: v / GIB for r, v in acts.items()},
        "recompute": recompute,
        "distributed_optimizer": cfg.optim.distributed,
        "total": total / GIB,
        # What fp8 saves against 16-bit (0 where the run already counts it, or trains in fp32).
        "fp8_savings": {
            "activations": 0.0 if fp8 or t.precision == "fp32" else (acts[recompute] - acts_fp8) / GIB,
            "weights_with_fp8_param_gather": 0.0 if (fp8 and t.fp8_param_gather) else
            states["fp8_param_gather_saving"] / GIB,
        },
        "params_per_gpu": {"dense": per["dense"], "expert": per["expert"]},
    }
