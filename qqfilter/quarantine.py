"""The quarantine: refused messages kept for the administrator (QQF_QUARANTINE).

A refusal leaves the message with the sender's server; a false refusal must be recoverable,
and a refused virus is worth keeping for analysis. When QQF_QUARANTINE names a directory and
the refusal's category is in QQF_QUARANTINECATS, ``keep`` stores the message as it was
received, with what explains it, and the log line says ``quarantine=ID`` (or why it could
not). The SMTP answer is the refusal either way (with the category in QQF_DROP it is 250, as
for any drop): a full disk or an unwritable directory costs the copy, never the answer.

The store is maildir-like, one directory per message, so that a message and its side file
appear together in one rename:

    DIR/tmp/ID/            being written (left over only by a crash: ``expire`` clears it)
    DIR/new/ID/message     the bytes as received, 0600
    DIR/new/ID/meta.json   envelope, connection, time and verdict, 0600

written with O_EXCL and O_NOFOLLOW, fsync'd, and renamed from tmp/ to new/ (then new/ is
fsync'd). ``DIR`` and its subdirectories are 0700; ``DIR`` must be a real directory of this
user (or root's) that others cannot write, as control files must be. An ID is
``<seconds>.<pid>.<16 hex digits>``: unique without a lock across processes and threads,
sortable by time, and nothing a sender chose. Readers (``qqfilter quarantine``) take only
names of that form and open nothing through a symbolic link or a FIFO (tools/quarantine's
``Store``, the one reader), so a hostile name or link planted in the store never leads
outside it.

``notify`` tells QQF_NOTIFY of a kept message through qmail-inject, from the record just
written (the writer never reads the store back), without waiting; never the sender.

A module of the contract (beside qmailqueue), not a check: it acts on the verdict, whichever
check made it. The queue path imports it only when a refusal is to be kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time

from qqfilter.exitcodes import describe

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from qqfilter.envelope import Envelope
    from qqfilter.message import Connection
    from qqfilter.policy import Verdict
    from qqfilter.spool import Spool


MESSAGE = "message"
META = "meta.json"
ID = re.compile(r"[0-9]{1,12}\.[0-9]{1,10}\.[0-9a-f]{16}")
"""What an ID looks like; a name of any other form in the store is not one of its entries."""
CHUNK = 1 << 20


class Refused(Exception):
    """The store cannot be used (not a directory of ours, writable by others); the text says
    why."""


def keep(
    directory: str,
    spool: Spool,
    envelope: Envelope,
    connection: Connection,
    verdict: Verdict,
    pid: int,
) -> tuple[str, dict[str, Any]]:
    """Store the message in ``spool`` with what explains it; return its ID and the side
    file's record. Raises OSError or Refused (nothing is left in the store then)."""
    _prepare(directory)
    now = time.time()
    ident = f"{int(now)}.{os.getpid()}.{os.urandom(8).hex()}"
    staging = os.path.join(directory, "tmp", ident)
    os.mkdir(staging, 0o700)
    try:
        _write(os.path.join(staging, MESSAGE), _chunks(spool))
        record = _record(ident, now, spool, envelope, connection, verdict, pid)
        meta = json.dumps(record, ensure_ascii=True, indent=1).encode("ascii") + b"\n"
        _write(os.path.join(staging, META), [meta])
        _sync(staging)
        os.rename(staging, os.path.join(directory, "new", ident))
    except BaseException:
        _remove(staging)
        raise
    _sync(os.path.join(directory, "new"))
    return ident, record


def _prepare(directory: str) -> None:
    """Make DIR, tmp/ and new/ (0700) where missing; refuse a DIR that is not a directory of
    ours (a symbolic link, another user's, writable by others)."""
    for path in (directory, os.path.join(directory, "tmp"), os.path.join(directory, "new")):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        status = os.lstat(path)
        if not stat.S_ISDIR(status.st_mode):
            raise Refused(f"{path} is not a directory")
        if status.st_uid not in (0, os.geteuid()):
            raise Refused(f"{path} belongs to uid {status.st_uid}, neither root nor this user")
        if status.st_mode & 0o022:
            raise Refused(f"{path} is writable by users other than its owner (chmod go-w)")


def _chunks(spool: Spool):
    for start in range(0, spool.size, CHUNK):
        yield spool.read(start, CHUNK)


def _write(path: str, chunks) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(staging: str) -> None:
    """Take a half-written entry away (best effort: the disk may be what failed)."""
    for name in (MESSAGE, META):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(staging, name))
    with contextlib.suppress(OSError):
        os.rmdir(staging)


