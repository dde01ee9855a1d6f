"""Preflight: what a valid config needs from the machine the job runs on, checked before any work.

``RunConfig.validate`` checks configuration rules only (a CPU login node composes and submits a GPU
job); :func:`preflight` checks the environment, raising :class:`ConfigError` (exit 2) with the
problem and the fix:

- megatron-core is in the tested version range;
- precision: fp8 needs CUDA, Transformer Engine at the recipe's version and a GPU generation the
  recipe runs on (``backend.fp8.check_fp8_hardware``); fp16 needs CUDA;
- ``model.backend=te`` needs CUDA and Transformer Engine (``backend.select``);
- data: every dataset prefix has its .bin/.idx, every named source (``bundled:...``) is valid
  (``data.blend.check_sources``), and a tokenizer file (``data.tokenizer_path``) exists;
- ``run.init_checkpoint`` is a complete checkpoint folder.

It runs in ``nemo-reason run`` before the ranks are spawned (the job runs on this machine) and on
every rank in ``worker.run_worker`` before any model or data is built (under torchrun or srun the
ranks are where the job runs). Cheap: no Megatron import, no dataset built. What only the
dataset builder can know (a split too small for the samples asked for) is checked by the loader.
"""

from __future__ import annotations

import os

from nemo_reason.config.errors import ConfigError


def preflight(cfg) -> None:
    """ConfigError naming the problem and the fix when ``cfg`` cannot run on this machine."""
    check_megatron_core()
    check_precision(cfg)
    check_backend(cfg)
    check_data(cfg.data)
    check_init_checkpoint(cfg.run.init_checkpoint)


def check_megatron_core() -> None:
    """The installed megatron-core is in the tested range (``backend.MEGATRON_CORE_SUPPORTED``)."""
    from nemo_reason.backend import BackendError, check_megatron_core_version, installed_megatron_core_version

    try:
        check_megatron_core_version(installed_megatron_core_version())
    except BackendError as err:
        raise ConfigError(str(err)) from None


def check_precision(cfg) -> None:
    from nemo_reason.backend import cuda_available

    t = cfg.trainer
    if t.precision == "fp8":
        from nemo_reason.backend.fp8 import check_fp8_hardware

        check_fp8_hardware(t.fp8_recipe)
    elif t.precision == "fp16" and not cuda_available():
        raise ConfigError(f"trainer.precision={t.precision} needs CUDA; on CPU use fp32 or bf16")


def check_backend(cfg) -> None:
    from nemo_reason.backend import BackendError, select

    try:
        select(cfg.model.backend)
    except BackendError as err:
        raise ConfigError(str(err)) from None


def check_data(d) -> None:
    from nemo_reason.data.blend import check_sources

    check_sources(d)
    check_tokenizer_file(d)


def check_tokenizer_file(d) -> None:
    """``data.tokenizer_path`` exists: a file (hf: tokenizer.json or a folder holding one)."""
    if d.tokenizer not in ("hf", "sentencepiece") or not d.tokenizer_path:
        return
    p = os.path.expanduser(str(d.tokenizer_path))
    found = os.path.isfile(p) or (d.tokenizer == "hf" and os.path.isfile(os.path.join(p, "tokenizer.json")))
    if not found:
        raise ConfigError(f"data.tokenizer_path={d.tokenizer_path}: not found; give {d.tokenizer_file_hint} "
                          "(train a BPE with `nemo-reason train-tokenizer --input FILE --output DIR`)")


def check_init_checkpoint(path: str) -> None:
    if path and not os.path.isfile(os.path.join(path, "complete.json")):
        raise ConfigError(f"run.init_checkpoint={path}: not a complete checkpoint folder (no complete.json); "
                          "point it at an iter_* folder under <run.dir>/<step>/checkpoints")
