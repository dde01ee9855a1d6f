"""The configuration tree: one dataclass per group, plain values only.

Hydra composes a recipe (``recipes/<name>.yaml``) onto :class:`RunConfig`, so every field has
a type, a default and a docstring-like comment here, and a misspelled key or a wrong type fails
at composition time. Each group checks itself in ``validate()``; :meth:`RunConfig.validate`
checks the rules that cross groups: the parallel layout from the one rule table that ``plan``
shares (:mod:`.layout`), all broken rules in one error, then the pipeline's.

Validation is pure: it reads no file, probes no GPU and imports no launcher, so a CPU login node
can compose and submit a GPU job. What depends on the machine (CUDA for fp8/fp16, data and
tokenizer files, init checkpoints) is the preflight's (:mod:`nemo_reason.preflight`), where the
job runs; the launcher's own rules and its GPU detection are the launch layer's
(:func:`nemo_reason.launch.resolve_launcher`, :func:`nemo_reason.launch.validate_launcher`).

``parallel`` holds model-parallel sizes only; the data-parallel size is derived from the world
size (``launcher.nodes * launcher.nproc_per_node``), as in Megatron-LM. ``ModelConfig`` lives in
:mod:`.model` and ``ConfigError`` in :mod:`.errors`; both are re-exported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nemo_reason.config.blends import check_data_blends, check_phase_steps
from nemo_reason.config.errors import ConfigError, _check  # noqa: F401  (re-exported)
from nemo_reason.config.layout import broken_rules, layout_error
from nemo_reason.config.model import ModelConfig  # noqa: F401  (re-exported)
from nemo_reason.config.steps import StepConfig  # noqa: F401  (re-exported)


@dataclass
class ParallelConfig:
    # Tensor, pipeline, virtual-pipeline (interleaved), context, expert and expert-tensor sizes.
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    cp: int = 1
    ep: int = 1
    # Expert tensor parallel size (MoE Parallel Folding); null means equal to tp.
    etp: Optional[int] = None
    sequence_parallel: bool = False

    def validate(self) -> None:
        for name in ("tp", "pp", "cp", "ep"):
            _check(getattr(self, name) >= 1, f"parallel.{name} must be >= 1")
        _check(self.vpp is None or self.vpp >= 1, "parallel.vpp must be >= 1 or null")
        _check(self.vpp is None or self.pp > 1,
               "parallel.vpp (interleaved pipeline) needs parallel.pp > 1")
        _check(self.etp is None or self.etp >= 1, "parallel.etp must be >= 1 or null")
        _check(not self.sequence_parallel or self.tp > 1,
               "parallel.sequence_parallel=true needs parallel.tp > 1")

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp


@dataclass
class TrainerConfig:
    max_steps: int = 100
    micro_batch_size: int = 4
    # Samples per optimizer step = micro_batch_size x accumulation x data-parallel size.
    global_batch_size: int = 8
    seq_length: int = 128
    log_every: int = 1
    # Checkpoint every N steps (and always at the end); 0 saves only at the end.
    save_every: int = 0
    # Validation every N steps on eval_iters global batches; 0 turns it off.
    eval_every: int = 0
    eval_iters: int = 2
    # "fp32", "bf16", "fp16" or "fp8" (fp16 and fp8 need CUDA; fp8 needs Transformer Engine).
    precision: str = "fp32"
    # --- fp8 (precision=fp8, Transformer Engine; Megatron-LM's --fp8-* flags) ---
    # Scaling recipe: "delayed" (amax history), "tensorwise" (per-tensor current scaling),
    # "blockwise" (1x128 / 128x128 blocks, Hopper) or "mxfp8" (Blackwell).
    fp8_recipe: str = "delayed"
    # "hybrid" (E4M3 forward, E5M2 gradients) or "e4m3".
    fp8_format: str = "hybrid"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"
    # Keep the first / last N transformer layers in bf16 (Nemotron-H keeps them out of fp8).
    fp8_first_last_layers_bf16: bool = False
    fp8_num_layers_at_start_in_bf16: int = 1
    fp8_num_layers_at_end_in_bf16: int = 1
    # Keep parameters in fp8 and all-gather them in fp8 (Megatron-LM --fp8-param-gather).
    fp8_param_gather: bool = False
    # Activation recomputation (Megatron-LM --recompute-granularity): "none", "selective" (attention
    # core, plus MoE/MLP activations where Megatron supports it) or "full" (every layer, uniform).
    recompute: str = "none"
    # Peak dense TFLOP/s per rank for MFU; null: H100 bf16 (989) on CUDA, on CPU a matmul probe
    # measured once and cached.
    peak_tflops: Optional[float] = None
    # Live progress line on rank 0.
    progress: bool = True
    # Keep only the newest N checkpoints of a step (0 keeps all).
    keep_last: int = 2
    # Also save the weights before the first step (iter_0000000), e.g. to start runs at other
    # layouts from the very same model with run.init_checkpoint.
    save_initial: bool = False
    # Stop (with a checkpoint) after every N steps of this invocation's counter, like Megatron-LM's
    # --exit-interval; re-running resumes. 0 runs to max_steps.
    exit_interval: int = 0

    def validate(self) -> None:
        _check(self.max_steps >= 1, "trainer.max_steps must be >= 1")
        _check(self.micro_batch_size >= 1, "trainer.micro_batch_size must be >= 1")
        _check(self.global_batch_size >= 1, "trainer.global_batch_size must be >= 1")
        _check(self.seq_length >= 2, "trainer.seq_length must be >= 2")
        _check(self.log_every >= 1, "trainer.log_every must be >= 1")
        _check(self.save_every >= 0, "trainer.save_every must be >= 0")
        _check(self.eval_every >= 0, "trainer.eval_every must be >= 0")
        _check(self.exit_interval >= 0, "trainer.exit_interval must be >= 0")
        _check(self.precision in ("fp32", "bf16", "fp16", "fp8"),
               f"trainer.precision={self.precision!r}: use fp32, bf16, fp16 or fp8")
        _check(self.recompute in ("none", "selective", "full"),
               f"trainer.recompute={self.recompute!r}: use none, selective or full")
        _check(self.fp8_recipe in ("delayed", "tensorwise", "blockwise", "mxfp8"),
               f"trainer.fp8_recipe={self.fp8_recipe!r}: use delayed, tensorwise, blockwise or mxfp8")
        _check(self.fp8_format in ("hybrid", "e4m3"), f"trainer.fp8_format={self.fp8_format!r}: use hybrid or e4m3")
        _check(self.fp8_amax_compute_algo in ("max", "most_recent"),
               f"trainer.fp8_amax_compute_algo={self.fp8_amax_compute_algo!r}: use max or most_recent")
        _check(self.fp8_amax_history_len >= 1, "trainer.fp8_amax_history_len must be >= 1")
        _check(self.fp8_num_layers_at_start_in_bf16 >= 0 and self.fp8_num_layers_at_end_in_bf16 >= 0,
               "trainer.fp8_num_layers_at_start_in_bf16 / _at_end_in_bf16 must be >= 0")
        _check(self.peak_tflops is None or self.peak_tflops > 0, "trainer.peak_tflops must be > 0 (or null)")


@dataclass
class OptimConfig:
    # "adam" (AdamW, decoupled weight decay) or "sgd".
    name: str = "adam"
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # Global gradient-norm clipping; 0 turns it off.
    clip_grad: float = 1.0
    # Learning-rate schedule: "cosine", "wsd" (warmup-stable-decay), "linear" or "constant".
    schedule: str = "cosine"
    warmup_steps: int = 10
    # Steps over which the schedule decays; null means trainer.max_steps.
    decay_steps: Optional[int] = None
    # WSD only: length and shape of the final decay ("linear", "cosine", "exponential", "minus_sqrt").
    wsd_decay_steps: Optional[int] = None
    wsd_decay_style: str = "linear"
    # Megatron's distributed optimizer (ZeRO-1 over the data-parallel group).
    distributed: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False

    def validate(self) -> None:
        _check(self.name in ("adam", "sgd"), f"optim.name={self.name!r}: use adam or sgd")
        _check(self.schedule in ("cosine", "wsd", "linear", "constant"),
               f"optim.schedule={self.schedule!r}: use cosine, wsd, linear or constant")
        _check(self.lr > 0, "optim.lr must be > 0")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr must be between 0 and optim.lr")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(self.clip_grad >= 0, "optim.clip_grad must be >= 0")
        _check(self.wsd_decay_style in ("linear", "cosine", "exponential", "minus_sqrt"),
               f"optim.wsd_decay_style={self.wsd_decay_style!r}: use linear, cosine, exponential "
               "or minus_sqrt")
        _check(not self.overlap_param_gather or self.distributed,
               "optim.overlap_param_gather needs optim.distributed=true")


@dataclass
class BlendEntry:
    """One source of a blend, as a pair of Megatron-LM's ``--data-path "w1 p1 w2 p2"``."""

    # Relative sampling weight (> 0); a blend's weights are normalised, as in Megatron-LM.
    weight: float = 1.0
    # A Megatron indexed dataset prefix (without .bin/.idx), or a named source: "synthetic" (the
    # generated corpus of data.num_documents / data.corpus_seed), "synthetic:SEED", "bundled:NAME".
    path: str = ""


