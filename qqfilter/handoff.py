"""Handing an accepted message to the next queue program, as qmail-queue expects it.

The next program replaces this process (``exec``), so its exit status reaches qmail-smtpd
unchanged: no window where we report success for a message it failed to queue. ``execute`` is
the one exec of the project: the one-shot program and the resident client (which runs in the
process qmail-smtpd started) both call it, so this module imports C modules only (every
module the client imports is paid by every message); what preparing a message needs (the
spool, the exit codes of its failures) is imported there.
"""

import _signal  # not signal: that one imports enum, ~5 ms of start-up for the client
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # no __future__ annotations here: even that import shows in the client
    from qqfilter.spool import Spool

    Edits = tuple[tuple[int, int, bytes], ...]


def message_fd(spool: "Spool", headers: bytes, directory: str, edits: "Edits" = ()) -> int:
    """A descriptor, at offset 0, holding ``headers`` followed by the spooled bytes, unchanged
    but for ``edits`` ((start, end, new bytes), sorted, not overlapping: a field a check
    rewrote or removed).

    Without headers or edits it is the spool itself; else a second anonymous file that the
    kernel fills from the first (no copy through Python) around the edits. Failures are 53,
    before anything is handed on.
    """
    if not headers and not edits:
        os.lseek(spool.fd, 0, os.SEEK_SET)
        return spool.fd
    from qqfilter.spool import anonymous_file, write_all

    fd = anonymous_file(directory)
    try:
        write_all(fd, headers, directory)
        offset = 0
        for start, end, new in edits:
            _copy(spool, fd, directory, offset, start)
            write_all(fd, new, directory)
            offset = end
        _copy(spool, fd, directory, offset, spool.size)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy(spool: "Spool", fd: int, directory: str, offset: int, end: int) -> None:
    """The spool's bytes [offset, end) appended to ``fd``, by the kernel."""
    from qqfilter.exitcodes import WRITE_ERROR, QueueError

    while offset < end:
        try:
            sent = os.sendfile(fd, spool.fd, offset, end - offset)
        except OSError as exc:
            raise QueueError(
                WRITE_ERROR, f"spool: cannot write in {directory}: {exc.strerror}"
            ) from None
        if sent == 0:
            raise QueueError(WRITE_ERROR, f"spool: the file in {directory} shrank while copied")
        offset += sent


def envelope_fd(raw: bytes) -> int:
    """A descriptor, at offset 0, holding the envelope bytes (in memory: never blocks)."""
    fd = os.memfd_create("qqfilter-envelope", os.MFD_CLOEXEC)
    os.write(fd, raw)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def execute(program: str, message: int, envelope: int) -> str:
    """Become ``program`` with fd 0 = ``message`` and fd 1 = ``envelope``; returns only when
    it cannot, with the reason for the log line (the caller then exits 71).

    Descriptors this process opened are close-on-exec, so only 0, 1, 2 and whatever our own
    caller passed down survive. CPython ignores SIGPIPE and SIGXFSZ from its start (so a
    full pipe or a file size limit is an error we report, not a death); an exec keeps ignored
    signals ignored, so both are put back to their defaults for qmail-queue.
    """
    os.dup2(message, 0)
    os.dup2(envelope, 1)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    try:
        os.execv(program, [program])
    except OSError as exc:
        return f"qmail-queue: cannot run {program}: {exc.strerror}"
