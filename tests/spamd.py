"""A real spamd for the tests, stand-ins that answer what spamd never would, and the samples.

``Spamd`` runs Debian's spamd (packages spamassassin + spamd; ``.ci/run`` installs them) in the
foreground with Debian's rules (/usr/share/spamassassin, and sa-update's if present) and the
project's few settings (fixtures/spamd: the rule engine's plugins, required_score 5, nothing
that asks the network), listening on a unix socket and on a loopback TCP port. It runs in a
session of its own, so that pausing or killing it reaches its preforked children too (they,
not the parent, accept connections). ``FakeSpamd`` answers every request with fixed bytes:
garbage, a cut answer, an error code. GTUBE is assembled at run time, so no file in the
repository is one.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
RULES = "/usr/share/spamassassin"
UPDATED_RULES = "/var/lib/spamassassin/4.000001/updates_spamassassin_org"

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*" + b"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
"""SpamAssassin 4's GTUBE string (20_body_tests.cf); it scores 1000."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Spamd:
    """One spamd process group; ``socket`` and ``port`` are where it listens."""

    def __init__(self) -> None:
        if not os.path.exists(SPAMD):
            raise RuntimeError("spamd not found: apt-get install spamassassin spamd (.ci/run)")
        self.dir = Path(tempfile.mkdtemp(prefix="qqf-spamd-"))
        self.dir.chmod(0o755)  # spamd's children run as nobody once a message comes
        self.socket = str(self.dir / "spamd.sock")
        self.port = free_port()
        self.log = self.dir / "spamd.log"
        rules = UPDATED_RULES if os.path.isdir(UPDATED_RULES) else RULES
        self.process = subprocess.Popen(
            [
                SPAMD,
                "--local",  # no network tests
                "--nouser-config",
                f"--siteconfigpath={FIXTURES / 'spamd'}",
                f"--configpath={rules}",
                f"--socketpath={self.socket}",
                f"--listen=127.0.0.1:{self.port}",
                f"--pidfile={self.dir / 'spamd.pid'}",
                f"--syslog={self.log}",
                "--max-children=2",
                "--min-children=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready()

    @property
    def unix(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"spamd exited {self.process.returncode}:\n{log}")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(5)
                    sock.connect(self.socket)
                    sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                    if b" 0 PONG" in sock.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("spamd did not answer PING within 60 s")

    def pause(self) -> None:
        """Stop the process group (SIGSTOP): connections are still accepted, nothing is
        answered."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def stop(self) -> None:
        """End the process group (a paused one too) and remove its directory."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeSpamd:
    """A unix socket that reads each request (head and Content-length bytes), keeps it in
    ``requests`` and answers ``answer``, then closes."""

    def __init__(self, directory: Path, answer: bytes) -> None:
        self.socket = str(directory / "fake-spamd.sock")
        self.answer = answer
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.socket)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def unix(self) -> str:
        return f"unix:{self.socket}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(10)
                try:
                    self.requests.append(_read_request(conn))
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        self.listener.close()
        self.thread.join(5)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(data) < len(head) + 4 + length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def message(body: bytes, *, subject: bytes = b"Lunch on Friday") -> bytes:
    """A plain message as qmail-smtpd queues it: its Received line and ordinary headers."""
    return (
        b"Received: from mail.example.com (HELO mail.example.com) (192.0.2.1)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
        b"Date: Tue, 24 Nov 2026 10:59:58 +0100\n"
        b"From: Alice Example <alice@example.com>\n"
        b"To: Bob Example <bob@example.org>\n"
        b"Subject: " + subject + b"\n"
        b"Message-ID: <20261124095958.1234@mail.example.com>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=us-ascii\n\n" + body
    )


CLEAN_BODY = (
    b"Hi Bob,\n\nare we still on for lunch on Friday? The place on the corner has\n"
    b"reopened, and I would like to try their soup. Noon would suit me.\n\nAlice\n"
)
