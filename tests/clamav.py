"""A real clamd for the tests, and the samples it should find.

``Clamd`` runs Debian's clamd in the foreground with the project's signatures
(fixtures/clamav), listening on a unix socket and on a loopback TCP port; ``.ci/run`` installs
the package. Samples are built here, in code: the EICAR test file is assembled at run time,
so no file in the repository is one.
"""

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
MARKER = b"QQFILTER-TEST-" + b"SIGNATURE-7f3a9c"
MARKER_NAME = "QQfilter.Test.Marker.UNOFFICIAL"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Clamd:
    """One clamd process; ``socket`` and ``port`` are where it listens."""

    def __init__(self, *, stream_max: str = "200M") -> None:
        if not os.path.exists(CLAMD):
            raise RuntimeError("clamd not found: apt-get install clamav-daemon (see .ci/run)")
        self.dir = Path(tempfile.mkdtemp(prefix="qqf-clamd-"))
        self.socket = str(self.dir / "clamd.sock")
        self.port = free_port()
        self.config = self.dir / "clamd.conf"
        self.config.write_text(
            f"LocalSocket {self.socket}\n"
            f"TCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {FIXTURES / 'clamav'}\n"
            f"LogFile {self.dir / 'clamd.log'}\n"
            f"StreamMaxLength {stream_max}\n"
            "Foreground yes\nMaxThreads 4\nLogVerbose no\n"
        )
        self.process = subprocess.Popen(
            [CLAMD, "--config-file", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
                log = (self.dir / "clamd.log").read_text(errors="replace")
                raise RuntimeError(f"clamd exited {self.process.returncode}:\n{log}")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(2)
                    sock.connect(self.socket)
                    sock.sendall(b"zPING\0")
                    if sock.recv(16) == b"PONG\0":
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("clamd did not answer PING within 60 s")

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections are still accepted, nothing is answered."""
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """End it (a paused one too) and remove its directory."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def mime(*parts: bytes, subject: bytes = b"test", boundary: bytes = b"=_b1") -> bytes:
    """A multipart/mixed message of ``parts`` (each: headers, blank line, body)."""
    head = (
        b"Received: from mail.example.com (HELO mail.example.com) (192.0.2.1)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
        b"From: Alice <alice@example.com>\nTo: bob@example.org\nSubject: " + subject + b"\n"
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="' + boundary + b'"\n\n'
        b"This is a MIME message.\n"
    )
    body = b"".join(b"--" + boundary + b"\n" + part + b"\n" for part in parts)
    return head + body + b"--" + boundary + b"--\n"


TEXT_PART = b"Content-Type: text/plain; charset=utf-8\n\nSee the attachment.\n"


def attachment(data: bytes, name: bytes, *, encoding: bytes = b"base64") -> bytes:
    """One attachment part; ``encoding`` base64 or 7bit (the bytes as they are)."""
    body = base64.encodebytes(data) if encoding == b"base64" else data
    return (
        b'Content-Type: application/octet-stream; name="' + name + b'"\n'
        b'Content-Disposition: attachment; filename="' + name + b'"\n'
        b"Content-Transfer-Encoding: " + encoding + b"\n\n" + body
    )


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def forwarded(inner: bytes) -> bytes:
    """A message/rfc822 part carrying ``inner``: a forward."""
    return b"Content-Type: message/rfc822\nContent-Disposition: attachment\n\n" + inner


def samples() -> dict[str, bytes]:
    """EICAR in each wrapping a virus arrives in."""
    return {
        "plain": mime(TEXT_PART, attachment(EICAR, b"eicar.txt", encoding=b"7bit")),
        "base64": mime(TEXT_PART, attachment(EICAR, b"eicar.txt")),
        "zipped": mime(TEXT_PART, attachment(zipped("docs/eicar.txt", EICAR), b"docs.zip")),
        "nested": mime(
            b"Content-Type: text/plain\n\nForwarded message below.\n",
            forwarded(mime(attachment(EICAR, b"eicar.txt"), subject=b"inner", boundary=b"=_b2")),
        ),
    }
