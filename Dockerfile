# nemo_reason on GPUs: the NGC PyTorch container brings CUDA, PyTorch, Transformer Engine and apex.
#   docker build -t nemo_reason .
#   nemo-reason launch nemotron_h_8b launcher=docker    # renders and runs the `docker run` (README: Launchers)
# The same image serves SLURM with pyxis/enroot: launcher=slurm launcher.container_image=...
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1

# bubblewrap: the sandbox that runs code-reward completions (nemo_reason/rewards/sandbox.py). Not pinned:
# the version is the base image's distribution's (Ubuntu in the NGC container).
# hadolint ignore=DL3008
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Mamba-2 kernels for the hybrid models; built against the container's torch and CUDA.
RUN pip install --no-build-isolation "causal-conv1d>=1.5" "mamba-ssm>=2.2"

WORKDIR /workspace/nemo_reason
COPY setup.py README.md ./
COPY nemo_reason ./nemo_reason
COPY recipes ./recipes
COPY launchers ./launchers
# Same megatron-core pin as on CPU (setup.py: >=0.16.1,<0.17). The container's own torch,
# Transformer Engine and apex are kept: nothing here reinstalls them.
RUN pip install -e . && python -c "import nemo_reason.cli, megatron.core; print(megatron.core.__version__)"

CMD ["nemo-reason", "--help"]
