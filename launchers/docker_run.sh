#!/bin/bash
# One node, all GPUs, inside the nemo_reason image:
#   launchers/docker_run.sh nemotron4_15b trainer.max_steps=100
set -euo pipefail
IMAGE=${IMAGE:-nemo_reason:latest}
mkdir -p runs
exec docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$PWD/runs:/workspace/nemo_reason/runs" ${DATA_DIR:+-v "$DATA_DIR:$DATA_DIR"} \
  "$IMAGE" nemo-reason run "$@"
