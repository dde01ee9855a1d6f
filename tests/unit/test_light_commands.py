"""Commands that only read configs and files stay light: `plan`, `show`, `list` and `show-checkpoint`
import neither torch nor Megatron-Core (seconds of start-up and a page of warnings otherwise)."""

import subprocess
import sys

import pytest

from nemo_reason.data.tokenizer import build_tokenizer
from nemo_reason.data.vocab import vocab_size_of

PROBE = """
import sys
from nemo_reason.cli import main
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    rc = main({args!r})
heavy = sorted(m for m in ("torch", "megatron.core") if m in sys.modules)
print("RC", rc, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("args", [["plan", "tiny"], ["plan", "tiny_hybrid"], ["show", "tiny"], ["list"]])
def test_light_commands_import_no_torch_or_megatron(args):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert "RC 0 HEAVY -" in out.stdout, out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("name", ["byte", "bundled"])
def test_light_vocab_size_equals_the_built_tokenizer(name):
    assert vocab_size_of(name) == build_tokenizer(name).vocab_size
