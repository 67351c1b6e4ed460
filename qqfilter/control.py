"""qmail control files, read the way qmail reads them, from QQF_QMAILHOME/control.

An absent file means "not set", as in qmail. A file that exists and cannot be read is a
configuration error (exit 55, "unable to read configuration"), as in qmail: going on without
it would apply a policy the administrator did not write. So is a file that users other than
its owner may write, or whose owner is neither root nor this process's user: whoever can
write qmail's control files decides what mail is refused.
"""

import os
import stat

from qqfilter.exitcodes import CONFIG_ERROR, QueueError


def lines(qmailhome: str, name: str) -> list[str] | None:
    """The file's lines, trailing white space removed, blank lines and ``#`` comments left
    out; None when the file does not exist."""
    path = os.path.join(qmailhome, "control", name)
    data = read_trusted(path, f"control/{name}")
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    return [line.rstrip() for line in text.split("\n") if line.strip() and line[0] != "#"]


def first_line(qmailhome: str, name: str) -> str | None:
    """The first line of the file (qmail's control_rldef), or None when it is absent or empty."""
    found = lines(qmailhome, name)
    return found[0] if found else None


def read_trusted(path: str, name: str, limit: int = 1 << 20) -> bytes | None:
    """The first ``limit`` bytes of ``path``; None when it does not exist. Raises QueueError
    55 when it cannot be read or is not trusted (see unsafe)."""
    try:
        return trusted_bytes(path, limit)
    except Untrusted as exc:
        raise QueueError(CONFIG_ERROR, f"{name}: {path} {exc}") from None
    except OSError as exc:
        raise unreadable(name, path, exc) from None


def trusted_lines(path: str, name: str) -> list[str] | None:
    """The non-blank lines of a trusted file (users/assign, a list file), as latin-1 text;
    None when it does not exist. Raises QueueError 55 as read_trusted does."""
    data = read_trusted(path, name, 1 << 30)
    if data is None:
        return None
    return [line for line in data.decode("latin-1").split("\n") if line.strip()]


class Untrusted(Exception):
    """A file that exists and must not be believed; the text says why (see unsafe)."""


def trusted_bytes(path: str, limit: int = 1 << 30) -> bytes | None:
    """The first ``limit`` bytes of ``path``, None when it does not exist: the one place that
    decides whether a file may be believed. Raises Untrusted, or OSError when it cannot be
    read."""
    try:
        with open(path, "rb") as stream:
            why = unsafe(os.fstat(stream.fileno()))
            if why:
                raise Untrusted(why)
            return stream.read(limit)
    except FileNotFoundError:
        return None


def unsafe(status: os.stat_result) -> str:
    """Why a file with ``status`` must not be believed ("" when it may). /dev/null (an empty
    configuration) is a character device that anyone may write, and is believed."""
    if stat.S_ISCHR(status.st_mode):
        return ""
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file: refused"
    if status.st_mode & 0o022:
        return "is writable by users other than its owner: refused (chmod go-w)"
    if status.st_uid not in (0, os.geteuid()):
        return f"belongs to uid {status.st_uid}, neither root nor this user: refused"
    return ""


def unreadable(name: str, path: str, exc: OSError) -> QueueError:
    """The configuration error (55) for a file of qmail's that exists and cannot be read."""
    return QueueError(CONFIG_ERROR, f"{name}: cannot read {path}: {exc.strerror or exc}")
