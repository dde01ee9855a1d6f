"""nemo_reason: train reasoning language models with Megatron-Core.

Importing the package imports nothing GPU-only; see ``nemo_reason.backend`` for the one seam.
"""

__version__ = "0.1.0"


def _register_builtin_steps() -> None:
    # Step types (and their config dataclasses) are known as soon as the package is: composing a
    # recipe types its pipeline entries. The step modules are light (no torch at import).
    from nemo_reason.stages import load_builtin_steps

    load_builtin_steps()


_register_builtin_steps()
