"""QHPSI, s/qmail's scanner interface: run a scanner program on the message file.

The scanner is run without a shell as ``QHPSI <file> QHPSIARG1 QHPSIARG2 QHPSIARG3``. As in
indimail, ``QHPSI`` may hold several words split on white space, and a word ``%s`` takes the
file's place. The program's exit code says the verdict: ``QHPSIRC`` infected, ``QHPSIRN``
clean, anything else (a crash, a deadline, a program that cannot run) means it could not
decide.

The scan ends when the program exits or QQF_SCANTIMEOUT passes, whichever is first; then its
process group (it and what it started) is killed. Its output is read as it comes and only the
last MAX_OUTPUT bytes are kept (for a clamscan-style ``FOUND`` line): no amount of output costs
memory, and a process it started in a session of its own that keeps the pipe open cannot hold
the answer, since nothing after the exit or the deadline waits without a bound.

The scanner needs a path, and the spool has none: the spool file gets a name in the spool
directory (a hard link where the kernel allows, else a copy) for as long as the scanner runs,
mode 0600, removed before ``scan`` returns. A scanner such as clamdscan that hands the path to
a clamd running as another user needs ``--fdpass`` or ``--stream`` (see docs/virus.md).
"""

import contextlib
import os
import re
import signal
import time

from qqfilter.exitcodes import describe

CLEAN = "clean"
INFECTED = "infected"
UNKNOWN = "unknown"

MAX_OUTPUT = 65536
"""The scanner's output kept (the last bytes): for a ``FOUND`` line, never more."""
LAST_READS = 64
"""Reads of what is left in the pipe once the scanner has exited (64 KiB each, at most)."""
REAP_WAIT = 1.0
"""Seconds to wait for a killed scanner to be gone before leaving it to a reaper thread."""
TICK = 0.05
"""Seconds between looks at the scanner where the kernel has no pidfd to wait on."""
FOUND = re.compile(rb": ([\x21-\x7e][\x20-\x7e]{0,119}?) FOUND\s*$", re.MULTILINE)
"""A clamscan-style report line, ``<path>: <signature> FOUND``."""


class Report:
    """What the scanner said: CLEAN, INFECTED (``name`` if it printed one) or UNKNOWN, why."""

    __slots__ = ("name", "result", "why")

    def __init__(self, result: str, *, name: str = "", why: str = "") -> None:
        self.result = result
        self.name = name
        self.why = why


def command(program: str, path: str, extra: tuple[str, ...]) -> list[str]:
    """The argv for ``program`` (``QHPSI``) scanning ``path``, with QHPSIARG1..3 in ``extra``."""
    words = program.split()
    if "%s" in words[1:]:
        argv = [path if word == "%s" else word for word in words]
    else:
        argv = [words[0], path, *words[1:]]
    return argv + [arg for arg in extra if arg]


def scan(
    fd: int,
    directory: str,
    program: str,
    extra: tuple[str, ...],
    *,
    infected: int,
    clean: int,
    timeout: float,
    environ: dict[str, str] | None = None,
) -> Report:
    """Run the scanner on the spool file ``fd`` within ``timeout`` seconds.

    While the file has a name, SIGTERM removes it (and the scanner) before the process dies
    of that signal as it would have: the name must not outlive the scan.
    """
    path = os.path.join(directory, f".qqfilter-qhpsi-{os.getpid()}-{os.urandom(6).hex()}")
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (a replay worker): nothing to catch there
        previous = None
    try:
        try:
            _link_or_copy(fd, path)
        except OSError as exc:
            why = f"cannot give the message a name in {directory}: {describe(exc)}"
            return Report(UNKNOWN, why=why)
        return _run(command(program, path, extra), infected, clean, timeout, environ)
    except _Terminated:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("unreachable: SIGTERM ends the process")


