"""Process group, device and seeding: nccl on CUDA, gloo on CPU.

Reads the environment every launcher sets (torchrun / torch elastic: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT; srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) and
falls back to a single process.
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int


def read_env() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv(0, 1, 0)


def process_group_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_process_group(timeout_minutes: int = 30) -> DistEnv:
    """Initialise torch.distributed once for this process (also for a single process, since
    Megatron's parallel state needs a default group)."""
    denv = read_env()
    if dist.is_initialized():
        return denv
    if torch.cuda.is_available():
        torch.cuda.set_device(denv.local_rank)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if denv.world_size == 1:
        # The whole world is this process: an in-memory store, no TCP rendezvous (and no port that
        # another process on a busy machine could take between choosing it and listening on it).
        dist.init_process_group(backend=process_group_backend(), store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
        return denv
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        raise RuntimeError("MASTER_PORT is not set for a multi-process run")
    dist.init_process_group(backend=process_group_backend(), rank=denv.rank, world_size=denv.world_size,
                            timeout=timeout)
    return denv


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, then Megatron's model-parallel RNG tracker (which on CPU
    runs on the CPU generator, through cpu_compat)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    # model_parallel_cuda_manual_seed reseeds the (redirected) CPU generator on CPU: put the
    # default stream back to `seed` so model init is identical for every TP size.
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
