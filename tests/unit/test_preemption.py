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


def test_sigterm_is_caught_too_and_does_not_requeue(tmp_path):
    preemption.install("")  # no warning signal: SIGTERM is still a clean stop
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a second one (scheduler + forwarded) does not kill either
    assert preemption.requested() and preemption.agreed()
    preemption.record(tmp_path, "sft", 3, tmp_path / "iter_0000003")
    marker = json.loads((tmp_path / preemption.MARKER).read_text())
    assert marker["signals"] == ["TERM"] and marker["ranks_signalled"] == {"TERM": 1}
    assert marker["requeue"] is False and preemption.exit_code() == 75
    preemption.reset()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_warning_signal_requeues_unless_sigterm_came_as_well(tmp_path):
    preemption.install("USR1")
    preemption.install("USR1")  # idempotent: the CLI, the worker and the loop all call it
    os.kill(os.getpid(), signal.SIGUSR1)
    assert preemption.agreed() and preemption.requeue_wanted()
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.agreed() and not preemption.requeue_wanted()
    assert preemption.signals_seen() == ["USR1", "TERM"]
    preemption.reset()
    preemption.install("TERM")  # SIGTERM named as the warning signal: it requeues
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.agreed() and preemption.requeue_wanted() and preemption.signals_seen() == ["TERM"]


def test_a_spawning_process_forwards_the_warning_and_sigterm():
    from nemo_reason.launch.local import forwarded_signals

    assert forwarded_signals("USR1") == [signal.SIGUSR1, signal.SIGTERM]
    assert forwarded_signals("") == forwarded_signals("TERM") == [signal.SIGTERM]


def test_rendered_jobs_give_sigterm_time_to_save_and_do_not_requeue_it(tmp_path):
    import re

    from tests.unit.test_launch import render

    _, jobs = render("tiny", ["launcher=docker", "launcher.gpus_per_node=0", "launcher.preempt_warning_s=120"], tmp_path)
    flat = re.sub(r"\s*\\\n\s*", " ", jobs[0].script)
    assert "exec docker run --rm --init" in flat and "--stop-timeout 120" in flat  # docker stop waits for the save
    _, jobs = render("tiny", ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.nproc_per_node=2"], tmp_path)
    s = jobs[0].script
    assert "trap on_term TERM" in s  # the batch script outlives the ranks' save
    assert s.index("\"requeue\": false") < s.index('scontrol requeue "$SLURM_JOB_ID"')
