"""The custom-reply pipe of a patched qmail-smtpd: is descriptor N one, and writing to it.

Kept apart (it imports only os and stat, and fcntl only when there is a pipe) because the
resident client uses it too: the pipe belongs to the process qmail-smtpd started, so only that
process can look at it.
"""

import os
import stat

CANDIDATES = (4, 6)
"""The descriptors patched qmails use (see shared/DESIGN.md section 1)."""


def usable(fd: int) -> bool:
    """True when ``fd`` is a pipe open for writing: an unpatched qmail-smtpd has none there."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        import fcntl  # an extension loaded from disk: paid only where there is a pipe to ask

        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except OSError:
        return False


def write(fd: int, line: bytes) -> None:
    """Write the reply line; a failure leaves qmail-smtpd with its own 451 text, nothing worse."""
    try:  # noqa: SIM105 (contextlib is an import the resident client does without)
        os.write(fd, line)
    except OSError:
        pass
