"""A real rspamd for the tests, and a fake one that answers badly.

``Rspamd`` runs Debian's rspamd in the foreground with the project's minimal configuration
(fixtures/rspamd/rspamd.conf: Debian's rules and actions, one normal worker on a loopback
port, no controller, proxy or redis, no network lookups, a short public-suffix list so that
it starts in well under a second rather than 15). Its database, pid and log files go to a
directory of its own. rspamd will not run as root without ``--insecure``; the tests run as
whoever runs them, so the flag is given only then. ``.ci/run`` installs the package.

``FakeHttp`` stands where rspamd should be and answers each request with canned bytes (or
closes mid-answer), for the paths where a server fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from clamav import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rspamd"
RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
"""rspamd's own GTUBE (compiled into librspamd-server): the "reject" variant."""


class Rspamd:
    """One rspamd process; ``url`` is its normal worker."""

    def __init__(self) -> None:
        if not os.path.exists(RSPAMD):
            raise RuntimeError("rspamd not found: apt-get install rspamd (see .ci/run)")
        self.dir = Path(tempfile.mkdtemp(prefix="qqf-rspamd-"))
        self.port = free_port()
        command = [
            RSPAMD,
            "-f",
            "-c",
            str(FIXTURES / "rspamd.conf"),
            f"--var=TESTDIR={self.dir}",
            f"--var=FIXTURES={FIXTURES}",
            f"--var=PORT={self.port}",
        ]
        if os.geteuid() == 0:
            command.append("--insecure")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "stdout", "wb"),  # noqa: SIM115 (the process keeps it)
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers go with it (killpg)
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f"rspamd exited {self.process.returncode}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                    if b"pong" in _read_all(sock):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("rspamd did not answer /ping within 60 s")

    def log(self) -> str:
        text = ""
        for name in ("stdout", "rspamd.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")[-4000:]
        return text

    def _signal(self, number: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, number)

    def pause(self) -> None:
        """Stop it and its workers (SIGSTOP): connections are accepted, nothing answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """End it and its workers (a paused one too) and remove its directory."""
        self._signal(signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


class FakeHttp:
    """A loopback server that reads each request (head and Content-Length body) and answers
    with ``answer``, then closes; ``url`` is where it listens."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        """Each request's head (request line and header fields)."""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(10)
                    data = b""
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    self.requests.append(head)
                    length = 0
                    for line in head.split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(body) < length and (chunk := conn.recv(65536)):
                        body += chunk
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def stop(self) -> None:
        self.listener.close()


def message(body: bytes, *, subject: bytes = b"lunch") -> bytes:
    """A plain message as qmail-smtpd would have queued it (its Received line first)."""
    return (
        b"Received: from mail.example.com (HELO mail.example.com) (192.0.2.1)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
        b"From: Alice <alice@example.com>\nTo: bob@example.org\nSubject: " + subject + b"\n"
        b"Message-ID: <20261124100000.1@example.com>\n"
        b"Date: Tue, 24 Nov 2026 10:00:00 +0000\n\n" + body
    )
