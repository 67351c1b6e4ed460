#!/usr/bin/env python3
"""Stand-in for qmail-queue, which no package registry ships.

Records what it was given (fd 0 -> message, fd 1 -> envelope, its open descriptors -> fds,
its argv -> argv, the mode of fd 0 -> mode0, a line in ``runs`` each time it runs) in
$FAKEQQ_DIR, then exits with $FAKEQQ_EXIT (default 0) or, when $FAKEQQ_SIGNAL is set, kills
itself with that signal.
"""

import os
import sys


def record(fd: int, path: str) -> None:
    """Copy ``fd`` to ``path`` a buffer at a time, so the stand-in's own memory stays small."""
    with open(path, "wb") as out:
        while chunk := os.read(fd, 1 << 16):
            out.write(chunk)


def main() -> None:
    where = os.environ["FAKEQQ_DIR"]
    with open(os.path.join(where, "runs"), "a") as out:
        out.write("run\n")
    listed = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    fds = [fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")]  # minus listdir's own
    with open(os.path.join(where, "fds"), "w") as out:
        out.write(" ".join(map(str, fds)))
    with open(os.path.join(where, "argv"), "w") as out:
        out.write("\0".join(sys.argv))
    with open(os.path.join(where, "mode0"), "w") as out:
        out.write(oct(os.fstat(0).st_mode & 0o7777))
    record(0, os.path.join(where, "message"))
    record(1, os.path.join(where, "envelope"))
    if os.environ.get("FAKEQQ_SIGNAL"):
        os.kill(os.getpid(), int(os.environ["FAKEQQ_SIGNAL"]))
    sys.exit(int(os.environ.get("FAKEQQ_EXIT", "0")))


main()
