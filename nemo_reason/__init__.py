"""nemo_reason: train reasoning language models with Megatron-Core.

Importing the package imports nothing GPU-only; see ``nemo_reason.backend`` for the one seam.
"""

__version__ = "0.1.0"
