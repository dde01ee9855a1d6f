"""Run untrusted Python in a separate, locked-down process: ``run_python(code) -> SandboxResult``.

The code never runs in the caller's process. Each call starts a fresh interpreter (the base
installation's, ``sys.base_prefix``, in isolated mode ``-I -S``: no venv, no site-packages, no user
site, no ``PYTHON*`` variables; the code gets the standard library only) under these walls:

- **bubblewrap** (``bwrap``, the Debian package; preferred): new pid, network, ipc and uts namespaces;
  a root filesystem holding only read-only binds of ``/usr``, ``/lib*``, ``/bin`` and the Python
  prefix, a fresh ``/proc`` and ``/dev``, and one writable private ``/tmp`` (a tmpfs of ``tmp_mb``,
  gone with the call). Nothing of ``/work``, ``/root``, the repo or the host's ``/tmp`` is visible;
  the environment is cleared (``PATH`` only); no descriptor but the three pipes is inherited.
- **an unprivileged uid**: started as root, the code runs under a fresh uid per call (never 0, no
  groups, no capabilities, ``no_new_privs``), dropped with ``setpriv`` before the interpreter starts.
  A fresh uid, not ``nobody``, because RLIMIT_NPROC counts per uid machine-wide: concurrent calls
  would share one budget, and ``kill(-1)`` would reach every ``nobody`` process. (bwrap's own
  ``--uid`` in a user namespace is not used as root: the real uid stays 0 and NPROC is not enforced.)
  Started as a normal user, the code keeps that uid inside a user namespace.
- **rlimits** (``prlimit``) on CPU seconds, address space, file size, open files, processes; the
  caller enforces wall time and reads at most ``output_bytes`` of stdout and of stderr. At the wall
  limit or the output cap the whole sandbox is SIGKILLed: bwrap's process group, and with it the pid
  namespace (``--die-with-parent``), so orphaned and double-forked children end too.

Fallbacks when bwrap is missing or cannot start (chosen once per process, with a warning naming what
is lost; ``isolation=`` forces one):

- ``unshare`` (util-linux, root only): new network, pid (killed with the call) and ipc namespaces,
  same uid drop and rlimits, a private working directory; the filesystem stays visible (readable
  where the mode allows), ``/tmp`` and other world-writable places stay writable, disk use is
  bounded per file only.
- ``rlimits``: uid drop (when root), rlimits, own session, private working directory, clean
  environment; the network is reachable and the filesystem visible. Leftover processes of the
  call's uid are killed after it (root only), since nothing else ends them.

Left out: seccomp filters, cgroup memory/pids accounting (rlimits stand in), GPU or network access
for the code, and any Python-level policing (that belongs to the caller's harness, e.g. rewards/code).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "unshare", "rlimits")
_PATH = "/usr/local/bin:/usr/bin:/bin"
_UID_RANGE = (1_000_000, 2_000_000_000)  # far above any real account; no passwd entry needed


@dataclass
class SandboxResult:
    returncode: int  # the interpreter's exit status (bwrap reports a signal death as 128+N)
    stdout: str
    stderr: str
    timed_out: bool  # the wall limit was reached and the sandbox was killed
    killed: bool  # we killed it: wall limit or output cap
    truncated: bool  # stdout or stderr passed output_bytes
    wall_s: float
    isolation: str  # which of ISOLATIONS ran it


def base_python() -> str:
    """The base installation's interpreter (not the venv's shim), resolved to a real path."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    if sys.prefix != sys.base_prefix and not os.path.realpath(exe).startswith(os.path.realpath(sys.base_prefix)):
        for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
            cand = os.path.join(sys.base_prefix, "bin", name)
            if os.path.exists(cand):
                exe = cand
                break
    return os.path.realpath(exe)


