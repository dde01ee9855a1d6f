"""The ``code`` verifier: the completion's last fenced Python block run against ``sample["tests"]``.

``score_code(sample, completion)`` is 1.0 only if every test passes, else 0.0. Tests are ``assert``
lines (the bundled corpus' format, ``assert f(1, 2) == [3]``; see data/corpora/code.py). The code and
the tests run in one sandboxed process (rewards/sandbox.py: its own uid, no network, nothing of the
trainer visible, limits on time, memory, files, processes and output), never in the trainer's.

Why it cannot be fooled by the program it runs:

- **Value tests** (``assert CALL == LITERAL``, either side): the expected literal never enters the
  sandbox. The harness sends back the *value* of ``CALL``, which must be made of exact built-in
  types (no subclass, no object with its own ``__eq__``), as its ``repr``; the trainer parses it with
  ``ast.literal_eval`` and compares it there. A program that exits early, patches ``assert``,
  ``AssertionError`` or ``builtins``, or prints a fake success line cannot produce the right values
  without computing them.
- **Other asserts** (``assert is_prime(7)``, ``assert abs(f(2) - 1.5) < 1e-9``): evaluated in the
  sandbox with the original builtins (the solution's rebinding of ``abs`` or ``builtins.abs`` is
  ignored) and every call's result checked to be a plain value before any operator touches it. The
  verdict travels with a per-run random nonce that the harness reads from stdin before the solution
  runs and keeps only in a local variable; an audit hook then refuses frame, trace, ``gc`` and
  ``ctypes`` introspection and opening ``/proc``, so the solution cannot find it to forge a line. A
  solution that rebinds attributes of a module the test itself uses (``math.isclose``) could still
  fool such a test: prefer value tests.
- The reply must hold one line per test, in order, and a closing line, each with the nonce; anything
  missing, extra or malformed scores 0.

The solution runs with ``__name__ == "solution"`` (a ``__main__`` block does not run), stdin at EOF,
and its prints going to stderr. Left out: tests that need files or imports set up by the harness,
partial credit, and languages other than Python.
"""

from __future__ import annotations

import ast
import marshal
import re
import secrets
from typing import Dict, List, Optional, Tuple

from nemo_reason.rewards import field, register_reward
from nemo_reason.rewards.sandbox import SandboxResult, run_python

TIMEOUT_S = 6.0  # wall time for the solution plus all of its tests
MEMORY_MB = 512

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)$", re.DOTALL | re.IGNORECASE)
_PY_LANGS = {"", "python", "python3", "py"}

# The program run in the sandbox. Everything it uses after the solution runs is bound to a local of
# _main before, so rebinding globals, builtins or module attributes does not reach it.
HARNESS = r'''
import sys, os, marshal, builtins
def _main():
    nonce, solution, tests = marshal.loads(sys.stdin.buffer.read())  # marshal: built in, no import cost
    out_fd = os.dup(1)
    _write, _encode, _type, _id, _repr, _bool, _len = os.write, str.encode, type, id, repr, bool, len
    _compile, _eval, _exec, _dict, _realpath, _fsdecode = compile, eval, exec, dict, os.path.realpath, os.fsdecode
    _BaseException, _str = BaseException, str
    original = _dict(builtins.__dict__)
    atoms = {_id(t) for t in (int, float, complex, str, bytes, bool, type(None))}
    seqs = {_id(t) for t in (list, tuple, set, frozenset)}
    dict_id = _id(dict)

    def plain(v, depth=0):
        t = _id(_type(v))
        if t in atoms:
            return v
        if depth > 60:
            raise ValueError("value nested too deeply")
        if t in seqs:
            for x in v:
                plain(x, depth + 1)
            return v
        if t == dict_id:
            for k in v:
                plain(k, depth + 1)
                plain(v[k], depth + 1)
            return v
        raise TypeError("the value is not made of built-in types")

    def emit(*fields):
        _write(out_fd, _encode("\t".join((nonce,) + fields) + "\n"))

    blocked = {"sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
               "sys.setprofile", "object.__getattr__", "gc.get_objects", "gc.get_referrers",
               "gc.get_referents", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
               "os.system", "subprocess.Popen", "os.symlink", "os.link", "pty.spawn"}

    def hook(event, args):
        if event in blocked or event.startswith("ctypes."):
            raise PermissionError("refused in the code sandbox: " + event)
        if event == "open" and args:
            path, t = args[0], _type(args[0])
            if t is int:
                return
            # a path-like object may answer differently when open() asks again: refuse those
            if (t is not str and t is not bytes) or _realpath(_fsdecode(path)).startswith("/proc"):
                raise PermissionError("refused in the code sandbox: open of /proc or of a path-like object")

    sys.stdout.flush()
    os.dup2(2, 1)  # the solution's prints go to stderr; only the harness writes to out_fd
    sys.addaudithook(hook)
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        _exec(_compile(solution, "<solution>", "exec"), ns)
    except _BaseException:
        emit("load", "error")
    scope = _dict(ns)
    scope.update(original)
    scope["__builtins__"] = original
    scope["__nr_plain__"] = plain
    for i, (kind, expr) in enumerate(tests):
        try:
            v = plain(_eval(_compile(expr, "<test>", "eval"), scope))
            emit(_str(i), "value", _repr(v)) if kind == "value" else emit(_str(i), "truth", "1" if _bool(v) else "0")
        except _BaseException:
            emit(_str(i), "error", "")
    emit("done")
_main()
'''


