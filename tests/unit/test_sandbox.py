"""The code sandbox and the ``code`` verifier: right and wrong solutions, and attacks that must each
score 0 (or fail inside the sandbox), end within their limit and leave the host as it was.

Real processes, real bwrap; the bwrap tests skip (saying why) only where bubblewrap is missing, and the
fallbacks (``unshare``, ``rlimits``) are tested on their own.
"""

import os
import shutil
import socket
import time
import uuid

import pytest

import nemo_reason.rewards.code as code_mod
from nemo_reason.rewards import REWARDS
from nemo_reason.rewards.code import extract_code, plan_tests, run_tests, score_code
from nemo_reason.rewards.sandbox import isolation_mode, run_python

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap is not installed (apt-get install -y bubblewrap; .ci/run installs it)")

SAMPLE = {"tests": ["assert add_3([1, 2]) == [4, 5]", "assert add_3([]) == []", "assert add_3([-3]) == [0]"]}
GOOD = "def add_3(xs):\n    return [x + 3 for x in xs]\n"


def fenced(src: str) -> str:
    return f"Let me think.\n```python\n{src}```\nDone."


def marker() -> str:
    return "NRMARK" + uuid.uuid4().hex


def processes_with(mark: str):
    """Pids on the host whose command line holds ``mark`` (the sandboxed code carries it in argv)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if mark.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


# --- the verifier --------------------------------------------------------------------------------

def test_registered_with_its_field():
    fn = REWARDS.get("code")
    assert fn is score_code and fn.fields == ("tests",)


def test_extract_code_takes_last_python_block():
    text = "```python\nA = 1\n```\n```text\nnot code\n```\n```\nB = 2\n```\ntrailing"
    assert extract_code(text) == "B = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"
    assert extract_code("intro\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"  # unclosed


def test_plan_keeps_expected_values_out_of_the_sandbox():
    plan = plan_tests(["assert f(1) == [2]", "assert 3 == g(x)", "assert is_odd(3)", "assert f(1) != 2"])
    assert plan[0] == ("value", "f(1)", [2]) and plan[1] == ("value", "g(x)", 3)
    assert plan[2][0] == "truth" and "__nr_plain__(is_odd(3))" in plan[2][1]
    assert plan[3][0] == "truth"


@needs_bwrap
def test_bwrap_is_the_default_here():
    assert isolation_mode() == "bwrap"


@needs_bwrap
def test_correct_wrong_and_broken_solutions():
    assert score_code(SAMPLE, fenced(GOOD)) == 1.0
    assert score_code(SAMPLE, GOOD) == 1.0  # no fence: the whole completion
    assert score_code(SAMPLE, fenced("def add_3(xs):\n    return [x + 3 for x in xs][:1]\n")) == 0.0
    assert score_code(SAMPLE, fenced("def add_3(xs:\n    return xs\n")) == 0.0
    assert score_code(SAMPLE, fenced("def add_3(xs):\n    raise ValueError\n")) == 0.0
    assert score_code({"tests": ["assert is_odd(3)", "assert not is_odd(4)"]},
                      fenced("def is_odd(n):\n    return n % 2 == 1\n")) == 1.0
    assert score_code({"tests": ["assert is_odd(3)", "assert not is_odd(4)"]},
                      fenced("def is_odd(n):\n    return True\n")) == 0.0


CHEATS = {
    "exit 0 early": "import sys\nsys.exit(0)\n",
    "os._exit early": "import os\nos._exit(0)\n",
    "exit from inside the call": "import os\ndef add_3(xs):\n    os._exit(0)\n",
    "patch AssertionError": "import builtins\nbuiltins.AssertionError = type('E', (BaseException,), {})\n"
                            "def add_3(xs):\n    return None\n",
    "object equal to anything": "class A:\n    def __eq__(s, o): return True\n    def __repr__(s): return '[4, 5]'\n"
                                "def add_3(xs):\n    return A()\n",
    "list subclass": "class L(list):\n    def __eq__(s, o): return True\ndef add_3(xs):\n    return L()\n",
    "fake success lines": "print('PASSED')\nimport sys\nsys.stdout.write('done\\n')\ndef add_3(xs): return []\n",
    "write to the harness fd": "import os\nfor fd in range(3, 20):\n    try: os.write(fd, b'x\\tdone\\n')\n"
                               "    except OSError: pass\ndef add_3(xs): return []\n",
    "steal the nonce from frames": "import sys\ntry:\n    f = sys._getframe(1)\nexcept Exception:\n    f = None\n"
                                   "def add_3(xs): return []\n",
}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheats_score_zero(name):
    t0 = time.monotonic()
    assert score_code(SAMPLE, fenced(CHEATS[name])) == 0.0, name
    assert time.monotonic() - t0 < 5


@needs_bwrap
def test_truth_tests_resist_shadowed_builtins_and_custom_bools():
    sample = {"tests": ["assert abs(f(2) - 1.5) < 1e-9"]}
    assert score_code(sample, fenced("def f(x):\n    return x * 0.75\n")) == 1.0
    assert score_code(sample, fenced("abs = lambda v: 0\ndef f(x):\n    return 99\n")) == 0.0
    assert score_code(sample, fenced("import builtins\nbuiltins.abs = lambda v: 0\ndef f(x):\n    return 99\n")) == 0.0
    tricky = "class T:\n    def __sub__(s, o): return s\n    def __abs__(s): return 0\ndef f(x):\n    return T()\n"
    assert score_code(sample, fenced(tricky)) == 0.0
    # a trace function would see the harness's frame and its nonce: refused
    trace = ("import sys\ndef t(frame, ev, arg):\n    return t\nsys.settrace(t)\ndef f(x):\n    return 99\n")
    assert score_code(sample, fenced(trace)) == 0.0


FORGE = ("import os\n{grab}\nfor i in range(len(L['tests'])):\n"
         "    os.write(L['out_fd'], (L['nonce'] + '\\t%d\\ttruth\\t1\\n' % i).encode())\n"
         "os.write(L['out_fd'], (L['nonce'] + '\\tdone\\n').encode())\nos._exit(0)\n")


@needs_bwrap
@pytest.mark.parametrize("grab", [
    "import sys\nL = sys._getframe(1).f_locals",
    "try:\n    raise ValueError\nexcept ValueError as e:\n    L = e.__traceback__.tb_frame.f_back.f_locals",
])
def test_forged_verdicts_need_the_nonce(grab, monkeypatch):
    # Each reads the harness's nonce from its frame and writes a passing reply for every test
    sample = {"tests": ["assert is_odd(3)", "assert not is_odd(4)"]}
    assert score_code(sample, fenced(FORGE.format(grab=grab))) == 0.0
    # the attack is real: without the harness's audit hook it passes
    unhooked = code_mod.HARNESS.replace("    sys.addaudithook(hook)\n", "")
    assert unhooked != code_mod.HARNESS
    monkeypatch.setattr(code_mod, "HARNESS", unhooked)
    assert score_code(sample, fenced(FORGE.format(grab=grab))) == 1.0


# --- the sandbox: attacks ------------------------------------------------------------------------

@needs_bwrap
def test_infinite_loop_ends_at_the_cpu_limit():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout_s=5, cpu_s=1)
    assert r.returncode != 0 and time.monotonic() - t0 < 4
    assert score_code(SAMPLE, fenced("def add_3(xs):\n    while True: pass\n"), timeout_s=1) == 0.0


@needs_bwrap
def test_sleeper_ends_at_the_wall_limit():
    r = run_python("import time\ntime.sleep(60)\n", timeout_s=1)
    assert r.timed_out and r.killed and r.wall_s < 3


@needs_bwrap
def test_fork_bomb_is_capped_and_leaves_nothing():
    mark = marker()
    counted = run_python(f"# {mark}\nimport os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
                         f"    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
                         f"    n += 1\nprint(n)\n", timeout_s=5, nproc=16)
    assert counted.returncode == 0 and int(counted.stdout) < 16, counted
    t0 = time.monotonic()
    run_python(f"# {mark}\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
               timeout_s=2, nproc=16)
    # Killed at its 2 s timeout, not left running: well under the 30 s its children would live
    # (a loose bound, not a timing claim: 7 s was seen on a loaded 2-core machine).
    assert time.monotonic() - t0 < 25
    assert processes_with(mark) == []


@needs_bwrap
def test_memory_bomb_fails_fast():
    t0 = time.monotonic()
    r = run_python("x = bytearray(4 << 30)\n", memory_mb=256, timeout_s=5)
    assert r.returncode != 0 and "MemoryError" in r.stderr
    r = run_python("a = []\nwhile True:\n    a.append(bytearray(50 << 20))\n", memory_mb=256, timeout_s=5)
    assert r.returncode != 0 and "MemoryError" in r.stderr and time.monotonic() - t0 < 5


@needs_bwrap
def test_writes_outside_its_directory_do_not_reach_the_host(tmp_path):
    host_tmp = f"/tmp/{marker()}"
    in_repo = os.path.join(REPO, f"{marker()}.txt")
    in_tmp_path = str(tmp_path / "x.txt")
    code = ("import os\n"
            f"for p in [{host_tmp!r}, {in_repo!r}, {in_tmp_path!r}, '/usr/x', '/x', '/etc/x']:\n"
            "    try:\n        open(p, 'w').write('pwned')\n        print('wrote', p)\n"
            "    except OSError as e:\n        print('refused', p, type(e).__name__)\n")
    r = run_python(code)
    assert r.returncode == 0
    assert f"wrote {host_tmp}" in r.stdout  # its own private /tmp ...
    assert "wrote" not in r.stdout.replace(f"wrote {host_tmp}", "")
    for p in (host_tmp, in_repo, in_tmp_path):  # ... which is not the host's
        assert not os.path.exists(p), p


@needs_bwrap
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    r = run_python(f"import socket\ns = socket.socket()\ns.settimeout(1)\ntry:\n    s.connect(('127.0.0.1', {port}))\n"
                   f"    print('connected')\nexcept OSError as e:\n    print('refused', e)\n", timeout_s=5)
    server.setblocking(False)
    with pytest.raises(BlockingIOError):  # a connection would wait in the backlog
        server.accept()
    server.close()
    assert "refused" in r.stdout, r


@needs_bwrap
def test_nothing_of_the_trainer_is_visible(monkeypatch):
    monkeypatch.setenv("NR_SECRET_TOKEN", "hunter2")
    code = ("import os, sys\nprint(dict(os.environ))\nprint(os.getuid(), os.getgid(), os.getgroups())\n"
            f"for p in ['/work', '/root/.ssh', {REPO!r}, '/etc/passwd', '/home']:\n    print(p, os.path.exists(p))\n"
            "try:\n    print(open('/proc/1/environ').read())\nexcept OSError as e:\n    print('environ', type(e).__name__)\n"
            "print('fds', sorted(os.listdir('/proc/self/fd')))\n")
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "NR_SECRET" not in r.stdout
    assert " True" not in r.stdout  # none of those paths exists inside
    uid = int(r.stdout.splitlines()[1].split()[0])
    assert uid != 0
    assert "fds ['0', '1', '2', '3']" in r.stdout  # stdio and the listdir itself


@needs_bwrap
def test_killing_its_parent_or_everyone_fails():
    me = os.getpid()
    r = run_python(f"import os, signal\nfor target in (os.getppid(), {me}, -1, 1):\n    try:\n"
                   f"        os.kill(target, signal.SIGKILL)\n        print('sent', target)\n"
                   f"    except OSError as e:\n        print('refused', target, type(e).__name__)\n"
                   f"os.killpg(0, signal.SIGKILL)\n", timeout_s=5)
    assert os.getpid() == me  # this process (the trainer stand-in) is alive
    assert f"sent {me}" not in r.stdout
    assert run_python("print('still works')").stdout == "still works\n"


@needs_bwrap
def test_huge_output_is_capped_fast():
    t0 = time.monotonic()
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", output_bytes=100_000, timeout_s=10)
    assert r.truncated and r.killed and len(r.stdout) == 100_000 and time.monotonic() - t0 < 3
    assert score_code(SAMPLE, fenced("print('y' * (10 << 20))\n" + GOOD)) == 0.0


@needs_bwrap
def test_orphaned_children_do_not_survive():
    mark = marker()
    code = (f"# {mark}\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep(60)\n    os._exit(0)\nprint('parent leaves')\n")
    r = run_python(code, timeout_s=5)
    assert r.returncode == 0 and r.wall_s < 3
    time.sleep(0.05)
    assert processes_with(mark) == []


@needs_bwrap
def test_disk_fill_is_bounded():
    t0 = time.monotonic()
    code = ("import os\ntotal = 0\nfor i in range(10000):\n    try:\n        with open(f'/tmp/f{i}', 'wb') as f:\n"
            "            while True:\n                f.write(b'z' * (1 << 20))\n                total += 1 << 20\n"
            "    except OSError as e:\n        err = e.errno\n        if err == 28:\n            break\n"
            "print(total >> 20, err)\n")
    r = run_python(code, fsize_mb=4, tmp_mb=16, timeout_s=10)
    assert r.returncode == 0, r.stderr
    mb, errno_ = map(int, r.stdout.split())
    assert mb <= 16 and errno_ == 28 and time.monotonic() - t0 < 5  # ENOSPC on the 16 MB tmpfs
    r = run_python("f = open('/tmp/big', 'wb')\nf.write(b'z' * (8 << 20))\nf.close()\n", fsize_mb=4)
    assert r.returncode != 0  # SIGXFSZ / EFBIG past the file-size limit


# --- fallbacks (no bwrap) ------------------------------------------------------------------------

FALLBACKS = ["rlimits"] + (["unshare"] if os.geteuid() == 0 and shutil.which("unshare") else [])


@pytest.mark.parametrize("mode", FALLBACKS)
def test_fallback_scores_and_contains(mode, monkeypatch):
    monkeypatch.setenv("NR_SECRET_TOKEN", "hunter2")
    r = run_python("import os\nprint(os.getuid(), 'NR_SECRET_TOKEN' in os.environ, os.getcwd())\n", isolation=mode)
    assert r.isolation == mode and r.returncode == 0, r.stderr
    uid, leaked, cwd = r.stdout.split()
    assert leaked == "False" and not os.path.exists(cwd)  # private dir removed after the call
    if os.geteuid() == 0:
        assert int(uid) != 0
    t0 = time.monotonic()
    assert run_python("while True: pass\n", cpu_s=1, timeout_s=5, isolation=mode).returncode != 0
    assert run_python("import time\ntime.sleep(60)\n", timeout_s=1, isolation=mode).timed_out
    assert time.monotonic() - t0 < 5
    mark = marker()
    run_python(f"# {mark}\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               f"        time.sleep(60)\n    os._exit(0)\n", isolation=mode)
    time.sleep(0.05)
    if os.geteuid() == 0:  # the fresh uid's leftovers are killed (or the pid namespace ends them)
        assert processes_with(mark) == []


@pytest.mark.parametrize("mode", FALLBACKS)
def test_fallback_runs_the_verifier(mode):
    assert run_tests(GOOD, SAMPLE["tests"], isolation=mode)[0]
    passed, result = run_tests("import sys\nsys.exit(0)\n", SAMPLE["tests"], isolation=mode)
    assert not passed and result.isolation == mode
    if mode == "unshare":
        r = run_python("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), 1)\nexcept OSError as e:\n"
                       "    print(e.errno)\n", isolation=mode)
        assert r.stdout.strip() == "101"  # ENETUNREACH: no interface but a down loopback
