"""Shared harness: run the real ``qqfilter`` command the way qmail-smtpd does.

qmail-smtpd gives its queue program a pipe on fd 0 (the message) and a pipe on fd 1 (the
envelope), writes the message, then the envelope, and waits for the exit status. ``Submit``
does the same, with the stand-in qmail-queue (tests/fake_qmail_queue.py) as the next program.
"""

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.umask(0o022)  # files the tests write must pass qqfilter's check on writable control files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "fixtures"
QQFILTER = str(Path(sys.executable).with_name("qqfilter"))


def envelope(sender: bytes, *recipients: bytes) -> bytes:
    """An envelope exactly as qmail writes it."""
    return b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0"


class Outcome:
    """What one run of qqfilter did: exit status, log lines, what the stand-in received."""

    def __init__(self, returncode: int, stderr: bytes, record: Path, peak_kib: int = 0) -> None:
        self.returncode = returncode
        self.stderr = stderr.decode("utf-8", "replace")
        self.record = record
        self.peak_kib = peak_kib

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()

    @property
    def queued(self) -> bool:
        """Did the stand-in qmail-queue run?"""
        return (self.record / "message").exists()

    @property
    def message(self) -> bytes:
        return (self.record / "message").read_bytes()

    @property
    def envelope(self) -> bytes:
        return (self.record / "envelope").read_bytes()

    @property
    def fds(self) -> list[int]:
        return [int(fd) for fd in (self.record / "fds").read_text().split()]

    def field(self, key: str) -> str | None:
        """The value of ``key`` in the (single) text log line, unquoted."""
        import shlex

        (line,) = self.lines
        for part in shlex.split(line)[1:]:
            name, _, value = part.partition("=")
            if name == key:
                return value
        return None


def assert_clean_failure(out: Outcome, code: int) -> None:
    """Refused with ``code``: one log line, no traceback, nothing handed to qmail-queue."""
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.lines) == 1, out.stderr
    assert not out.queued


def added_fields(out, original: bytes) -> list[tuple[str, str]]:
    """The fields qqfilter put above ``original``, unfolded, in order."""
    assert out.message.endswith(original), out.stderr
    added = out.message[: len(out.message) - len(original)].decode("ascii")
    unfolded = added.replace("\n\t", " ")
    return [tuple(line.split(": ", 1)) for line in unfolded.splitlines()]  # type: ignore[misc]


def added_headers(out, original: bytes) -> dict[str, str]:
    """The fields qqfilter put above ``original``, unfolded, by name."""
    return dict(added_fields(out, original))


