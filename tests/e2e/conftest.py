"""Fixtures shared by the end-to-end modules. The shortened default pipeline is registered here, once,
so its session scope holds across modules (a fixture imported into two test modules is two fixtures
to pytest, and the pipeline would run twice)."""

from tests.e2e.lifecycle_run import lifecycle_run  # noqa: F401  (session fixture)