@dataclass
class PhaseConfig:
    """One phase of a phased run: a blend and its share of the run's training tokens."""

    # Shown in logs and in metrics.jsonl's "phase"; empty: phase1, phase2, ...
    name: str = ""
    # Share of trainer.max_steps x global_batch_size x seq_length tokens; shares sum to 1, and each
    # boundary rounds to a whole step (docs/data.md).
    share: float = 0.0
    blend: List[BlendEntry] = field(default_factory=list)


@dataclass
class DataConfig:
    # "synthetic": a corpus the package generates (tests, demos); "indexed": Megatron .bin/.idx.
    source: str = "synthetic"
    # For source=indexed: the path prefix of a Megatron indexed dataset (without .bin/.idx).
    path_prefix: Optional[str] = None
    # Synthetic corpus size (documents) and generator seed.
    num_documents: int = 4000
    corpus_seed: int = 1234
    # "byte" (UTF-8 bytes + special tokens), "bundled" (a 1024-token BPE trained on the bundled
    # corpora, built once into the cache), "bundled_digits" (the same with single-digit number
    # tokens), "hf" or "sentencepiece" (with tokenizer_path).
    tokenizer: str = "byte"
    # For hf: a tokenizer.json or a folder holding one; for sentencepiece: the .model file.
    tokenizer_path: Optional[str] = None
    # Train/valid/test split weights, Megatron style: "98,1,1" or a list, data.split=[98,1,1].
    split: Any = "98,1,1"
    # Where generated corpora and dataset index caches go; "" means ~/.cache/nemo_reason.
    cache_dir: str = ""
    # Training blend, e.g. [{weight: 0.7, path: /data/web_text_document}, {weight: 0.3, path: bundled:math}]
    # (replaces source/path_prefix when set; Megatron's BlendedDataset over GPTDatasets).
    blend: List[BlendEntry] = field(default_factory=list)
    # Phases, in order, each a blend with a share of the training tokens (not with `blend`).
    phases: List[PhaseConfig] = field(default_factory=list)
    # Validation blend used whole, for every evaluation (Megatron-LM's --valid-data-path); empty: the
    # `split` validation documents of the blend that is training at that step.
    valid_blend: List[BlendEntry] = field(default_factory=list)

    def train_phases(self) -> List[PhaseConfig]:
        """The run's phases: ``phases``, else one phase of ``blend`` or of ``source``/``path_prefix``."""
        if self.phases:
            return [PhaseConfig(p.name or f"phase{i + 1}", p.share, list(p.blend))
                    for i, p in enumerate(self.phases)]
        blend = self.blend or [BlendEntry(1.0, "synthetic" if self.source == "synthetic" else str(self.path_prefix))]
        return [PhaseConfig("main", 1.0, list(blend))]

    def split_weights(self) -> List[float]:
        """``split`` as three weights (the string "98,1,1" or a list [98, 1, 1]); ConfigError otherwise."""
        parts = list(self.split) if isinstance(self.split, (list, tuple)) else str(self.split).split(",")
        try:
            weights = [float(p) for p in parts]
        except (TypeError, ValueError):
            weights = []
        _check(len(weights) == 3 and all(w >= 0 for w in weights) and sum(weights) > 0,
               f"data.split={self.split!r}: use three non-negative weights (train, valid, test), e.g. "
               "data.split=[98,1,1] or data.split='98,1,1'")
        return weights

    def split_string(self) -> str:
        """``split`` in Megatron's string form ("98,1,1"), whatever form it was given in."""
        return ",".join(f"{w:g}" for w in self.split_weights())

    def validate(self) -> None:
        check_data_blends(self)
        _check(self.source in ("synthetic", "indexed"),
               f"data.source={self.source!r}: use synthetic or indexed")
        _check(self.source != "indexed" or bool(self.path_prefix),
               "data.source=indexed needs data.path_prefix=/path/to/prefix (without .bin/.idx)")
        self._validate_tokenizer()
        self.split_weights()
        _check(self.num_documents >= 10, "data.num_documents must be >= 10")

    def _validate_tokenizer(self) -> None:
        # The names of nemo_reason.data.tokenizer.TOKENIZERS, listed here so validation imports no Megatron.
        _check(self.tokenizer in ("byte", "bundled", "bundled_digits", "hf", "sentencepiece"),
               f"data.tokenizer={self.tokenizer!r}: use byte, bundled, hf or sentencepiece, or bundled_digits "
               "(hf and sentencepiece also need data.tokenizer_path)")
        if self.tokenizer not in ("hf", "sentencepiece"):
            _check(not self.tokenizer_path, f"data.tokenizer_path is set but data.tokenizer={self.tokenizer} "
                                            "reads no file: use data.tokenizer=hf or sentencepiece")
            return
        _check(bool(self.tokenizer_path), f"data.tokenizer={self.tokenizer} needs data.tokenizer_path="
                                          f"{self.tokenizer_file_hint}")  # whether it exists: the preflight's

    @property
    def tokenizer_file_hint(self) -> str:
        return "a tokenizer.json or a folder holding one" if self.tokenizer == "hf" else "a SentencePiece .model file"


