"""The CLI as a user types it: help, list, show, and exit code 2 on bad input before any work."""

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["show", "--help"], ["list", "--help"],
                                  ["launch", "--help"]])
def test_help(tmp_path, args):
    proc = run_cli(args, cwd=tmp_path)
    assert "usage: nemo-reason" in proc.stdout


def test_list_shows_recipes_and_steps(tmp_path):
    out = run_cli(["list"], cwd=tmp_path).stdout
    assert "tiny" in out and "nemotron4_15b" in out and "pretrain" in out


def test_show_prints_resolved_yaml(tmp_path):
    out = run_cli(["show", "tiny", "trainer.max_steps=20", "run.name=x"], cwd=tmp_path).stdout
    assert "max_steps: 20" in out and "dir: runs/x" in out  # interpolation resolved


@pytest.mark.parametrize("cmd", ["run", "show"])
@pytest.mark.parametrize("override,needle", [
    ("trainer.max_stepz=3", "unknown config key 'trainer.max_stepz'; did you mean: trainer.max_steps"),
    ("trainer.max_steps=abc", "trainer.max_steps: value 'abc' is not a valid Integer"),
])
def test_bad_override_exits_2_before_any_work(tmp_path, cmd, override, needle):
    proc = run_cli([cmd, "tiny", override], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert needle in proc.stdout
    assert not (tmp_path / "runs").exists()  # nothing was started or written
