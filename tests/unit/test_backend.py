"""The backend switch resolves once and refuses what this machine cannot run, with the fix."""

import pytest

from nemo_reason.backend import BackendError, cuda_available, select


def test_local_is_always_available():
    assert select("local") == "local"


@pytest.mark.skipif(cuda_available(), reason="CPU-only behaviour")
def test_auto_is_local_without_cuda_and_te_is_refused():
    assert select("auto") == "local"
    with pytest.raises(BackendError, match="model.backend=local"):
        select("te")


def test_unknown_backend():
    with pytest.raises(BackendError, match="not one of"):
        select("cuda")
