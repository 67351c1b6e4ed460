"""Where replayed mail comes from: message files, directories, maildirs, mbox files, and a
qmail queue read in place; and what is known of each message's envelope and client.

Nothing here writes to a source. A message file ``X`` (any name) has its envelope, when it
has one, in ``X.env`` beside it, or in the same name with ``.env`` for its suffix
(``spam.eml`` -> ``spam.env``), as ``qqfilter test`` reads them. A qmail queue is read as
qmail lays it out: ``mess/N/inode`` the message, ``info/N/inode`` its sender (``F<sender>\\0``),
``local/N/inode`` and ``remote/N/inode`` its recipients (``T<address>\\0`` each).
Where a source has no envelope or client address, they are derived from the message's
headers (Return-Path, Delivered-To or To/Cc; qmail-smtpd's Received line, read as
qqfilter.shared.received reads it), and the Facts say which.

Sources may be laid out by someone else (a queue replayed as root): only regular files are
read, opened with O_NOFOLLOW and O_NONBLOCK and checked with fstat, so a link met inside a
source is never followed (a link the user named is), a FIFO or device never blocks or streams,
and no message past the caller's limit is read; each is a Skipped item with its reason. A
message is copied (by the kernel) as it is when opened, never more. Sources are listed as
they are walked and an mbox is split as it is scanned: nothing grows with their number.

A module of its own under ``replay``: finding and reading sources is most of the code, and
none of it runs the filter.
"""

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from qqfilter import envelope
from qqfilter.exitcodes import describe
from qqfilter.shared.received import LINE, client

HEAD = 65536
WINDOW = 1 << 20
ENVELOPE_MAX = 16 << 20
"""Largest envelope file read (``X.env``, a queue's ``info/``, ``local/``, ``remote/``)."""

_ADDRESS = re.compile(rb"<([^<>\s]*)>|([^\s,<>\"()]+@[^\s,<>\"()]+)")
_KINDS = (
    (stat.S_ISLNK, "a symbolic link: not followed"),
    (stat.S_ISFIFO, "not a regular file (a FIFO)"),
    (stat.S_ISCHR, "not a regular file (a character device)"),
    (stat.S_ISBLK, "not a regular file (a block device)"),
    (stat.S_ISSOCK, "not a regular file (a socket)"),
    (stat.S_ISDIR, "not a regular file (a directory)"),
)


class Skipped(Exception):
    """A message not replayed on purpose (a link, not a regular file, too large); why."""


class Item:
    """One message to replay. ``path`` (and for mbox, ``offset``/``length``) say where its
    bytes are; ``follow`` is set only for a path named on the command line (any other link
    is never followed); ``envelope`` is qmail's raw envelope or None (to be derived),
    ``origin`` says where it came from; ``why`` is set when the source cannot be read at all,
    ``skip`` when it is left out on purpose."""

    __slots__ = ("envelope", "follow", "label", "length", "offset", "origin", "path", "skip", "why")

    def __init__(
        self,
        label: str,
        path: str,
        *,
        offset: int = 0,
        length: int = -1,
        envelope: bytes | None = None,
        origin: str = "",
        why: str = "",
        skip: str = "",
        follow: bool = False,
    ) -> None:
        self.label = label
        self.path = path
        self.offset = offset
        self.length = length
        self.envelope = envelope
        self.origin = origin
        self.why = why
        self.skip = skip
        self.follow = follow


class Facts:
    """What a message is replayed with: its raw envelope, its client's address (None: local
    mail) and HELO name, and what had to be derived for them, in words ("" when nothing);
    and, to name the message to a person, its Subject field's raw value (None: it has none)."""

    __slots__ = ("envelope", "helo", "ip", "said", "subject")

    def __init__(
        self,
        envelope: bytes,
        ip: str | None,
        helo: str | None,
        said: str,
        subject: bytes | None = None,
    ) -> None:
        self.envelope = envelope
        self.ip = ip
        self.helo = helo
        self.said = said
        self.subject = subject


def items(sources: list[str]) -> Iterator[Item]:
    """Every message in ``sources``, in a stable order (so two runs compare line by line),
    one at a time: nothing is listed ahead but one directory's names per level."""
    for source in sources:
        yield from _walk(Path(source), source)


