"""Evaluation of a checkpoint by generation and verifiers: pass@1, pass@k, maj@k, response length.

- :mod:`.metrics`: the pure estimators (pass@k of Chen et al. 2021, maj@k);
- :mod:`.tasks`: held-out splits of the bundled corpora (checked against the training data) and a
  user's JSONL, with prompt templates;
- :mod:`.run`: ``evaluate(model, tokenizer, tasks, params, k)``, the table and the flat metrics;
- :mod:`.commands`: ``nemo-reason eval`` and ``nemo-reason generate``.

The ``eval`` pipeline step is :mod:`nemo_reason.stages.eval`. Generation is the rollout sampler's
(:mod:`nemo_reason.rollout.sampler`), scoring the verifiers' (:mod:`nemo_reason.rewards`).
"""