def _record(
    ident: str,
    now: float,
    spool: Spool,
    envelope: Envelope,
    connection: Connection,
    verdict: Verdict,
    pid: int,
) -> dict[str, Any]:
    def text(value: bytes) -> str:
        return value.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode()

    record = {
        "id": ident,
        "time": round(now, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "sender": text(envelope.sender),
        "recipients": [text(r) for r in envelope.recipients],
        "connection": {
            "ip": connection.remote_ip or "",
            "host": connection.remote_host or "",
            "helo": connection.helo or "",
            "relayclient": connection.relayclient,
        },
        "verdict": {
            "action": verdict.action,
            "category": verdict.category,
            "check": verdict.check,
            "tag": verdict.tag,
            "reason": verdict.reason,
            "detail": verdict.detail,
            "status": verdict.status,
        },
        "size": spool.size,
        "received": spool.received,
        "pid": pid,
    }
    return record


CLEAN_ENVIRONMENT = {"PATH": "/usr/bin:/bin"}
"""All the environment qmail-inject is given."""
NOTICE_FIELD = 200
"""Characters of a value (a sender, a reason) a notice shows."""


def notify(address: str, record: dict[str, Any], qmailhome: str) -> str:
    """Send ``address`` a notice of the kept message ``record`` through qmail-inject, without
    waiting for it (the SMTP client is not kept waiting for a notice); "" when it is on its
    way, else why not. Never the message's sender (no backscatter)."""
    program = os.path.join(qmailhome, "bin", "qmail-inject")
    try:
        inject(program, [address], notice(address, record), quiet=True)
    except OSError as exc:
        return f"no notice: {program}: {describe(exc)}"
    except Exception as exc:  # a notice never costs the refusal
        return f"no notice: {type(exc).__name__}: {exc}"
    return ""


def inject(
    program: str, addresses: list[str], mail: bytes, *, quiet: bool = False
) -> subprocess.Popen[bytes]:
    """Start qmail-inject ``program`` on ``mail`` for ``addresses`` (only those: ``-a``) and
    return it running, its input written and closed (the caller waits, or not). It runs with
    a clean environment: QMAILQUEUE and the SMTP client's TCP* variables are not passed on,
    so mail from qqfilter is not filtered as if that client had sent it. ``quiet``: its
    complaints are not written on our stderr (the queue path's one log line). Raises OSError.
    The one way qqfilter sends mail: notices, and ``qqfilter quarantine digest``."""
    import subprocess

    child = subprocess.Popen(
        [program, "-a", *addresses],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
        env=CLEAN_ENVIRONMENT,
        start_new_session=True,
    )
    assert child.stdin is not None
    try:
        child.stdin.write(mail)
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()
    return child


def notice(address: str, record: dict[str, Any]) -> bytes:
    """The notice of the kept message ``record`` (its side file's) for ``address``, as a
    message qmail-inject takes."""
    from qqfilter.headers import clean, render

    ident = record["id"]
    verdict, connection = record["verdict"], record["connection"]
    recipients = record["recipients"]

    def shown(value: object) -> str:
        return clean(str(value))[:NOTICE_FIELD]

    sender = shown(record["sender"]) or "<>"
    category = shown(verdict["category"])
    head = render(
        [
            ("To", address),
            ("Subject", f"qqfilter kept a message ({category}) from {sender}"),
            ("Auto-Submitted", "auto-generated"),
            ("Precedence", "bulk"),
        ]
    )
    lines = [
        "qqfilter refused a message and kept it in the quarantine.",
        "",
        f"  id:       {ident}",
        f"  time:     {record['date']}",
        f"  from:     {sender}",
        f"  to:       {shown(', '.join(str(r) for r in recipients[:10]))}"
        + (f" (+{len(recipients) - 10} more)" if len(recipients) > 10 else ""),
        f"  client:   {shown(connection['ip'])} (HELO {shown(connection['helo'])})",
        f"  refused:  {category} by {verdict['check']} {verdict['tag']}".rstrip(),
        f"  reason:   {shown(verdict['reason'])}",
        "",
        f"  qqfilter quarantine show {ident}",
        f"  qqfilter quarantine release {ident}",
        "",
    ]
    return head + b"\n" + "\n".join(lines).encode("ascii", "replace")


def failure(exc: BaseException) -> str:
    """The words for the log line when a copy could not be kept."""
    if isinstance(exc, OSError):
        return f"failed: {describe(exc)}"
    if isinstance(exc, Refused):
        return f"failed: {exc}"
    return f"failed: internal error: {type(exc).__name__}: {exc}"