def _reachable_by_others(path: str) -> bool:
    """Can any user traverse to ``path`` (every ancestor o+x)? /root is 0700, so pyenv there is not."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _python_for(mode: str, uid: Optional[int]) -> str:
    """The interpreter for ``mode``: bwrap re-creates the prefix's parents world-traversable; the
    fallbacks see the host's modes, so a dropped uid that cannot reach the base prefix gets the
    system ``python3`` instead (else it would start with a foreign or missing standard library)."""
    python = base_python()
    if mode == "bwrap" or uid is None or _reachable_by_others(os.path.join(sys.base_prefix, "lib")):
        return python
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        raise RuntimeError(f"code sandbox ({mode}): the unprivileged uid cannot reach {sys.base_prefix} and there is "
                           f"no /usr/bin/python3; install bubblewrap (apt-get install -y bubblewrap) or python3")
    return os.path.realpath(system)


def _fresh_uid() -> int:
    return secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0]


def _limits(cpu_s: float, memory_mb: int, fsize_mb: int, nofile: int, nproc: int) -> List[str]:
    cpu = max(1, int(round(cpu_s)))
    return ["prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={memory_mb << 20}", f"--fsize={fsize_mb << 20}",
            f"--nofile={nofile}", f"--nproc={nproc}", "--core=0", "--"]


def _drop(uid: Optional[int]) -> List[str]:
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--bounding-set=-all", "--inh-caps=-all"]


def _ro_tree(python: str) -> List[str]:
    """bwrap arguments: read-only system dirs and the Python prefix, with world-traversable parents."""
    args: List[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = os.path.realpath(sys.base_prefix)
    roots = {prefix, os.path.dirname(os.path.dirname(python))}
    for root in sorted(roots):
        if root.startswith("/usr/") or root == "/usr" or root == "/":
            continue
        # parents made by bwrap copy nothing of the host's modes; /root is 0700 on the host and
        # would stop the dropped uid from reaching the prefix, so create them 0755 explicitly
        parts = root.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
        args += ["--ro-bind", root, root]
    return args


def _bwrap_argv(python: str, tmp_mb: int, uid: Optional[int]) -> List[str]:
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", _PATH,
            "--hostname", "sandbox"]
    if uid is None:  # not root: an unprivileged bwrap needs a user namespace
        argv += ["--unshare-user", "--disable-userns"]
    argv += _ro_tree(python)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp", "--"]
    return argv


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid`` until none is left (fallback modes, root only)."""
    for _ in range(50):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    uid_line = next(line for line in f if line.startswith("Uid:"))
                if int(uid_line.split()[1]) == uid:
                    found = True
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, StopIteration, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


def _start(argv: Sequence[str], cwd: Optional[str]) -> subprocess.Popen:
    return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env={"PATH": _PATH}, close_fds=True, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _kill_sandbox(proc: subprocess.Popen, mode: str) -> None:
    """SIGKILL the sandbox and return once every process in it is gone.

    With a pid namespace (bwrap, unshare) the launcher's child is the namespace's init: killing it
    makes the kernel kill and reap everything inside before init itself exits, and the launcher exits
    right after, so waiting for the launcher is waiting for the whole sandbox. (Killing the launcher
    instead would return while the namespace is still being torn down.)
    """
    if mode in ("bwrap", "unshare"):
        for child in _children(proc.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc)


def _communicate(proc: subprocess.Popen, stdin: bytes, timeout_s: float, cap: int):
    """Feed stdin, read both pipes up to ``cap`` bytes each until EOF, the deadline or the cap."""
    deadline = time.monotonic() + timeout_s
    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    if stdin:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    pending = memoryview(stdin)
    timed_out = truncated = False
    while sel.get_map():
        if proc.poll() is not None:
            # it exited; a pipe still open belongs to an orphan (fallback modes only: a pid namespace
            # is gone by the time its launcher exits), so drain briefly instead of waiting for it
            deadline = min(deadline, time.monotonic() + 0.2)
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = proc.poll() is None
            break
        for key, _ in sel.select(min(left, 0.5)):
            fd = key.fd
            if fd == stdin_fd:
                try:
                    n = os.write(fd, pending[:65536])
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # it stopped reading: the rest is not needed
                    n = len(pending)
                pending = pending[n:]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(fd)
                continue
            buf = out[fd]
            room = cap - len(buf)
            buf += chunk[:room]
            if len(chunk) > room:
                truncated = True
        if truncated:
            break
    sel.close()
    return bytes(out[proc.stdout.fileno()]), bytes(out[proc.stderr.fileno()]), timed_out, truncated


