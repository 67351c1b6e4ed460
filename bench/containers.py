"""What opening a container costs: per format, a 10 MB archive listed and each member's head
read (as the mime check reads it), in wall time and peak RSS of a fresh process; and the
import cost of the libraries the readers load when they meet their formats (libarchive-c;
oletools and olefile for Office documents; inflate64 and pyppmd for zips in those methods).

Each measurement runs in its own process (python -I), so a peak is that format's alone.
Needs the archivers tests/test_containers.py uses (7zz, gcab, arj, bsdtar, genisoimage).

    .venv/bin/python bench/containers.py
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_containers import EVERY, made  # noqa: E402  (the writers of the tests)

SIZE = 10 << 20
MEMBERS = 10

MEASURE = r"""
import os, resource, sys, time
started = time.perf_counter()
from qqfilter.checks.mime import archives
from qqfilter.checks.mime.walk import HEAD
path = sys.argv[1]
size = os.path.getsize(path)
count = 0
with open(path, "rb") as stream:
    found = archives.sniff(stream.read(HEAD))
    stream.seek(0)
    for entry in archives._reader(found)(stream, size):
        count += 1
        if not (entry.encrypted or entry.unread):
            for _ in entry.read(HEAD):
                pass
wall = (time.perf_counter() - started) * 1000
print(f"{found} {count} {wall:.0f}")
"""

IMPORT = r"""
import sys, time
started = time.perf_counter()
__import__(sys.argv[1])
print(f"{(time.perf_counter() - started) * 1000:.1f}")
"""


def run(*args: str) -> tuple[str, int]:
    """Run python -I with ``args`` under tests/peak_rss.py (a fork of a small process: the
    peak is the command's own, not this process's); its output and peak RSS in KiB."""
    with tempfile.NamedTemporaryFile() as peak:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "peak_rss.py"), sys.executable, "-I", *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PEAK_RSS_FILE": peak.name},
        )
        return proc.stdout, int(Path(peak.name).read_text())


def members() -> tuple[tuple[str, bytes], ...]:
    """Ten 1 MB members, half random (incompressible), half text."""
    out = []
    for number in range(MEMBERS):
        if number % 2:
            data = os.urandom(SIZE // MEMBERS)
        else:
            data = (b"%08d the quarterly figures, line by line\n" % number) * (
                SIZE // MEMBERS // 48
            )
        out.append((f"member{number}.dat", data))
    return tuple(out)


def main() -> None:
    _, bare = run("-c", "pass")
    print("import cost (fresh process, python -I; peak RSS over a bare one):")
    for module in ("libarchive", "olefile", "oletools.olevba", "inflate64", "pyppmd"):
        runs = [run("-c", IMPORT, module) for _ in range(5)]
        best = min(float(out) for out, _ in runs)
        grown = max(kib for _, kib in runs) - bare
        print(f"  {module:<16} {best:6.1f} ms   +{grown / 1024:5.1f} MB")
    print(f"\nopening a 10 MB container ({MEMBERS} members, 1 MB each, half random), listing")
    print(f"it and reading each member's head; a bare python -I peaks at {bare / 1024:.1f} MB:")
    print(f"  {'format':<12} {'sniffed':<11} {'members':>7} {'wall ms':>8} {'peak MB':>8}")
    data = members()
    with tempfile.TemporaryDirectory() as scratch:
        for fmt in EVERY:
            path = Path(scratch, "archive")
            path.write_bytes(made(fmt, data))
            runs = [run("-c", MEASURE, str(path)) for _ in range(3)]
            found, count, _ = runs[0][0].split()
            wall = min(int(out.split()[2]) for out, _ in runs)
            peak = max(kib for _, kib in runs)
            print(f"  {fmt:<12} {found:<11} {count:>7} {wall:>8} {peak / 1024:>8.1f}")


if __name__ == "__main__":
    main()
