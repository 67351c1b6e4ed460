"""The message on disk: descriptor 0 copied into a file that has no name.

The file is opened with O_TMPFILE (or, where the filesystem lacks it, created and unlinked at
once), so it vanishes with the last descriptor, whatever kills the process. Memory stays at one
buffer whatever the message size.
"""

from __future__ import annotations

import errno
import os

from qqfilter.exitcodes import READ_ERROR, WRITE_ERROR, QueueError, describe

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

BUFFER = 262144
"""Bytes read from descriptor 0 at a time."""
WINDOW = 1 << 20
"""Bytes searched at a time."""


def anonymous_file(directory: str) -> int:
    """A read-write descriptor, mode 0600, on a new file in ``directory`` that has no name.

    Raises QueueError 53 when the directory cannot hold one.
    """
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        try:
            return os.open(directory, flags | os.O_TMPFILE, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
        path = os.path.join(directory, f".qqfilter-{os.getpid()}-{os.urandom(8).hex()}")
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)
        return fd
    except OSError as exc:
        raise QueueError(
            WRITE_ERROR, f"spool: cannot create a file in {directory}: {describe(exc)}"
        ) from None


_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
"""What open(O_TMPFILE) fails with where the filesystem or kernel lacks it."""


class Spool:
    """A message held in an anonymous file: its descriptor and size, read at any offset
    (pread), in windows of WINDOW bytes when searched, so a search costs one window of
    memory whatever the message size. ``received`` is how many bytes came in; more than
    ``size`` only when receiving stopped keeping them (``receive``'s ``keep``)."""

    __slots__ = ("fd", "received", "size")

    def __init__(self, fd: int, size: int, received: int) -> None:
        self.fd = fd
        self.size = size
        self.received = received

    @classmethod
    def receive(cls, source: int, directory: str, keep: int = 0) -> Spool:
        """Copy everything readable from descriptor ``source`` into a new spool file; with
        ``keep``, only the first ``keep`` bytes, the rest read and counted, not stored (a
        message over QQF_MAXSIZE must not fill the spool's disk before it is refused).

        A read error is 54, a write error (disk full, file size limit) 53; either way the
        partial file is closed, and so gone.
        """
        fd = anonymous_file(directory)
        size = received = 0
        try:
            while True:
                try:
                    chunk = os.read(source, BUFFER)
                except OSError as exc:
                    raise QueueError(
                        READ_ERROR, f"message: cannot read fd {source}: {describe(exc)}"
                    ) from None
                if not chunk:
                    break
                received += len(chunk)
                if keep and size + len(chunk) > keep:
                    chunk = chunk[: keep - size]
                write_all(fd, chunk, directory)
                size += len(chunk)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, received)

    def close(self) -> None:
        """Release the file; the kernel frees it with its last descriptor."""
        os.close(self.fd)

    def read(self, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from offset ``start`` (fewer only at the end)."""
        length = max(0, min(length, self.size - start))
        data = os.pread(self.fd, length, start)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), start + len(data))
            if not more:
                break
            data += more
        return data

    def search(self, pattern: re.Pattern[bytes], start: int, end: int, reach: int) -> bytes:
        """The first match of ``pattern`` (at most ``reach`` bytes long) in [start, end), or
        b"" when there is none."""
        position = start
        while position < end:
            window = self.read(position, min(WINDOW + reach, end - position))
            found = pattern.search(window)
            if found:
                return found.group(0)
            if position + len(window) >= end:
                return b""
            position += WINDOW
        return b""

    def find(self, needle: bytes, start: int, end: int) -> int:
        """The offset of ``needle`` in [start, end), or -1."""
        overlap = len(needle) - 1
        position = start
        while position < end:
            window = self.read(position, min(WINDOW + overlap, end - position))
            found = window.find(needle)
            if found >= 0:
                return position + found
            if position + len(window) >= end:
                return -1
            position += WINDOW
        return -1


def write_all(fd: int, data: bytes, directory: str) -> None:
    """Write all of ``data`` to ``fd``; a failure is 53, naming ``directory``."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as exc:
            reason = f"spool: cannot write in {directory}: {describe(exc)}"
            raise QueueError(WRITE_ERROR, reason) from None