class _Terminated(BaseException):
    """SIGTERM arrived during a scan (a BaseException, so nothing on the way catches it)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _link_or_copy(fd: int, path: str) -> None:
    """Make ``path`` hold the spool file: a hard link to it where possible, else a copy."""
    try:
        os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
        return
    except OSError:
        pass  # not an O_TMPFILE spool, or no /proc: copy it
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            sent = os.sendfile(out, fd, offset, size - offset)
            if not sent:
                break
            offset += sent
    finally:
        os.close(out)


def _run(
    argv: list[str], infected: int, clean: int, timeout: float, environ: dict[str, str] | None
) -> Report:
    """Run ``argv`` in its own process group, reading its output as it comes, within one
    deadline for the whole scan.

    The scanner's exit is its verdict: output that something it started (in its own session,
    out of reach of the group kill) keeps open is not waited for. When the scanner exits or the
    deadline passes, its process group is killed, our end of the pipe closed, and the wait for
    it bounded (REAP_WAIT), so nothing it left behind can hold the answer or the named file.
    """
    import subprocess

    name = os.path.basename(argv[0])
    started = time.monotonic()
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
            env=environ,
        )
    except OSError as exc:
        return Report(UNKNOWN, why=f"{name}: cannot run: {describe(exc)}")
    assert child.stdout is not None
    try:
        output, exited = _collect(child.stdout.fileno(), child.pid, started + timeout)
    except BaseException:
        _kill_group(child.pid)
        child.stdout.close()
        raise
    _kill_group(child.pid)  # not reaped yet, so the group is still the scanner's
    child.stdout.close()
    try:
        status = child.wait(REAP_WAIT)
    except subprocess.TimeoutExpired:  # killed, yet not gone (a disk wait): reaped later
        import threading

        threading.Thread(target=child.wait, daemon=True).start()
        return Report(UNKNOWN, why=f"{name}: no verdict within {timeout:g} s, killed")
    if not exited:
        return Report(UNKNOWN, why=f"{name}: no verdict within {timeout:g} s, killed")
    if status < 0:
        return Report(UNKNOWN, why=f"{name}: killed by signal {-status}")
    if status == infected:
        found = FOUND.search(output)
        return Report(INFECTED, name=found.group(1).decode("ascii") if found else "")
    if status == clean:
        return Report(CLEAN)
    took = time.monotonic() - started
    return Report(UNKNOWN, why=f"{name}: exit code {status} after {took:.1f} s")


def _collect(pipe: int, pid: int, deadline: float) -> tuple[bytes, bool]:
    """Read ``pipe`` until process ``pid`` exits (True) or ``deadline`` passes (False); the
    last MAX_OUTPUT bytes of what it said. The process is left unreaped (its group stays its
    own for the kill)."""
    import select

    os.set_blocking(pipe, False)
    try:
        watch = os.pidfd_open(pid)  # readable when pid exits
    except (AttributeError, OSError):  # not Linux 5.3+: look every TICK
        watch = -1
    poller = select.poll()
    poller.register(pipe, select.POLLIN)
    if watch >= 0:
        poller.register(watch, select.POLLIN)
    tail = bytearray()
    reading = True
    try:
        while True:
            if _exited(pid):
                if reading:
                    _read(pipe, tail, LAST_READS)  # what it wrote before exiting, bounded
                return bytes(tail[-MAX_OUTPUT:]), True
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(tail[-MAX_OUTPUT:]), False
            wait = min(left, 60.0) if watch >= 0 else min(left, TICK)  # poll takes a C int
            for fd, _ in poller.poll(int(wait * 1000) + 1):
                if fd == pipe and not _read(pipe, tail, 16):
                    poller.unregister(pipe)  # end of output: now only its exit is awaited
                    reading = False
    finally:
        if watch >= 0:
            os.close(watch)


def _read(pipe: int, tail: bytearray, reads: int) -> bool:
    """Up to ``reads`` reads of what is waiting in ``pipe`` onto ``tail``, which keeps only
    the last MAX_OUTPUT bytes (and at most twice that between trims); False at end of file."""
    for _ in range(reads):
        try:
            chunk = os.read(pipe, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        tail += chunk
        if len(tail) > 2 * MAX_OUTPUT:
            del tail[:-MAX_OUTPUT]
    return True


def _exited(pid: int) -> bool:
    """Has ``pid`` exited? It stays a zombie, so its process group is not yet free."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
