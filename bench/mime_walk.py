"""Benchmark: the streaming MIME walk against the stdlib parser, and its memory on 100 MB.

    .venv/bin/python bench/mime_walk.py

Prints, from one run (these machines are noisy, so the ratio is what counts):
- a 28 MB message with one base64 attachment: email.parser.BytesParser (parse, then the
  payload of every part) against qqfilter.checks.mime.walk.Walk (every part, with its head decoded);
  the target is a ratio of at least 20;
- a 100 MB message: the peak RSS of a fresh process that walks it, and of one that runs the
  whole attachment check on it with BADLOADERTYPE scanning every base64 byte; the target is
  under 64 MB;
- the adversarial shapes of tests/test_mime_shapes.py (near-miss delimiters and ``begin``
  lines, long lines, empty parts, junk in base64, folded headers, From lines, encoded
  messages), each at 1 MB and at 8 MB: the walk's CPU time per MB and the bytes it read per
  byte of message; linear time means the two columns agree.
"""

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def message(attachment_bytes: int) -> bytes:
    """A text part and one base64 attachment of ``attachment_bytes`` random bytes."""
    data = os.urandom(attachment_bytes)
    return (
        b"From: a@example.com\nTo: b@example.org\nSubject: big\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="=_b"\n\n--=_b\n'
        b"Content-Type: text/plain; charset=utf-8\n\nThe file is attached.\n--=_b\n"
        b'Content-Type: application/octet-stream; name="data.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data) + b"--=_b--\n"
    )


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def compare(path: Path) -> None:
    from email.parser import BytesParser

    from qqfilter.checks.mime.walk import Walk
    from qqfilter.spool import Spool

    data = path.read_bytes()

    def stdlib() -> None:
        parsed = BytesParser().parsebytes(data)
        for part in parsed.walk():
            part.get_payload()

    with open(path, "rb") as stream:
        fd, size = stream.fileno(), os.fstat(stream.fileno()).st_size

        def ours() -> None:
            parts = list(Walk(Spool(fd, size, size)))
            assert parts[-1].head, "the attachment's head was decoded"

        walk = best_of(5, ours)
    parser = best_of(2, stdlib)
    print(f"{len(data) / 1e6:.1f} MB message, one base64 attachment:")
    print(f"  email.parser.BytesParser  {parser * 1000:8.1f} ms")
    print(f"  qqfilter's Walk           {walk * 1000:8.1f} ms")
    print(f"  ratio                     {parser / walk:8.1f}x   (target: at least 20x)")


CHILD = """
import os, sys
from qqfilter.checks import mime
from qqfilter.checks.mime.walk import Walk
from qqfilter.envelope import parse
from qqfilter.message import Connection, Message
from qqfilter.settings import load
from qqfilter.spool import Spool
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
if sys.argv[2] == "nothing":
    pass
elif sys.argv[2] == "walk":
    parts = list(Walk(Spool(fd, size, size)))
else:
    settings, errors = load({"BADLOADERTYPE": "M", "QQF_QMAILHOME": sys.argv[3],
                             "QQF_CONFIG": "/dev/null"})
    assert not errors, errors
    message = Message(Spool(fd, size, size), parse(b"Fa@b\\0Tc@d\\0\\0"), Connection("192.0.2.1"))
    mime.check(message, settings)
"""


def peak(path: Path, what: str, home: str) -> int:
    """Peak RSS in KiB of ``CHILD``, forked from a small process (tests/peak_rss.py): a
    child forked from this big one would start with this one's peak."""
    with tempfile.NamedTemporaryFile() as record:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tests" / "peak_rss.py"),
                sys.executable,
                "-c",
                CHILD,
                str(path),
                what,
                home,
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PEAK_RSS_FILE": record.name},
        )
        return int(Path(record.name).read_text())


def shapes() -> None:
    """The walk on each adversarial shape at 1 MB and 8 MB: CPU time per MB, bytes read."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_mime_shapes import MB, SHAPES, walk_cost

    print("adversarial shapes: walk CPU time per MB (bytes read per byte of message)")
    print(f"  {'shape':28} {'at 1 MB':>20} {'at 8 MB':>20}")
    for name, build in SHAPES.items():
        figures = []
        for size in (MB, 8 * MB):
            data = build(size)
            seconds, read = walk_cost(data, runs=3)
            per_mb = seconds * 1000 / (len(data) / MB)
            figures.append(f"{per_mb:7.1f} ms/MB ({read / len(data):.1f}x)")
        print(f"  {name:28} {figures[0]:>20} {figures[1]:>20}")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    shapes()
    with tempfile.TemporaryDirectory() as scratch:
        small = Path(scratch) / "28mb.eml"
        small.write_bytes(message(21 << 20))
        compare(small)
        small.unlink()
        big = Path(scratch) / "100mb.eml"
        big.write_bytes(message(75 << 20))
        home = Path(scratch) / "qmail"
        (home / "control").mkdir(parents=True)
        (home / "control" / "badloadertypes").write_bytes(
            (ROOT / "docs" / "control" / "badloadertypes").read_bytes()
        )
        baseline = peak(big, "nothing", str(home))
        size = big.stat().st_size / 1e6
        print(
            f"{size:.1f} MB message, peak RSS of a fresh process (its imports alone: "
            f"{baseline / 1024:.1f} MB):"
        )
        print(f"  walk                      {peak(big, 'walk', str(home)) / 1024:8.1f} MB")
        print(
            f"  attachment check + loader {peak(big, 'check', str(home)) / 1024:8.1f} MB"
            "   (target: under 64 MB)"
        )


if __name__ == "__main__":
    main()
