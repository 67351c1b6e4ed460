"""``qqfilter quarantine``: the messages QQF_QUARANTINE kept, for the administrator.

``list`` shows the entries (a text table, ``--json`` lines or ``--csv``), filtered by time,
category, sender or recipient; ``show ID`` explains one (verdict, envelope, connection and
the message's header section; ``--raw`` writes its bytes exactly); ``release ID`` hands it
to qmail-queue as qmail-smtpd would have, with one ``X-Qqfilter-Released`` field on top, to
its recipients or to ``--to`` (``--recheck`` runs it through the checks first and keeps it
unless they accept it); ``delete ID ...`` and ``expire --older-than AGE`` remove entries;
``digest`` summarises a period in plain text, on stdout or mailed with ``--send`` through
qmail-inject (to that address only: never to a message's sender). A release, a deletion
and an expiry each write one log line on stderr in qqfilter's log format (verdict
``released``, ``deleted``, ``expired``, with ``quarantine=ID``), so what happened to a kept
message is in the same log as why it was kept.

The store (qqfilter.quarantine) may hold what a hostile local user planted. Every name and
file is reached from descriptors of the store's own directories, opened without following
a link (``openat`` with O_NOFOLLOW), only names of an ID's form are entries, only regular
files are read (opened non-blocking, so a FIFO cannot hang the command), and removal
unlinks names inside the entry's own directory: nothing outside the store is read, written
or deleted. A release holds a lock on the entry (``flock`` on its directory) and checks that
the name still leads to it, so two releases of one message queue it once. A side file that
does not parse is skipped by list, show and release; delete and expire still remove its
entry. A store that does not exist yet is empty (the filter makes it with its first copy).

Like every tool (qqfilter.tools), the module holds its sub-parser, handlers and writers;
every failure is one line on stderr and an exit status: 0 done, 1 failed (no such entry,
qmail-queue refused, a recheck that does not accept), 2 a command line or setting that
cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import email.utils
import errno
import fcntl
import json
import math
import os
import pwd
import re
import stat
import subprocess
import sys
import time
from collections import Counter

from qqfilter import envelope, logline, quarantine
from qqfilter.exitcodes import QueueError, describe, reply_for
from qqfilter.headers import render
from qqfilter.quarantine import ID, MESSAGE, META
from qqfilter.settings import (
    LOG,
    NOTIFY,
    QMAILHOME,
    QMAILQUEUE,
    QUARANTINE,
    SPOOLDIR,
    Settings,
    load,
)
from qqfilter.tools import FAILED, USAGE_ERROR, Refusal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from qqfilter.message import Connection

META_LIMIT = 1 << 20
"""Bytes of a side file read: the filter writes a few hundred."""
HEADER_LIMIT = 1 << 16
"""Bytes of a message ``show`` looks through for its header section."""
TMP_AGE = 86400
"""Seconds after which a directory left in tmp/ (by a crash while keeping) is removed."""
CHUNK = 1 << 16
RECIPIENTS_LISTED = 2
"""Recipients ``list`` and ``digest`` name per message; past them ``+N more``."""
WIDTHS = {"sender": 40, "to": 60, "reason": 100, "check": 40}
"""The widest a column of ``list`` gets; a longer value is cut and ends ``...``."""
LINE_MAX = 900
"""The longest line of a digest (mail lines must stay under 998 bytes)."""
SETTINGS_USED = frozenset(
    {
        "config",
        QUARANTINE.name,
        QMAILQUEUE.name,
        QMAILHOME.name,
        LOG.name,
        SPOOLDIR.name,
        NOTIFY.name,
    }
)
"""The settings an invalid value of which stops these commands (``--recheck``: any)."""
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CONNECTION_VARIABLES = ("TCPREMOTEIP", "TCPREMOTEHOST", "TCPLOCALHOST", "RELAYCLIENT", "HELOHOST")


# --- the command line -------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``quarantine`` (with its actions) to the subcommands ``sub``."""
    parser = sub.add_parser(
        "quarantine",
        help="list, show, release, delete or expire the messages QQF_QUARANTINE kept",
        description="The refused messages kept in the quarantine directory (QQF_QUARANTINE).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", metavar="DIR", help="the quarantine directory (default: QQF_QUARANTINE)"
    )
    actions = parser.add_subparsers(dest="action", required=True)

    listing = actions.add_parser(
        "list", parents=[common], help="one line per kept message, oldest first"
    )
    listing.add_argument(
        "--since", type=_since, metavar="WHEN", help="kept since: 30d, 12h, 90m, or a date"
    )
    listing.add_argument("--category", metavar="C", help="refusals of this category only")
    listing.add_argument("--sender", metavar="S", help="senders containing S (any case)")
    listing.add_argument("--rcpt", metavar="R", help="a recipient containing R (any case)")
    formats = listing.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="one JSON object a line")
    formats.add_argument("--csv", action="store_true", help="CSV with a header row")
    listing.set_defaults(run=_guarded(_list))

    show = actions.add_parser(
        "show", parents=[common], help="why a message was kept, and its header section"
    )
    show.add_argument("id", help="the entry's ID")
    show.add_argument("--raw", action="store_true", help="write the message's bytes, exactly")
    show.set_defaults(run=_guarded(_show))

    release = actions.add_parser(
        "release",
        parents=[common],
        help="queue a kept message after all, then remove it from the quarantine",
        description="Hand the message, with an X-Qqfilter-Released field on top, to "
        "qmail-queue with its original envelope (or to --to), unchecked unless --recheck.",
    )
    release.add_argument("id", help="the entry's ID")
    release.add_argument(
        "--to",
        metavar="ADDR",
        action="append",
        default=[],
        help="to this recipient instead of the original ones (repeat for more)",
    )
    release.add_argument(
        "--recheck",
        action="store_true",
        help="run the checks again first, and release only when they accept it",
    )
    release.add_argument(
        "--qmail-queue", metavar="PATH", help="the queue program (default: QQF_QMAILQUEUE)"
    )
    release.set_defaults(run=_guarded(_release))

    delete = actions.add_parser("delete", parents=[common], help="remove kept messages")
    delete.add_argument("ids", nargs="+", metavar="ID", help="the entries' IDs")
    delete.set_defaults(run=_guarded(_delete))

    expire = actions.add_parser(
        "expire",
        parents=[common],
        help="remove the messages kept longer than an age (and crash leftovers in tmp/)",
    )
    expire.add_argument(
        "--older-than", type=_duration, metavar="AGE", required=True, help="30d, 12h, 90m, 2w"
    )
    expire.add_argument("--dry-run", action="store_true", help="say what would go; remove none")
    expire.set_defaults(run=_guarded(_expire))

    digest = actions.add_parser(
        "digest", parents=[common], help="a plain-text summary of what was kept in a period"
    )
    digest.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        default=_since("1d"),
        help="the period's start: 1d (the default), 12h, a date",
    )
    digest.add_argument(
        "--send",
        metavar="ADDR",
        action="append",
        nargs="?",
        const="",
        default=[],
        help="mail it to ADDR (without one: to QQF_NOTIFY) with qmail-inject instead of "
        "printing it",
    )
    digest.add_argument(
        "--qmail-inject",
        metavar="PATH",
        help="the program to mail it with (default: QMAILHOME/bin/qmail-inject)",
    )
    digest.set_defaults(run=_guarded(_digest))


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with its failures said in one line: no traceback for a store's state."""

    def run(options: argparse.Namespace) -> int:
        try:
            return handler(options)
        except Refusal as exc:
            _say(str(exc))
            return exc.code
        except BrokenPipeError:
            raise  # the output's reader went away: dispatch ends quietly
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _say(f"quarantine: {where}{describe(exc)}")
            return FAILED

    return run