@dataclass
class RunSection:
    # Recipe name (set by the recipe); run.dir defaults to runs/<name>.
    name: str = "run"
    dir: str = "runs/${run.name}"
    seed: int = 1234
    # Resume from the newest complete checkpoint in run.dir when there is one.
    resume: bool = True
    # Stop after this pipeline step (its name); empty runs the whole pipeline. One SLURM job per
    # step (launcher.chain_steps=true) sets it per job.
    stop_after: str = ""
    # Weights (only) the first pipeline step starts from: a complete checkpoint folder (iter_*)
    # saved at any parallel layout, like Megatron-LM's --pretrained-checkpoint. "" starts from the seed.
    init_checkpoint: str = ""


@dataclass
class LauncherConfig:
    """Where and how the ranks run. ``nemo-reason run`` always runs on the machine it is started
    on (or as one rank under torchrun/srun); ``nemo-reason launch`` hands the job to the launcher
    named by ``type`` (select one with ``launcher=local|slurm|docker``)."""

    # Registered launcher for `nemo-reason launch`: "local", "slurm" or "docker" (nemo_reason/launch/).
    type: str = "local"
    # Ranks per node, for every launcher; null: one per GPU (gpus_per_node), or 1 without GPUs.
    nproc_per_node: Optional[int] = None
    nodes: int = 1
    # GPUs per node; null: this machine's GPU count (local, docker). SLURM needs it set: 8 on a
    # DGX H100, 0 on CPU nodes (then set nproc_per_node).
    gpus_per_node: Optional[int] = None
    master_addr: str = "127.0.0.1"
    # Rendezvous port; 0: a free port (local), 20000 + job id % 20000 (slurm).
    master_port: int = 0
    # Environment for the ranks (slurm: exported in the batch script; docker: `-e`), e.g.
    # launcher.env={NCCL_DEBUG:INFO} or +launcher.env.NCCL_SOCKET_IFNAME=ib0.
    env: Dict[str, str] = field(default_factory=dict)
    # Container image: pyxis `srun --container-image` (slurm; empty runs on the host), `docker run` image.
    container_image: str = ""
    # Extra "SRC:DST[:FLAGS]" mounts (pyxis --container-mounts, docker -v); the run dir, the working
    # directory and the data are mounted without being listed here.
    container_mounts: List[str] = field(default_factory=list)
    # --- slurm ---
    partition: str = ""
    account: str = ""
    # Time limit, SLURM syntax ("04:00:00", "2-00:00:00"); empty: the partition's default.
    time: str = ""
    # Job name; empty: run.name.
    job_name: str = ""
    # CPUs per rank (sbatch and srun --cpus-per-task); null: SLURM's default.
    cpus_per_task: Optional[int] = None
    # Whole nodes (--exclusive), as DGX jobs run.
    exclusive: bool = True
    # One SLURM task per node running torch's elastic agent (like `srun torchrun`), which starts
    # nproc_per_node ranks; false: one SLURM task per rank (Megatron-LM's usual way).
    elastic: bool = False
    # Extra sbatch / srun options, e.g. ["--qos=high", "--constraint=h100"].
    sbatch_args: List[str] = field(default_factory=list)
    srun_args: List[str] = field(default_factory=list)
    # sbatch --dependency for the (first) job, e.g. "afterok:1234".
    dependency: str = ""
    # Submit one job per pipeline step, each after the previous one succeeded (afterok).
    chain_steps: bool = False
    # Preemption and time limits: this signal (sent `preempt_warning_s` before the time limit,
    # #SBATCH --signal=B:USR1@N) makes every rank finish its step, save a checkpoint and stop;
    # the batch script then requeues the job, at most `max_requeues` times. "" turns it off.
    preempt_signal: str = "USR1"
    preempt_warning_s: int = 300
    max_requeues: int = 20

    def validate(self) -> None:
        """The fields' own rules. The launcher type and its rules (``launcher=slurm`` needs
        ``gpus_per_node``, ...) are checked by the launch layer: config imports no launcher."""
        import signal

        _check(bool(self.type), "launcher.type is empty: select one with launcher=local|slurm|docker")
        _check(self.nproc_per_node is None or self.nproc_per_node >= 1,
               "launcher.nproc_per_node must be >= 1 (or null: one rank per GPU)")
        _check(self.nodes >= 1, "launcher.nodes must be >= 1")
        _check(self.gpus_per_node is None or self.gpus_per_node >= 0, "launcher.gpus_per_node must be >= 0")
        _check(0 <= self.master_port < 65536, "launcher.master_port must be a TCP port (0: automatic)")
        _check(not self.time or re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", self.time) is not None,
               f"launcher.time={self.time!r}: use SLURM's syntax, e.g. 04:00:00 or 1-12:00:00")
        _check(self.cpus_per_task is None or self.cpus_per_task >= 1, "launcher.cpus_per_task must be >= 1")
        _check(not self.preempt_signal or hasattr(signal, "SIG" + self.preempt_signal),
               f"launcher.preempt_signal={self.preempt_signal!r}: use a signal name without SIG, e.g. USR1")
        _check(self.preempt_warning_s >= 0 and self.max_requeues >= 0,
               "launcher.preempt_warning_s and launcher.max_requeues must be >= 0")
        for m in self.container_mounts:
            _check(len(m.split(":")) in (2, 3), f"launcher.container_mounts entry {m!r}: use SRC:DST[:FLAGS]")
        for k in self.env:
            _check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) is not None,
                   f"launcher.env key {k!r} is not an environment variable name")

    def resolve(self) -> None:
        """Fill ``nproc_per_node`` = one rank per GPU (or 1 on CPU nodes) where ``gpus_per_node`` is
        known. Pure: a null ``gpus_per_node`` (this machine's GPUs, for local and docker) is filled by
        the launch layer (:func:`nemo_reason.launch.resolve_launcher`), which then calls this."""
        if self.nproc_per_node is None and self.gpus_per_node is not None:
            self.nproc_per_node = self.gpus_per_node or 1

    @property
    def world_known(self) -> bool:
        """False while the ranks per node wait for the GPUs of the machine they will run on."""
        return self.nproc_per_node is not None or self.gpus_per_node is not None

    @property
    def world_size(self) -> int:
        return self.nodes * (self.nproc_per_node or self.gpus_per_node or 1)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # The steps, in order; each entry is its step type's config (config/steps.py), typed at composition.
    pipeline: List[Any] = field(default_factory=lambda: [StepConfig()])
    # Free-form keys for experiments and plugins (`+extra.my_flag=1`); never read by the core.
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Each group checks itself, then the rules that cross groups."""
        for group in (self.model, self.parallel, self.trainer, self.optim, self.data, self.launcher):
            group.validate()
        _check(len(self.pipeline) >= 1, "pipeline is empty: list at least one step, e.g. [{type: pretrain}]")
        # The parallel layout: every broken rule of the table `plan` shares, in one error.
        broken = broken_rules(self)
        _check(not broken, layout_error(broken) or "")
        check_phase_steps(self.data, self.trainer.max_steps)  # every data phase gets at least one step
        names = [s.name or s.type for s in self.pipeline]
        _check(len(set(names)) == len(names),
               f"pipeline step names repeat ({names}): give repeated types distinct `name`s")
        _check(not self.run.stop_after or self.run.stop_after in names,
               f"run.stop_after={self.run.stop_after!r} is not a pipeline step; steps: {', '.join(names)}")

    @property
    def data_parallel_size(self) -> int:
        return self.launcher.world_size // self.parallel.model_parallel_size