def run_python(code: str, *, stdin: bytes | str = b"", timeout_s: float = 10.0, cpu_s: Optional[float] = None,
               memory_mb: int = 512, fsize_mb: int = 8, tmp_mb: int = 32, nofile: int = 64, nproc: int = 32,
               output_bytes: int = 1 << 20, isolation: Optional[str] = None) -> SandboxResult:
    """Run ``code`` (at most 120,000 bytes) with ``python -I -S -c code`` in a sandbox; ``stdin`` is fed to it.

    ``timeout_s`` is wall time, ``cpu_s`` CPU seconds (default: ``timeout_s``), ``memory_mb`` the
    address-space limit, ``fsize_mb`` the largest file it may write, ``tmp_mb`` the size of its
    private ``/tmp`` (bwrap), ``nofile``/``nproc`` open files and processes, ``output_bytes`` how much
    of stdout and of stderr is kept (past it the sandbox is killed). ``isolation`` forces one of
    ``ISOLATIONS``; by default the strongest that works here (see ``isolation_mode``).
    """
    mode = isolation or isolation_mode()
    if mode not in ISOLATIONS:
        raise ValueError(f"unknown sandbox isolation '{mode}'; use one of {', '.join(ISOLATIONS)}")
    if len(code.encode()) > 120_000:  # one argv string is capped at 128 KiB by the kernel
        raise ValueError(f"sandbox code is {len(code.encode())} bytes; run_python takes at most 120,000 as "
                         f"`-c` code: pass the bulk on stdin and have a short program read it (see rewards/code.py)")
    if isinstance(stdin, str):
        stdin = stdin.encode()
    root = os.geteuid() == 0
    uid = _fresh_uid() if root else None
    python = _python_for(mode, uid)
    inner = _limits(cpu_s if cpu_s is not None else timeout_s, memory_mb, fsize_mb, nofile, nproc) + _drop(uid)
    inner += [python, "-I", "-S", "-c", code]
    workdir = None
    if mode == "bwrap":
        argv = _bwrap_argv(python, tmp_mb, uid) + inner
    else:
        workdir = tempfile.mkdtemp(prefix="nr_sandbox_")
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        pre = (["unshare", "--net", "--pid", "--ipc", "--fork", "--kill-child", "--mount-proc"]
               if mode == "unshare" else [])
        argv = pre + inner
    t0 = time.perf_counter()
    proc = _start(argv, workdir)
    try:
        out, err, timed_out, truncated = _communicate(proc, stdin, timeout_s, output_bytes)
        killed = timed_out or truncated
        if killed:
            _kill_sandbox(proc, mode)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:  # output closed early but it keeps running
            _kill_sandbox(proc, mode)
            killed = True
            rc = proc.wait()
    finally:
        if proc.poll() is None:
            _kill_sandbox(proc, mode)
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if mode != "bwrap":
            _kill_group(proc)  # children left in its process group
            if uid is not None:
                _kill_uid(uid)
            shutil.rmtree(workdir, ignore_errors=True)
    return SandboxResult(returncode=rc, stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                         timed_out=timed_out, killed=killed, truncated=truncated,
                         wall_s=time.perf_counter() - t0, isolation=mode)


_LOST = {
    "unshare": "the filesystem is visible and world-writable places (/tmp) are writable; disk use is "
               "bounded per file only",
    "rlimits": "the network is reachable, the filesystem is visible and world-writable places are writable"
               "; orphaned children are killed only when running as root",
}


_probe_lock = threading.Lock()


def isolation_mode() -> str:
    """The strongest isolation that starts here, probed once: bwrap, else unshare (root), else rlimits."""
    with _probe_lock:  # worker threads may ask at once; probe (and warn) only once
        return _probe()


@functools.lru_cache(maxsize=None)
def _probe() -> str:
    reasons = []
    candidates = ["bwrap", "unshare"] if os.geteuid() == 0 else ["bwrap"]
    for mode in candidates:
        if shutil.which(mode) is None:
            reasons.append(f"{mode}: not installed")
            continue
        probe = run_python("print(6 * 7)", timeout_s=10, isolation=mode)
        if probe.returncode == 0 and probe.stdout.strip() == "42":
            break
        reasons.append(f"{mode}: rc {probe.returncode}: {probe.stderr.strip()[-300:]}")
    else:
        mode = "rlimits"
    if mode != "bwrap":
        log.warning("code sandbox: bubblewrap is unavailable (%s); falling back to '%s' isolation, where %s. "
                    "Install it with `apt-get install -y bubblewrap`.", "; ".join(reasons), mode, _LOST[mode])
    if os.geteuid() != 0 and mode != "bwrap":
        log.warning("code sandbox: not running as root, so the code keeps this process's uid")
    return mode