def _say(text: str) -> None:
    print(f"qqfilter: {_plain(text)}", file=sys.stderr)


def _duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``."""
    found = DURATION.fullmatch(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"not an age like 30d, 12h or 90m: {text!r}")
    return int(found.group(1)) * UNITS[found.group(2)]


def _since(text: str) -> float:
    """The time ``text`` names: an age back from now (``30d``), or an ISO date or date and
    time (local time unless it gives its offset)."""
    if DURATION.fullmatch(text.strip()):
        return time.time() - _duration(text)
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"not an age (30d, 12h, 90m) or a date (2026-11-01, 2026-11-01T08:00): {text!r}"
        ) from None


def _settings(*, every: bool = False) -> Settings:
    """This process's settings; Refusal (2) when one that these commands use is invalid
    (``every``: any, as the checks of a recheck use them all)."""
    settings, errors = load(dict(os.environ))
    bad = [error for error in errors if every or error.name in SETTINGS_USED]
    if bad:
        raise Refusal(str(bad[0]), USAGE_ERROR)
    return settings


def _directory(options: argparse.Namespace, settings: Settings) -> str:
    directory = options.dir or settings[QUARANTINE]
    if not directory:
        raise Refusal("no quarantine: set QQF_QUARANTINE or give --dir", USAGE_ERROR)
    return directory


# --- reading the store ------------------------------------------------------------------


class Kept:
    """One entry: its ``id``, a descriptor of its directory (``fd``), its side file parsed
    (``meta``: empty when it does not parse and that was allowed)."""

    __slots__ = ("fd", "id", "meta")

    def __init__(self, ident: str, fd: int, meta: dict) -> None:
        self.id = ident
        self.fd = fd
        self.meta = meta

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Store:
    """The store at ``directory``: a descriptor of its ``new/`` (-1 when there is none yet)
    and of its ``tmp/``, each opened without following a link."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.new = self.tmp = -1
        try:
            top = os.open(directory, DIRECTORY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Refusal(f"{directory}: {_why(exc, directory)}") from None
        try:
            self.new = _subdirectory(top, directory, "new")
            self.tmp = _subdirectory(top, directory, "tmp")
        finally:
            os.close(top)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        for fd in (self.new, self.tmp):
            if fd >= 0:
                os.close(fd)
        self.new = self.tmp = -1

    def names(self) -> list[str]:
        """The entries' names (of an ID's form), oldest first."""
        if self.new < 0:
            return []
        return sorted((name for name in os.listdir(self.new) if ID.fullmatch(name)), key=_age)

    def open(self, ident: str, *, lock: bool = False, need_meta: bool = True) -> Kept | None:
        """The entry ``ident``, or None when there is none: a name of another form, a link,
        not a directory, a side file that is a link, not a regular file or not JSON (unless
        ``need_meta`` is false). With ``lock``, the entry is held against other commands
        (Refusal when one holds it) and is known to be still in the store."""
        if self.new < 0 or not ID.fullmatch(ident):
            return None
        try:
            fd = os.open(ident, DIRECTORY, dir_fd=self.new)
        except OSError:
            return None
        try:
            if lock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Refusal(f"{ident} is in use by another qqfilter quarantine") from None
                if not self._still(fd, ident):
                    os.close(fd)
                    return None
            meta = _meta(fd)
        except BaseException:
            os.close(fd)
            raise
        if meta is None and need_meta:
            os.close(fd)
            return None
        return Kept(ident, fd, meta or {})

    def _still(self, fd: int, ident: str) -> bool:
        """Whether ``ident`` still names the directory ``fd`` (not removed meanwhile)."""
        try:
            named = os.stat(ident, dir_fd=self.new, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def each(self) -> Iterator[tuple[str, dict]]:
        """Every entry whose side file parses, as (ID, meta), oldest first."""
        for name in self.names():
            kept = self.open(name)
            if kept is not None:
                kept.close()
                yield kept.id, kept.meta

    def remove(self, kept: Kept) -> None:
        """Take ``kept`` away: its two files (links among them as links), then its directory,
        all by name inside the store. Raises OSError (an entry holding more is kept)."""
        for name in (MESSAGE, META):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=kept.fd)
        os.rmdir(kept.id, dir_fd=self.new)


def _subdirectory(top: int, directory: str, name: str) -> int:
    try:
        return os.open(name, DIRECTORY, dir_fd=top)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        path = os.path.join(directory, name)
        raise Refusal(f"{path}: {_why(exc, path)}") from None


def _why(exc: OSError, path: str) -> str:
    """Why ``path`` cannot be opened as a directory of the store."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return "is a symbolic link: refused"
        return "is not a directory"
    return describe(exc)


def _age(name: str) -> tuple[int, str]:
    return (int(name.split(".", 1)[0]), name)


def _open_regular(directory: int, name: str) -> int:
    """A descriptor of the regular file ``name`` in the directory ``directory``, opened
    without following a link or waiting on a FIFO. Raises OSError."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _read(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``'s current offset."""
    parts = []
    while limit > 0:
        chunk = os.read(fd, min(limit, CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        limit -= len(chunk)
    return b"".join(parts)


def _meta(directory: int) -> dict | None:
    """The entry's side file, parsed; None when it is not a regular file or not a JSON
    object."""
    try:
        fd = _open_regular(directory, META)
    except OSError:
        return None
    try:
        meta = json.loads(_read(fd, META_LIMIT))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return meta if isinstance(meta, dict) else None


# --- what a side file says (whatever types it holds) ------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _part(meta: dict, key: str) -> dict:
    value = meta.get(key)
    return value if isinstance(value, dict) else {}


def _recipients(meta: dict) -> list[str]:
    value = meta.get("recipients")
    return [r for r in value if isinstance(r, str)] if isinstance(value, list) else []


def _when(ident: str, meta: dict) -> float:
    """When the entry was kept: its side file's time, else its ID's seconds."""
    value = meta.get("time")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return float(_age(ident)[0])


def _stamp(when: float) -> str:
    """``when`` in local time, to the second."""
    try:
        return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return "?"


def _iso(when: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: str) -> str:
    """``value`` as printable ASCII: every other character escaped (``\\xNN``, ``\\uNNNN``),
    so nothing a sender chose can move a terminal's cursor or forge a line."""
    if all(" " <= char <= "~" for char in value):
        return value
    return "".join(char if " " <= char <= "~" else logline.escape(char) for char in value)


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def _check(verdict: dict) -> str:
    check, tag = _text(verdict.get("check")), _text(verdict.get("tag"))
    return f"{check}/{tag}" if check and tag else check or tag


def _addressed(meta: dict) -> str:
    """The first recipients, as ``list`` and ``digest`` name them."""
    recipients = _recipients(meta)
    shown = ", ".join(f"<{r}>" for r in recipients[:RECIPIENTS_LISTED])
    if len(recipients) > RECIPIENTS_LISTED:
        shown += f" +{len(recipients) - RECIPIENTS_LISTED} more"
    return shown


def _selected(store: Store, options: argparse.Namespace) -> list[tuple[str, dict]]:
    """The entries ``list``'s filters let through, oldest first."""
    found = []
    sender = (options.sender or "").lower()
    rcpt = (options.rcpt or "").lower()
    for ident, meta in store.each():
        if options.since is not None and _when(ident, meta) < options.since:
            continue
        category = _text(_part(meta, "verdict").get("category"))
        if options.category is not None and category != options.category:
            continue
        if sender and sender not in _text(meta.get("sender")).lower():
            continue
        if rcpt and not any(rcpt in r.lower() for r in _recipients(meta)):
            continue
        found.append((ident, meta))
    return found


# --- list -------------------------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "time",
    "date",
    "action",
    "category",
    "check",
    "tag",
    "reason",
    "detail",
    "status",
    "sender",
    "recipients",
    "ip",
    "host",
    "helo",
    "relayclient",
    "size",
)


def _list(options: argparse.Namespace) -> int:
    settings = _settings()
    with Store(_directory(options, settings)) as store:
        found = _selected(store, options)
    out = sys.stdout
    if options.json:
        for ident, meta in found:
            out.write(json.dumps({**meta, "id": ident}, ensure_ascii=True) + "\n")
    elif options.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for ident, meta in found:
            writer.writerow([_plain(value) for value in _csv_row(ident, meta)])
    elif found:
        _table(found)
    return 0


def _csv_row(ident: str, meta: dict) -> list[str]:
    verdict, connection = _part(meta, "verdict"), _part(meta, "connection")
    when = _when(ident, meta)
    size = meta.get("size")
    return [
        ident,
        f"{when:.3f}",
        _iso(when),
        *(_text(verdict.get(key)) for key in ("action", "category", "check", "tag")),
        *(_text(verdict.get(key)) for key in ("reason", "detail", "status")),
        _text(meta.get("sender")),
        " ".join(_recipients(meta)),
        *(_text(connection.get(key)) for key in ("ip", "host", "helo")),
        "yes" if connection.get("relayclient") is True else "",
        str(size) if isinstance(size, int) and not isinstance(size, bool) else "",
    ]


def _table(found: list[tuple[str, dict]]) -> None:
    """The entries as a text table, its columns aligned."""
    rows = [("TIME", "ID", "CATEGORY", "CHECK/TAG", "FROM", "TO", "REASON")]
    for ident, meta in found:
        verdict = _part(meta, "verdict")
        rows.append(
            (
                _stamp(_when(ident, meta)),
                ident,
                _plain(_text(verdict.get("category"))) or "-",
                _cut(_plain(_check(verdict)), WIDTHS["check"]) or "-",
                _cut(_plain(f"<{_text(meta.get('sender'))}>"), WIDTHS["sender"]),
                _cut(_plain(_addressed(meta)), WIDTHS["to"]) or "-",
                _cut(_plain(_text(verdict.get("reason"))), WIDTHS["reason"]),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        sys.stdout.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


# --- show -------------------------------------------------------------------------------


def _show(options: argparse.Namespace) -> int:
    settings = _settings()
    directory = _directory(options, settings)
    with Store(directory) as store:
        kept = _entry(store, options.id)
        try:
            message = _open_regular(kept.fd, MESSAGE)
        except OSError as exc:
            kept.close()
            raise Refusal(f"{kept.id}: the message: {describe(exc)}") from None
        try:
            if options.raw:
                _copy_out(message)
            else:
                sys.stdout.write(_explained(kept, _header_section(message)))
        finally:
            os.close(message)
            kept.close()
    return 0


def _entry(store: Store, ident: str, *, lock: bool = False, need_meta: bool = True) -> Kept:
    kept = store.open(ident, lock=lock, need_meta=need_meta)
    if kept is None:
        raise Refusal(f"no entry {ident} in {store.directory}")
    return kept


def _copy_out(fd: int) -> None:
    """The rest of ``fd`` on stdout, byte for byte."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    while chunk := os.read(fd, CHUNK):
        out.write(chunk)
    out.flush()


def _header_section(fd: int) -> tuple[bytes, bool]:
    """The message's header section (up to its empty line), and whether it was cut at
    HEADER_LIMIT bytes."""
    head = _read(fd, HEADER_LIMIT)
    ends = [at for at in (head.find(b"\n\n"), head.find(b"\n\r\n")) if at >= 0]
    if head.startswith((b"\n", b"\r\n")):
        return b"", False
    if ends:
        return head[: min(ends) + 1], False
    return head, len(head) >= HEADER_LIMIT


def _explained(kept: Kept, section: tuple[bytes, bool]) -> str:
    meta = kept.meta
    verdict, connection = _part(meta, "verdict"), _part(meta, "connection")
    check = _text(verdict.get("check"))
    said = _text(verdict.get("action")) + (f" by {check}" if check else "")
    reason = _text(verdict.get("reason"))
    size = meta.get("size")
    client = [
        _text(connection.get("ip")) or "none (local)",
        *(
            f"{label} {_text(connection.get(key))}"
            for label, key in (("host", "host"), ("helo", "helo"))
            if _text(connection.get(key))
        ),
    ]
    if connection.get("relayclient") is True:
        client.append("relayclient")
    rows = [
        ("id", kept.id),
        ("kept", f"{_stamp(_when(kept.id, meta))} ({_iso(_when(kept.id, meta))})"),
        ("verdict", said + (f": {reason}" if reason else "")),
        ("category", _text(verdict.get("category"))),
        ("tag", _text(verdict.get("tag"))),
        ("detail", _text(verdict.get("detail"))),
        ("status", _text(verdict.get("status"))),
        ("from", f"<{_text(meta.get('sender'))}>"),
        *(("to", f"<{r}>") for r in _recipients(meta)),
        ("client", ", ".join(client)),
        ("size", f"{size} bytes" if isinstance(size, int) else ""),
    ]
    lines = [f"{label + ':':<10}{_plain(value)}" for label, value in rows if value]
    head, cut = section
    lines.append("")
    text = head.decode("utf-8", "surrogateescape")
    lines += [_plain(line.rstrip("\r")) for line in text.split("\n")[:-1] or [text]]
    if cut:
        lines.append(f"[the header section goes on past {HEADER_LIMIT} bytes]")
    return "\n".join(lines).rstrip("\n") + "\n"


# --- release ----------------------------------------------------------------------------


def _release(options: argparse.Namespace) -> int:
    settings = _settings(every=options.recheck)
    program = options.qmail_queue or settings[QMAILQUEUE]
    with Store(_directory(options, settings)) as store:
        kept = _entry(store, options.id, lock=True)
        try:
            return _released(store, kept, program, options, settings)
        finally:
            kept.close()


def _released(
    store: Store, kept: Kept, program: str, options: argparse.Namespace, settings: Settings
) -> int:
    sender = _address(_text(kept.meta.get("sender")), kept.id, empty=True)
    given = [os.fsencode(address) for address in options.to]
    recipients = given or [_address(r, kept.id) for r in _recipients(kept.meta)]
    if not recipients or not all(0 < len(r) <= envelope.MAX_ADDRESS for r in recipients):
        raise Refusal(f"{kept.id}: no recipient to release it to: give --to")
    if any(b"\0" in r for r in recipients):
        raise Refusal("a recipient holds a NUL", USAGE_ERROR)
    raw_envelope = envelope.serialize(sender, recipients)
    try:
        message = _open_regular(kept.fd, MESSAGE)
    except OSError as exc:
        raise Refusal(f"{kept.id}: the message: {describe(exc)}; not released") from None
    try:
        if options.recheck:
            _recheck(kept, message, raw_envelope, settings)
            os.lseek(message, 0, os.SEEK_SET)
        head = os.pread(message, HEADER_LIMIT, 0)
        user = _user()
        field = (
            "X-Qqfilter-Released",
            f"{email.utils.formatdate(localtime=True)} by {user} (id {kept.id})",
        )
        size = _queue(program, render([field]), message, raw_envelope, settings, kept.id)
    finally:
        os.close(message)
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "verdict": "released",
        "reason": f"by {user}",
        "notes": "rechecked" if options.recheck else "",
        "from": logline.address(sender),
        "rcpts": len(recipients),
        "to": logline.recipients(recipients),
        "msgid": logline.message_id(head),
        "size": size,
        "quarantine": kept.id,
    }
    logline.write_line(logline.format_line(fields, settings[LOG]))
    try:
        store.remove(kept)
    except OSError as exc:
        said = f"{kept.id} was released, but stays in the quarantine: {describe(exc)}"
        raise Refusal(said) from None
    return 0


def _address(value: str, ident: str, *, empty: bool = False) -> bytes:
    """An envelope address from the side file, as the bytes qmail was given; Refusal for one
    that no envelope can carry (a NUL, too long, not text)."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = b"\0"
    if b"\0" in raw or len(raw) > envelope.MAX_ADDRESS or not (raw or empty):
        raise Refusal(f"{ident}: its envelope cannot be used; give --to", FAILED)
    return raw


def _user() -> str:
    """Who releases: the login name (and who ran sudo, when root runs it through sudo)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    through = os.environ.get("SUDO_USER", "") if uid == 0 else ""
    return f"{name} (sudo by {through})" if through else name


def _recheck(kept: Kept, message: int, raw_envelope: bytes, settings: Settings) -> None:
    """Run the message through the checks as the filter would with its connection; Refusal
    unless they accept it."""
    from qqfilter.policy import ACCEPT
    from qqfilter.tools import dryrun

    outcome = dryrun.run(message, raw_envelope, _connection(kept.meta), settings)
    verdict = outcome.verdict
    if verdict is not None and verdict.action == ACCEPT:
        return
    if verdict is None:
        said = outcome.error
    else:
        said = verdict.action + (f" by {verdict.check}" if verdict.check else "")
        said += f": {verdict.reason}" if verdict.reason else ""
    raise Refusal(f"{kept.id} not released: the checks say {said} ({outcome.code})")


def _connection(meta: dict) -> Connection:
    """The SMTP client of the side file, as tcpserver would describe it."""
    from qqfilter.message import Connection

    kept = _part(meta, "connection")
    environ = {k: v for k, v in os.environ.items() if k not in CONNECTION_VARIABLES}
    for variable, key in (("TCPREMOTEIP", "ip"), ("TCPREMOTEHOST", "host"), ("HELOHOST", "helo")):
        value = _text(kept.get(key))
        if value and "\0" not in value:
            environ[variable] = value
    if kept.get("relayclient") is True:
        environ["RELAYCLIENT"] = ""
    return Connection.from_environ(environ)


def _queue(
    program: str, header: bytes, message: int, raw_envelope: bytes, settings: Settings, ident: str
) -> int:
    """Run ``program`` as qmail-smtpd runs qmail-queue: the header and the message on fd 0,
    the envelope on fd 1. Returns the bytes handed on; Refusal when it does not queue."""
    from qqfilter.handoff import envelope_fd
    from qqfilter.spool import anonymous_file, write_all

    spooldir = settings[SPOOLDIR]
    try:
        staged = anonymous_file(spooldir)
    except QueueError as exc:
        raise Refusal(f"{exc.reason}; {ident} kept") from None
    try:
        write_all(staged, header, spooldir)
        while chunk := os.read(message, CHUNK):
            write_all(staged, chunk, spooldir)
        size = os.lseek(staged, 0, os.SEEK_CUR)
        os.lseek(staged, 0, os.SEEK_SET)
        envelope_in = envelope_fd(raw_envelope)
        try:
            proc = subprocess.run([program], stdin=staged, stdout=envelope_in, check=False)
        except OSError as exc:
            raise Refusal(f"cannot run {program}: {describe(exc)}; {ident} kept") from None
        finally:
            os.close(envelope_in)
    except QueueError as exc:
        raise Refusal(f"{exc.reason}; {ident} kept") from None
    except OSError as exc:
        raise Refusal(f"{ident}: cannot read the message: {describe(exc)}; kept") from None
    finally:
        os.close(staged)
    if proc.returncode < 0:
        raise Refusal(f"{program} was killed by signal {-proc.returncode}; {ident} kept")
    if proc.returncode:
        code = proc.returncode
        raise Refusal(f"{program} exited {code}: {reply_for(code)}; {ident} kept")
    return size


# --- delete and expire ------------------------------------------------------------------


def _delete(options: argparse.Namespace) -> int:
    settings = _settings()
    status = 0
    with Store(_directory(options, settings)) as store:
        for ident in options.ids:
            try:
                kept = _entry(store, ident, lock=True, need_meta=False)
            except Refusal as exc:
                _say(str(exc))
                status = FAILED
                continue
            try:
                store.remove(kept)
            except OSError as exc:
                _say(f"{ident}: not deleted: {describe(exc)}")
                status = FAILED
                continue
            finally:
                kept.close()
            _log(settings, "deleted", f"by {_user()}", kept)
    return status


def _log(settings: Settings, verdict: str, reason: str, kept: Kept) -> None:
    meta = kept.meta
    recipients = [_bytes(r) for r in _recipients(meta)]
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "verdict": verdict,
        "reason": reason,
        "from": logline.address(_bytes(_text(meta.get("sender")))) if meta else "",
        "rcpts": len(recipients) or "",
        "to": logline.recipients(recipients),
        "quarantine": kept.id,
    }
    logline.write_line(logline.format_line(fields, settings[LOG]))


def _bytes(value: str) -> bytes:
    """An address from the side file as bytes for the log line, whatever it holds."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def _expire(options: argparse.Namespace) -> int:
    settings = _settings()
    now = time.time()
    cutoff = now - options.older_than
    removed = leftovers = failed = 0
    verb = "would remove" if options.dry_run else "removed"
    with Store(_directory(options, settings)) as store:
        for name in store.names():
            try:
                kept = store.open(name, lock=not options.dry_run, need_meta=False)
            except Refusal as exc:
                _say(str(exc))
                failed += 1
                continue
            if kept is None:
                continue
            try:
                if _when(name, kept.meta) >= cutoff:
                    continue
                if options.dry_run:
                    print(f"{verb} {name}")
                else:
                    store.remove(kept)
                    _log(settings, "expired", f"kept since {_iso(_when(name, kept.meta))}", kept)
                removed += 1
            except OSError as exc:
                _say(f"{name}: not removed: {describe(exc)}")
                failed += 1
            finally:
                kept.close()
        for name in _stale(store, now - TMP_AGE):
            if options.dry_run:
                print(f"{verb} tmp/{name}")
                leftovers += 1
                continue
            try:
                _clear(store.tmp, name)
            except OSError as exc:
                _say(f"tmp/{name}: not removed: {describe(exc)}")
                failed += 1
                continue
            leftovers += 1
    print(f"{verb} {removed} entries and {leftovers} leftovers in tmp/")
    return FAILED if failed else 0


def _stale(store: Store, cutoff: float) -> list[str]:
    """The directories in tmp/ (of an ID's form, not links) older than ``cutoff``, by their
    ID's seconds."""
    if store.tmp < 0:
        return []
    found = []
    for name in os.listdir(store.tmp):
        if not ID.fullmatch(name) or _age(name)[0] >= cutoff:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=store.tmp, follow_symlinks=False).st_mode):
                found.append(name)
    return sorted(found, key=_age)


def _clear(parent: int, name: str) -> None:
    """Remove the half-written entry ``name`` of the directory ``parent``: the two files it
    may hold, then itself."""
    fd = os.open(name, DIRECTORY, dir_fd=parent)
    try:
        for inside in (MESSAGE, META):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(inside, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


# --- digest -----------------------------------------------------------------------------


def _digest(options: argparse.Namespace) -> int:
    settings = _settings()
    directory = _directory(options, settings)
    if "" in options.send:
        if not settings[NOTIFY]:
            raise Refusal("--send without an address: set QQF_NOTIFY or give one", USAGE_ERROR)
        options.send = [address or settings[NOTIFY] for address in options.send]
    for address in options.send:
        if not address or address.startswith("-") or not all("!" <= c <= "~" for c in address):
            raise Refusal(f"not an address to send to: {_plain(address)}", USAGE_ERROR)
    with Store(directory) as store:
        found = [
            (ident, meta) for ident, meta in store.each() if _when(ident, meta) >= options.since
        ]
    since = _stamp(options.since)
    body = _summary(found, directory, since)
    if not options.send:
        sys.stdout.write(body)
        return 0
    if not found:
        print(f"nothing kept since {since}: no digest sent")
        return 0
    return _mail(options, settings, body, f"{len(found)} messages kept since {since}")


def _summary(found: list[tuple[str, dict]], directory: str, since: str) -> str:
    lines = [f"{len(found)} messages kept in {directory} since {since}."]
    counts = Counter(
        _text(_part(meta, "verdict").get("category")) or "(none)" for _ident, meta in found
    )
    if counts:
        lines.append("")
        lines += [f"{count:7d}  {category}" for category, count in counts.most_common()]
        lines.append("")
    for ident, meta in found:
        verdict = _part(meta, "verdict")
        line = (
            f"{_stamp(_when(ident, meta))}  {ident}  {_text(verdict.get('category')) or '-'}  "
            f"<{_text(meta.get('sender'))}> -> {_addressed(meta) or '-'}  "
            f"{_text(verdict.get('reason'))}"
        )
        lines.append(_cut(_plain(line).rstrip(), LINE_MAX))
    if found:
        lines += ["", "qqfilter quarantine show ID: more on one; release ID: queue it after all."]
    return "\n".join(lines) + "\n"


def _mail(options: argparse.Namespace, settings: Settings, body: str, subject: str) -> int:
    """Pipe ``body`` as a mail to the --send addresses through qmail-inject; its status."""
    from qqfilter import control

    qmailhome = settings[QMAILHOME]
    try:
        me = control.first_line(qmailhome, "me")
    except QueueError:
        me = None
    sender = f"qqfilter@{me}" if me else "postmaster"
    mail = render(
        [
            ("From", sender),
            ("To", ", ".join(options.send)),
            ("Subject", f"qqfilter quarantine: {subject}"),
            ("Auto-Submitted", "auto-generated"),
            ("Precedence", "bulk"),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=us-ascii"),
        ]
    )
    mail += b"\n" + body.encode("ascii", "replace")
    program = options.qmail_inject or os.path.join(qmailhome, "bin", "qmail-inject")
    try:
        proc = quarantine.inject(program, options.send, mail)
        proc.wait()
    except OSError as exc:
        raise Refusal(f"cannot run {program}: {describe(exc)}") from None
    if proc.returncode < 0:
        raise Refusal(f"{program} was killed by signal {-proc.returncode}")
    if proc.returncode:
        _say(f"{program} exited {proc.returncode}: the digest was not sent")
    return proc.returncode