class Harness:
    """One test's world: a spool directory, a stand-in qmail-queue and its record directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.spool = tmp / "spool"
        self.spool.mkdir()
        self.record = tmp / "record"
        self.record.mkdir()
        self.queue = tmp / "qmail-queue"
        source = (HERE / "fake_qmail_queue.py").read_text().split("\n", 1)[1]
        self.queue.write_text(f"#!{sys.executable}\n{source}")
        self.queue.chmod(0o755)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "QQF_CONFIG": "",
            "QQF_SPOOLDIR": str(self.spool),
            "QQF_QMAILQUEUE": str(self.queue),
            "QQF_QMAILHOME": str(tmp / "qmail"),
            "FAKEQQ_DIR": str(self.record),
            "TCPREMOTEIP": "192.0.2.1",
        }
        # the default config path may exist on a developer's machine: point at an empty one
        empty = tmp / "empty.toml"
        empty.write_text("")
        self.env["QQF_CONFIG"] = str(empty)

    def submit(
        self,
        message: bytes,
        env_bytes: bytes,
        *,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        preexec_fn=None,
        measure: bool = False,
        command: list[str] | None = None,
        timeout: float = 60,
        pause: float = 0,
    ) -> Outcome:
        """Pipe ``message`` and ``env_bytes`` into qqfilter as qmail-smtpd does; wait.

        ``measure`` records the peak RSS of qqfilter and of the stand-in it became;
        ``command`` runs another program in qqfilter's place (the installed qmail wrapper);
        ``pause`` seconds pass between the first half of the message and the rest (a slow
        SMTP client).
        """
        self._forget_last_run()
        environ = {**self.env, **(env or {})}
        command = command or [QQFILTER]
        peak_file = self.tmp / "peak-rss"
        if measure:
            command = [sys.executable, str(HERE / "peak_rss.py"), QQFILTER]
            environ["PEAK_RSS_FILE"] = str(peak_file)
        env_read, env_write = os.pipe()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            bufsize=0,
            stdout=env_read,
            stderr=subprocess.PIPE,
            env=environ,
            pass_fds=pass_fds,
            preexec_fn=preexec_fn,
        )
        os.close(env_read)

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):
                if pause:
                    proc.stdin.write(message[: len(message) // 2])
                    time.sleep(pause)
                    message_rest = message[len(message) // 2 :]
                else:
                    message_rest = message
                proc.stdin.write(message_rest)
            proc.stdin.close()
            with open(env_write, "wb", buffering=0) as out, contextlib.suppress(BrokenPipeError):
                out.write(env_bytes)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        stderr = proc.stderr.read()
        proc.wait(timeout)
        writer.join(timeout)
        proc.stderr.close()
        peak = int(peak_file.read_text()) if measure else 0
        return Outcome(proc.returncode, stderr, self.record, peak)

    def submit_for_reply(
        self, message: bytes, env_bytes: bytes, env: dict[str, str]
    ) -> tuple[Outcome, bytes]:
        """Submit with a custom-reply pipe on fd 6 (QQF_ERRFD=6); returns what was written."""
        read_end, write_end = os.pipe()
        try:
            out = self.submit(
                message,
                env_bytes,
                env={**env, "QQF_ERRFD": "6"},
                pass_fds=(6, write_end),
                preexec_fn=lambda: os.dup2(write_end, 6),
            )
        finally:
            os.close(write_end)
        reply = os.read(read_end, 1024)
        os.close(read_end)
        return out, reply

    def submit_files(self, message: Path, env_file: Path, env: dict[str, str] | None = None):
        """Canned files as fd 0 and fd 1: ``qqfilter <message 1<envelope``."""
        self._forget_last_run()
        with open(message, "rb") as msg, open(env_file, "rb") as envf:
            proc = subprocess.run(
                [QQFILTER],
                stdin=msg,
                stdout=envf,
                stderr=subprocess.PIPE,
                env={**self.env, **(env or {})},
                timeout=60,
            )
        return Outcome(proc.returncode, proc.stderr, self.record)

    def _forget_last_run(self) -> None:
        for path in self.record.iterdir():
            path.unlink()

    def spool_is_empty(self) -> bool:
        return not any(self.spool.iterdir())


@pytest.fixture(scope="session")
def clamd_server():
    """One real clamd for the whole run, on a unix socket and a loopback TCP port."""
    from clamav import Clamd

    server = Clamd()
    yield server
    server.stop()


@pytest.fixture
def spare_clamd():
    """A clamd of the test's own, to pause or kill."""
    from clamav import Clamd

    server = Clamd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nsd_server():
    """One real DNS server (nsd) for the whole run, serving fixtures/zones on loopback."""
    from nameserver import Nsd

    server = Nsd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dkim_world():
    """Keys made for this run and a real nsd publishing them, with the DMARC and SPF records
    of the DKIM and DMARC tests (tests/dkimworld.py)."""
    from dkimworld import World

    world = World()
    yield world
    world.stop()


class Resident:
    """A ``qqfilter serve`` process on a socket of its own."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.socket = str(directory / "qqfilter.sock")
        self.log = directory / "serve.log"
        self.process = subprocess.Popen(
            [QQFILTER, "serve", "--socket", self.socket, *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 (the process keeps it)
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        give_up = time.monotonic() + 30
        while "serving on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"qqfilter serve did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture(scope="session")
def resident_server(tmp_path_factory):
    """One resident server for the suite's pipeline cases run both ways."""
    server = Resident(tmp_path_factory.mktemp("resident"))
    yield server
    server.stop()


def pytest_generate_tests(metafunc) -> None:
    """Modules with ``BOTH_MODES = True`` run every ``qq`` test one-shot and resident (but
    those marked ``one_shot``); elsewhere, the tests marked ``both_modes`` run both ways."""
    both = getattr(metafunc.module, "BOTH_MODES", False)
    one_shot = metafunc.definition.get_closest_marker("one_shot")
    marked = metafunc.definition.get_closest_marker("both_modes")
    if "qq" in metafunc.fixturenames and ((both and not one_shot) or marked):
        metafunc.parametrize("qq", ["one-shot", "resident"], indirect=True)


@pytest.fixture
def qq(tmp_path: Path, request) -> Harness:
    harness = Harness(tmp_path)
    if getattr(request, "param", "one-shot") == "resident":
        server = request.getfixturevalue("resident_server")
        # no quiet fallback to in-process work: a server problem must fail the test
        harness.env.update(QQF_SOCKET=server.socket, QQF_SOCKETFALLBACK="tempfail")
    yield harness
    assert harness.spool_is_empty(), "a file was left in the spool directory"
