"""What the per-message benchmarks share (bench/spam.py, bench/hygiene.py): a scratch world
with a stand-in qmail-queue that reads the message and a spool directory, a ``qqfilter serve``
in it, the two modes a message is submitted in, submitting one, and the CPU a process has used.

Not a test helper: the benchmarks print figures, they assert nothing.
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QQFILTER = str(Path(sys.executable).with_name("qqfilter"))


class World:
    """A scratch directory with ``qmail-queue`` (a shell script that reads and drops the
    message) and ``spool/``; ``base`` is the environment of a one-shot submission from
    TCPREMOTEIP ``client``, and ``modes`` maps "one-shot" and "resident" to (environment,
    server pid; 0 for none) once ``serve`` has started the server. Use it in ``with``."""

    def __init__(self, name: str, client: str = "192.0.2.1", **settings: str) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix=f"qqf-bench-{name}-"))
        queue = self.scratch / "qmail-queue"
        queue.write_text("#!/bin/sh\nexec cat >/dev/null\n")
        queue.chmod(0o755)
        (self.scratch / "spool").mkdir()
        self.base = {
            "PATH": "/usr/bin:/bin",
            "QQF_CONFIG": "/dev/null",
            "QQF_QMAILQUEUE": str(queue),
            "QQF_SPOOLDIR": str(self.scratch / "spool"),
            "TCPREMOTEIP": client,
            **settings,
        }
        self.server: subprocess.Popen | None = None
        self.modes: dict[str, tuple[dict[str, str], int]] = {"one-shot": (self.base, 0)}

    def serve(self, **settings: str) -> None:
        """Start ``qqfilter serve`` with ``settings`` (its own, server-only ones too) and add
        the resident mode (no fallback: a message the server did not take is an error)."""
        path = str(self.scratch / "qqfilter.sock")
        self.server = subprocess.Popen(
            [QQFILTER, "serve", "--socket", path],
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", **settings},
        )
        while not os.path.exists(path):
            time.sleep(0.02)
        resident = {**self.base, "QQF_SOCKET": path, "QQF_SOCKETFALLBACK": "tempfail"}
        self.modes["resident"] = (resident, self.server.pid)

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
        shutil.rmtree(self.scratch, ignore_errors=True)


def submit(env: dict[str, str], message: bytes, envelope: bytes) -> tuple[int, bytes]:
    """One message as qmail-smtpd hands it over (pipes on fd 0 and fd 1): (exit code, log)."""
    envelope_read, envelope_write = os.pipe()
    os.write(envelope_write, envelope)
    os.close(envelope_write)
    process = subprocess.Popen(
        [QQFILTER], stdin=subprocess.PIPE, stdout=envelope_read, stderr=subprocess.PIPE, env=env
    )
    os.close(envelope_read)
    _, log = process.communicate(message)
    return process.returncode, log


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user+sys) a live process and its live children have used (clock
    ticks: coarse, summed): a resident server's worker processes count as the server."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:  # it ended meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_of(child) for child in children)


def timed(run, server: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run()``: CPU of its children, and of the resident ``server``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    served = cpu_of(server) if server else 0.0
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu + (cpu_of(server) - served if server else 0.0)
