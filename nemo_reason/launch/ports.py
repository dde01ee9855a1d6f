"""Free TCP ports on localhost for rendezvous (kept for old callers: lives in :mod:`nemo_reason.ports`)."""

from nemo_reason.ports import free_port  # noqa: F401  (re-exported)