def kind(mode: int) -> str:
    """Why a file of ``mode`` is not read as a message ("" for a regular file)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "" if stat.S_ISREG(mode) else "not a regular file"


Found = Item | tuple[str, "Iterator[Found]"]
"""What walking a source gives: a message, or (a label, the walk of a directory's entry)."""


def _walk(path: Path, label: str) -> Iterator[Item]:
    """The messages at ``path``, a named source, depth first with a list for a stack (a tree
    of any depth costs a list, not Python's stack). Where an entry cannot be read, the system
    says why and the walk goes on."""
    stack: list[tuple[str, Iterator[Found]]] = [(label, _entry(path, label, top=True))]
    while stack:
        where, walking = stack[-1]
        try:
            found = next(walking)
        except StopIteration:
            stack.pop()
            continue
        except FileNotFoundError:
            stack.pop()
            yield _unreadable(where, "no such file or directory")
            continue
        except OSError as exc:
            stack.pop()
            yield _unreadable(where, describe(exc))
            continue
        if isinstance(found, Item):
            yield found
        else:
            stack.append(found)


def _entry(path: Path, label: str, *, top: bool = False) -> Iterator[Found]:
    """The messages at ``path``: a directory's (a queue, a maildir, or anything else read
    through), an mbox file's, or the file itself. A link is followed only when the user
    named it (``top``); one met in a directory, and anything not a regular file, is skipped
    with the reason. Raises OSError when ``path`` cannot be read."""
    mode = (os.stat if top else os.lstat)(path).st_mode
    if stat.S_ISDIR(mode):
        yield from _directory(path)
    elif not stat.S_ISREG(mode):
        yield Item(label, label, skip=kind(mode))
    elif _is_mbox(path, top):
        yield from _mbox(path, top)
    else:
        yield _file(path, top)


def _unreadable(label: str, why: str) -> Item:
    return Item(label, label, why=why)


def _is_dir(path: Path) -> bool:
    """A directory itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _names(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(entry.name for entry in entries)


def _directory(path: Path) -> Iterator[Found]:
    if _is_dir(path / "mess") and _is_dir(path / "info"):
        yield from _queue(path)
        return
    if _is_dir(path / "cur") and _is_dir(path / "new"):
        inside = [path / sub / name for sub in ("new", "cur") for name in _names(path / sub)]
    else:
        names = _names(path)
        inside = [path / n for n in names if not (n.endswith(".env") or n.startswith("."))]
    for entry in inside:
        yield (str(entry), _entry(entry, str(entry)))


def _file(path: Path, follow: bool) -> Item:
    for beside in (Path(f"{path}.env"), path.with_suffix(".env")):
        if beside == path:
            continue
        data = read_small(beside)
        if data is not None:
            return Item(
                str(path),
                str(path),
                envelope=data,
                origin=f"envelope from {beside.name}",
                follow=follow,
            )
    return Item(str(path), str(path), follow=follow)


def read_small(path: Path, limit: int = ENVELOPE_MAX) -> bytes | None:
    """The bytes of ``path`` when it is a regular file (not a link) of at most ``limit``
    bytes; None for anything else, or when it cannot be read. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size > limit:
            return None
        data = b""
        while len(data) < status.st_size:
            more = os.pread(fd, status.st_size - len(data), len(data))
            if not more:
                break
            data += more
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _open_regular(path: str, follow: bool) -> tuple[int, int]:
    """A descriptor on ``path`` and its size, when it is a regular file; a link is followed
    only when ``follow``. Raises Skipped (with the reason) or OSError."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise Skipped(kind(stat.S_IFLNK)) from None
        raise
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise Skipped(kind(status.st_mode))
    return fd, status.st_size


def _is_mbox(path: Path, follow: bool) -> bool:
    try:
        fd, _size = _open_regular(str(path), follow)
    except Skipped:
        return False
    try:
        return os.pread(fd, 5, 0) == b"From "
    finally:
        os.close(fd)


def _mbox(path: Path, follow: bool) -> Iterator[Item]:
    """The messages of an mbox file: from each ``From `` line at a line start to the next,
    the ``From `` line itself (up to its first 4096 bytes) left out. Yielded as they are
    found: one message's start is held, whatever the number of messages."""
    fd, size = _open_regular(str(path), follow)
    try:
        number = 0
        body: int | None = None  # where the current message's body starts
        position = 0
        while position < size:
            # a From line's end is looked for past the window's end too, not found twice
            window = os.pread(fd, WINDOW + max(FROM_LINE, 5), position)
            if not window:
                break
            if position == 0:
                body = _body_start(fd, window, 0, 0)
            found = window.find(b"\nFrom ")
            while 0 <= found < WINDOW:
                start = position + found + 1
                number += 1
                yield _mbox_item(path, number, body, start, follow)
                body = _body_start(fd, window, found + 1, start)
                found = window.find(b"\nFrom ", found + 1)
            position += WINDOW
        yield _mbox_item(path, number + 1, body, size, follow)
    finally:
        os.close(fd)


FROM_LINE = 4096
"""The most of a ``From `` line looked at for its end; a longer one ends its message."""


def _body_start(fd: int, window: bytes, index: int, start: int) -> int | None:
    """Where the line at ``window[index]`` (file offset ``start``) ends; None: not within
    FROM_LINE bytes."""
    newline = window.find(b"\n", index, index + FROM_LINE)
    if newline >= 0:
        return start + newline - index + 1
    if index + FROM_LINE <= len(window):
        return None
    newline = os.pread(fd, FROM_LINE, start).find(b"\n")
    return start + newline + 1 if newline >= 0 else None


def _mbox_item(path: Path, number: int, body: int | None, end: int, follow: bool) -> Item:
    offset = end if body is None else min(body, end)
    return Item(f"{path}:{number}", str(path), offset=offset, length=end - offset, follow=follow)


def _queue(path: Path) -> Iterator[Item]:
    mess = path / "mess"
    for split in sorted(_names(mess), key=lambda name: (len(name), name)):
        if not _is_dir(mess / split):
            continue
        # the envelope's parts, where their directory is one (not a link to another)
        parts = [path / sort / split for sort in ("info", "local", "remote")]
        info_dir, *recipient_dirs = [part if _is_dir(part) else None for part in parts]
        for name in sorted(_names(mess / split), key=lambda name: (len(name), name)):
            label = f"{path}/mess/{split}/{name}"
            entry = mess / split / name
            try:
                mode = os.lstat(entry).st_mode
            except OSError as exc:
                yield _unreadable(label, describe(exc))
                continue
            if not stat.S_ISREG(mode):
                yield Item(label, str(entry), skip=kind(mode))
                continue
            info = (read_small(info_dir / name) if info_dir else None) or b""
            recipients = []
            for directory in recipient_dirs:
                records = read_small(directory / name) if directory else None
                if records is None:
                    continue
                # qmail-send turns T into D once a recipient is done: both were recipients
                recipients += [r[1:] for r in records.split(b"\0") if r[:1] in (b"T", b"D")]
            if info.startswith(b"F") and recipients:
                yield Item(
                    label,
                    str(entry),
                    envelope=envelope.serialize(info.split(b"\0")[0][1:], recipients),
                    origin="envelope from the queue (info/, local/, remote/)",
                )
            else:
                yield Item(label, str(entry))


def open_message(item: Item, limit: int) -> int:
    """A descriptor at offset 0 holding just the message of ``item``: a copy, made by the
    kernel, of the file's bytes as they are when opened (or of an mbox message's range),
    never the whole in memory. Only a regular file is read, a link only when the user named
    it, never more than ``limit`` bytes: anything else raises Skipped with the reason."""
    if item.length > limit:  # an mbox message: its length is known without opening
        raise Skipped(f"{item.length} bytes, over the limit of {limit} (--max-size)")
    fd, size = _open_regular(item.path, item.follow)
    try:
        length = size if item.length < 0 else item.length
        if length > limit:
            raise Skipped(f"{length} bytes, over the limit of {limit} (--max-size)")
        copy = os.memfd_create("replay", os.MFD_CLOEXEC)
        try:
            offset, left = item.offset, length
            while left > 0:
                sent = os.sendfile(copy, fd, offset, left)
                if not sent:
                    break
                offset, left = offset + sent, left - sent
            os.lseek(copy, 0, os.SEEK_SET)
        except BaseException:
            os.close(copy)
            raise
        return copy
    finally:
        os.close(fd)


def complete(
    item: Item,
    fd: int,
    sender: str | None,
    recipients: list[str],
    ip: str | None,
    helo: str | None,
) -> Facts:
    """The envelope and client to replay ``item`` with: the envelope from ``sender`` and
    ``recipients`` when given, else the item's own, else from the headers of the message on
    ``fd``; the client ``ip`` (with ``helo``) when given, else from qmail-smtpd's Received
    line in those headers, else none (local mail)."""
    said = []
    # the header section, its last line ended as the others are (LINE wants the line end)
    head = os.pread(fd, HEAD, 0).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0] + b"\n"
    if sender is not None or recipients:
        raw_envelope = envelope.serialize(
            (sender or "").encode("utf-8", "surrogateescape"),
            [r.encode("utf-8", "surrogateescape") for r in recipients] or [b"postmaster"],
        )
        said.append("envelope from options")
    elif item.envelope is not None:
        raw_envelope = item.envelope
    else:
        found_sender = _header_addresses(head, b"return-path")[:1]
        found_recipients = _header_addresses(head, b"delivered-to") or (
            _header_addresses(head, b"to") + _header_addresses(head, b"cc")
        )
        raw_envelope = envelope.serialize(
            found_sender[0] if found_sender else b"", found_recipients or [b"postmaster"]
        )
        said.append("envelope from headers (Return-Path, Delivered-To or To/Cc)")
    if not ip:
        match = LINE.search(head)
        if match:
            ip, helo = client(match)
            said.append("client from qmail-smtpd's Received line")
        else:
            ip, helo = None, None
            said.append("no client address: treated as local mail")
    subject = next(_values(head, b"subject"), None)
    return Facts(raw_envelope, ip, helo, "; ".join(said), subject)


def _values(head: bytes, name: bytes) -> Iterator[bytes]:
    """The value of every ``name:`` field of ``head``, unfolded, in order."""
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    for line in unfolded.split(b"\n"):
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name:
            yield value.strip()


def _header_addresses(head: bytes, name: bytes) -> list[bytes]:
    """The addresses in every ``name:`` header of ``head`` (unfolded), in order."""
    found = []
    for value in _values(head, name):
        for angle, bare in _ADDRESS.findall(value):
            found.append(angle if angle or not bare else bare)
    return found