class _WrapCalls(ast.NodeTransformer):
    """``f(x) + g(y)`` -> ``__nr_plain__(f(x)) + __nr_plain__(g(y))``: every call's result checked."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        return ast.Call(func=ast.Name(id="__nr_plain__", ctx=ast.Load()), args=[node], keywords=[])


def _literal(node: ast.AST):
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def plan_tests(tests: List[str]) -> List[Tuple[str, str, object]]:
    """Each assert line as (kind, expression sent to the sandbox, expected value or None)."""
    planned = []
    for line in tests:
        tree = ast.parse(line.strip())
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
            raise ValueError(f"a code test must be one assert statement, got {line!r}")
        test = tree.body[0].test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            left, right = test.left, test.comparators[0]
            for call, lit in ((left, right), (right, left)):
                ok, expected = _literal(lit)
                if ok and not _literal(call)[0]:
                    planned.append(("value", ast.unparse(call), expected))
                    break
            else:
                planned.append(("truth", ast.unparse(ast.fix_missing_locations(_WrapCalls().visit(test))), None))
            continue
        planned.append(("truth", ast.unparse(ast.fix_missing_locations(_WrapCalls().visit(test))), None))
    return planned


def extract_code(completion: str) -> str:
    """The last fenced Python (or unlabelled) block; an unclosed final fence counts; else everything."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PY_LANGS]
    if blocks:
        return blocks[-1]
    tail = completion.rsplit("```", 1)
    if len(tail) == 2 and (m := _OPEN_FENCE.match("```" + tail[1])):
        return m.group(1)
    return completion


def _verdict(result: SandboxResult, nonce: str, planned) -> bool:
    if result.killed:
        return False
    lines = result.stdout.split("\n")
    if lines[-1] != "":
        return False
    lines = lines[:-1]
    if len(lines) != len(planned) + 1 or lines[-1] != f"{nonce}\tdone":
        return False
    for i, ((kind, _, expected), line) in enumerate(zip(planned, lines)):
        parts = line.split("\t", 3)
        if len(parts) != 4 or parts[0] != nonce or parts[1] != str(i) or parts[2] != kind:
            return False
        if kind == "truth":
            if parts[3] != "1":
                return False
            continue
        try:
            value = ast.literal_eval(parts[3])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
        try:
            if not (value == expected):
                return False
        except Exception:  # e.g. comparing sets of unorderable mixes never raises, but stay safe
            return False
    return True


def run_tests(code: str, tests: List[str], *, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB,
              isolation: Optional[str] = None) -> Tuple[bool, SandboxResult]:
    """Run ``code`` then ``tests`` in the sandbox; (all passed, the raw sandbox result). ``isolation``
    forces a sandbox mode (see rewards/sandbox.py), by default the strongest available."""
    planned = plan_tests(tests)
    nonce = secrets.token_hex(16)
    payload = marshal.dumps((nonce, code, [(k, e) for k, e, _ in planned]))
    result = run_python(HARNESS, stdin=payload, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
    return _verdict(result, nonce, planned), result


@register_reward("code", doc="last fenced Python block run against sample['tests'] in a sandbox; 1 if all pass",
                 fields=("tests",))
def score_code(sample: Dict, completion: str, *, timeout_s: Optional[float] = None) -> float:
    tests = field(sample, "tests", "code")
    if not tests:
        return 0.0  # nothing checked is nothing earned
    passed, _ = run_tests(extract_code(completion), list(tests), timeout_s=timeout_s or TIMEOUT_S)
    return 1.0 if passed else 0.0
