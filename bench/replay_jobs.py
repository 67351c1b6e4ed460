"""Benchmark: ``qqfilter replay`` of 1,000 messages with --jobs 1 and --jobs 2.

    .venv/bin/python bench/replay_jobs.py

Prints the wall time of each and their ratio, from one run (target: --jobs 2 at least 1.6x
faster on 2 cores). The messages are a mix: plain text, PDF and office attachments, zips of
documents, and executables (refused), each with its envelope beside it.
"""

import base64
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QQFILTER = str(Path(sys.executable).with_name("qqfilter"))


def attachment(data: bytes, name: str) -> bytes:
    return (
        b'Content-Type: application/octet-stream; name="' + name.encode() + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
    )


def message(number: int) -> bytes:
    head = (
        b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
        b"From: sender%d@example.com\nSubject: message %d\nMIME-Version: 1.0\n" % (number, number)
    )
    text = b"Content-Type: text/plain; charset=utf-8\n\n" + b"Some words.\n" * 40
    kind = number % 5
    if kind == 0:
        return head + b"Content-Type: text/plain\n\n" + b"Just text.\n" * 50
    if kind == 1:
        extra = attachment(b"%PDF-1.4\n" + os.urandom(30000), "report.pdf")
    elif kind == 2:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("a.txt", b"notes " * 500)
            archive.writestr("b.pdf", b"%PDF-1.4\n" + os.urandom(8000))
        extra = attachment(buffer.getvalue(), "docs.zip")
    elif kind == 3:
        extra = attachment(b"MZ\x90\x00" + os.urandom(20000), "invoice.pdf")
    else:
        extra = attachment(os.urandom(40000), "photo.jpg")
    return (
        head
        + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n'
        + text
        + b"\n--b\n"
        + extra
        + b"--b--\n"
    )


def run(directory: Path, jobs: int) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        [QQFILTER, "replay", "--jobs", str(jobs), str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "QQF_CONFIG": "/dev/null"},
    )
    took = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"replay failed: {out.stderr}")
    return took


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for number in range(1000):
            (directory / f"m{number:04d}.eml").write_bytes(message(number))
            (directory / f"m{number:04d}.env").write_bytes(
                b"Fsender%d@example.com\0Tbob@example.org\0\0" % number
            )
        run(directory, 1)  # warm the page cache and the .pyc files
        one = run(directory, 1)
        two = run(directory, 2)
    print(f"replay of 1,000 messages on {os.cpu_count()} cores:")
    print(f"  --jobs 1   {one:6.2f} s  ({one:.2f} ms a message)")
    print(f"  --jobs 2   {two:6.2f} s")
    print(f"  speed-up   {one / two:6.2f}x   (target: at least 1.6x)")


if __name__ == "__main__":
    main()
