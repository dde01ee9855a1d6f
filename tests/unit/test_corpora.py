"""Bundled corpora: deterministic, well-formed, and right (answers check out, code tests pass)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from nemo_reason.data.corpora import CORPORA, build_bundled, generate
from nemo_reason.data.corpora.code import make_tests


@pytest.mark.parametrize("name", ["math", "mcq", "code", "prose"])
def test_deterministic_and_well_formed(name):
    a = list(generate(name, 60, seed=5))
    assert a == list(generate(name, 60, seed=5))
    assert a != list(generate(name, 60, seed=6))
    assert len(a) == 60
    for rec in a:
        assert rec["domain"] == name
        assert rec["difficulty"] in (1, 2, 3, 4, 5)
        assert "answer" in rec and isinstance(rec["text"], str) and rec["text"].strip()
        if name in ("math", "mcq"):
            assert rec["answer"] and rec["text"].endswith(f"Answer: {rec['answer']}")


def test_math_answers_are_right():
    recs = list(generate("math", 600, seed=11))
    assert {r["template"] for r in recs} >= {"add_sub", "linear", "system", "quadratic", "percent", "shopping"}
    for r in recs:
        q, ans = r["question"], float(r["answer"])
        if r["template"] == "linear":
            a, sign, b, c = re.match(r"Solve for x: (-?\d+)x ([+-]) (\d+) = (-?\d+)\.", q).groups()
            assert int(a) * ans + (int(b) if sign == "+" else -int(b)) == int(c)
        elif r["template"] == "quadratic":
            b, c = re.match(r"Find the larger root of x\^2 ([+-] \d+)x ([+-] \d+) = 0\.", q).groups()
            b, c = int(b.replace(" ", "")), int(c.replace(" ", ""))
            roots = [x for x in range(-20, 21) if x * x + b * x + c == 0]
            assert ans == max(roots)
        elif r["template"] == "system":
            a1, b1, c1, a2, b2, c2 = map(int, re.match(
                r"Solve the system (\d+)x \+ (\d+)y = (-?\d+) and (\d+)x - (\d+)y = (-?\d+)\.", q).groups())
            sols = [(x, y) for x in range(-20, 21) for y in range(-20, 21)
                    if a1 * x + b1 * y == c1 and a2 * x - b2 * y == c2]
            assert len(sols) == 1 and sum(sols[0]) == ans
        elif r["template"] == "add_sub":
            a, b = map(int, re.findall(r"\d+", q)[:2])
            assert ans == (a + b if "more" in q else a - b)
        # every solution ends on the answer it states
        assert r["solution"].rstrip(". dollarskm").endswith(r["answer"])


def test_mcq_choices():
    for r in generate("mcq", 300, seed=2):
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert r["choices"]["ABCD".index(r["answer"])] == r["answer_text"]
    assert len({r["subject"] for r in generate("mcq", 300, seed=2)}) >= 6


def test_code_tests_pass_against_the_reference_and_can_fail(tmp_path):
    recs = list(generate("code", 120, seed=3))
    assert len({r["template"] for r in recs}) >= 10
    script = []
    for i, r in enumerate(recs):
        script.append(f"def _t{i}():\n" + "\n".join("    " + ln for ln in (r["solution"] + "\n".join(r["tests"])).splitlines()))
        script.append(f"_t{i}()")
    path = tmp_path / "run_tests.py"
    path.write_text("\n".join(script) + "\nprint('all passed')\n")
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "all passed" in out.stdout, out.stderr
    # The same tests reject a wrong solution.
    r = recs[0]
    wrong = f"def {r['entry_point']}(*args):\n    return None\n"
    ns = {}
    exec(wrong, ns)
    with pytest.raises(AssertionError):
        for t in r["tests"]:
            exec(t, ns)
    assert make_tests("f", "def f(x):\n    return x * 2\n", [(3,), ([1],)]) == ["assert f(3) == 6", "assert f([1]) == [1, 1]"]


def test_prose_reads_sources_without_importing(tmp_path):
    code = ("import sys\nfrom nemo_reason.data.corpora import generate\n"
            "recs = list(generate('prose', 400, 1))\n"
            "assert 'antigravity' not in sys.modules and 'tkinter' not in sys.modules\n"
            "print(len(recs), len({r['text'] for r in recs}), min(len(r['text'].split()) for r in recs))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, distinct, min_words = map(int, out.stdout.split())
    assert n == distinct == 400 and min_words >= 30


def test_build_bundled_once(tmp_path):
    path = build_bundled("mcq", 50, seed=9, cache_dir=str(tmp_path))
    assert path.is_file() and len(path.read_text().splitlines()) == 50
    mtime = path.stat().st_mtime_ns
    assert build_bundled("mcq", 50, seed=9, cache_dir=str(tmp_path)) == path
    assert path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob("*.tmp*"))
    with pytest.raises(KeyError, match="did you mean"):
        build_bundled("mathh", 5)
    assert CORPORA.names() == ["code", "math", "mcq", "prose"]
