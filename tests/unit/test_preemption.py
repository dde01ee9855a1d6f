"""The preemption flag in one process: the signal only raises a flag; a recorded stop writes the
marker the batch script reads and turns the exit code into 75."""

import json
import os
import signal

import pytest

from nemo_reason.training import preemption


@pytest.fixture(autouse=True)
def clean():
    preemption.reset()
    yield
    preemption.reset()


def test_signal_raises_a_flag_and_the_stop_is_recorded(tmp_path):
    assert not preemption.agreed()  # nothing installed: no collective, never stops
    preemption.install("USR1")
    assert not preemption.requested() and not preemption.agreed()
    os.kill(os.getpid(), signal.SIGUSR1)  # handled: the process lives on
    assert preemption.requested() and preemption.agreed()
    assert preemption.exit_code() == 0  # a flag alone is not a stop
    preemption.record(tmp_path, "pretrain", 7, tmp_path / "iter_0000007")
    marker = json.loads((tmp_path / preemption.MARKER).read_text())
    assert marker["step"] == "pretrain" and marker["iteration"] == 7
    assert preemption.exit_code() == preemption.EXIT_PREEMPTED == 75


def test_empty_signal_name_leaves_signals_alone():
    preemption.install("")
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert not preemption.agreed()
