"""qmail control files, read the way qmail reads them, from QQF_QMAILHOME/control.

An absent file means "not set", as in qmail. A file that exists and cannot be read is a
configuration error (exit 55, "unable to read configuration"), as in qmail: going on without
it would apply a policy the administrator did not write.
"""

import os

from qqfilter.exitcodes import CONFIG_ERROR, QueueError


def lines(qmailhome: str, name: str) -> list[str] | None:
    """The file's lines, trailing white space removed, blank lines and ``#`` comments left
    out; None when the file does not exist."""
    path = os.path.join(qmailhome, "control", name)
    try:
        with open(path, "rb") as stream:
            data = stream.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unreadable(f"control/{name}", path, exc) from None
    text = data.decode("utf-8", "replace")
    return [line.rstrip() for line in text.split("\n") if line.strip() and line[0] != "#"]


def first_line(qmailhome: str, name: str) -> str | None:
    """The first line of the file (qmail's control_rldef), or None when it is absent or empty."""
    found = lines(qmailhome, name)
    return found[0] if found else None


def unreadable(name: str, path: str, exc: OSError) -> QueueError:
    """The configuration error (55) for a file of qmail's that exists and cannot be read."""
    return QueueError(CONFIG_ERROR, f"{name}: cannot read {path}: {exc.strerror or exc}")
