#!/bin/bash
# Multi-node nemo_reason on SLURM (one task per GPU), e.g. two DGX H100 nodes:
#   sbatch --nodes=2 --partition=batch --account=myacct --time=04:00:00 \
#       launchers/sbatch_nemo_reason.sh nemotron4_15b launcher.nodes=2 launcher.nproc_per_node=8
# With pyxis/enroot, set CONTAINER_IMAGE (and CONTAINER_MOUNTS) in the environment.
# `nemo-reason launch ... launcher=slurm` (the launcher issue) renders this from the recipe.
#SBATCH --job-name=nemo_reason
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --output=logs/%x_%j.out
set -euo pipefail
mkdir -p logs
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
export CUDA_DEVICE_MAX_CONNECTIONS=1
export NCCL_IB_SL=${NCCL_IB_SL:-1}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
CONTAINER_ARGS=()
if [ -n "${CONTAINER_IMAGE:-}" ]; then
  CONTAINER_ARGS=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$PWD:$PWD}" --container-workdir="$PWD")
fi
srun "${CONTAINER_ARGS[@]}" --kill-on-bad-exit=1 nemo-reason run "$@"
