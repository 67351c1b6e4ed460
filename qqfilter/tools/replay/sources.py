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

A module of its own under ``replay``: finding and reading sources is most of the code, and
none of it runs the filter.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path

from qqfilter import envelope
from qqfilter.exitcodes import describe
from qqfilter.shared.received import LINE, client

HEAD = 65536
WINDOW = 1 << 20
_ADDRESS = re.compile(rb"<([^<>\s]*)>|([^\s,<>\"()]+@[^\s,<>\"()]+)")


class Item:
    """One message to replay. ``path`` (and for mbox, ``offset``/``length``) say where its
    bytes are; ``envelope`` is qmail's raw envelope or None (to be derived), ``origin`` says
    where it came from; ``why`` is set when the source cannot be read at all."""

    __slots__ = ("envelope", "label", "length", "offset", "origin", "path", "why")

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
    ) -> None:
        self.label = label
        self.path = path
        self.offset = offset
        self.length = length
        self.envelope = envelope
        self.origin = origin
        self.why = why


class Facts:
    """What a message is replayed with: its raw envelope, its client's address (None: local
    mail) and HELO name, and what had to be derived for them, in words ("" when nothing)."""

    __slots__ = ("envelope", "helo", "ip", "said")

    def __init__(self, envelope: bytes, ip: str | None, helo: str | None, said: str) -> None:
        self.envelope = envelope
        self.ip = ip
        self.helo = helo
        self.said = said


def items(sources: list[str]) -> Iterator[Item]:
    """Every message in ``sources``, in a stable order (so two runs compare line by line)."""
    for source in sources:
        yield from _entry(Path(source), source, "no such file or directory")


def _entry(path: Path, label: str, missing: str) -> Iterator[Item]:
    """The messages at ``path``: a directory's (a queue, a maildir, or anything else read
    through), an mbox file's, or the file itself; one that cannot be read is reported as
    ``missing`` or as the system's error, and the caller goes on."""
    try:
        if path.is_dir():
            yield from _directory(path)
        elif path.is_file() and _is_mbox(path):
            yield from _mbox(path)
        elif path.is_file():
            yield _file(path)
        else:  # gone, a dangling or looping link, a socket: said, not skipped
            yield _unreadable(label, missing)
    except OSError as exc:
        yield _unreadable(label, describe(exc))


def _unreadable(label: str, why: str) -> Item:
    return Item(label, label, why=why)


def _directory(path: Path) -> Iterator[Item]:
    if (path / "mess").is_dir() and (path / "info").is_dir():
        yield from _queue(path)
    elif (path / "cur").is_dir() and (path / "new").is_dir():
        for sub in ("new", "cur"):
            for entry in sorted((path / sub).iterdir()):
                if entry.is_file():
                    yield Item(str(entry), str(entry))
    else:
        for entry in sorted(path.iterdir()):
            if entry.suffix == ".env" or entry.name.startswith("."):
                continue
            yield from _entry(entry, str(entry), "not a file or a directory")


def _file(path: Path) -> Item:
    for beside in (Path(f"{path}.env"), path.with_suffix(".env")):
        if beside != path and beside.is_file():
            return Item(
                str(path),
                str(path),
                envelope=beside.read_bytes(),
                origin=f"envelope from {beside.name}",
            )
    return Item(str(path), str(path))


def _is_mbox(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(5) == b"From "


def _mbox(path: Path) -> Iterator[Item]:
    """The messages of an mbox file: from each ``From `` line at a line start to the next,
    the ``From `` line itself left out."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        fd = stream.fileno()
        starts = [0]
        position = 0
        while position < size:
            window = os.pread(fd, WINDOW + 5, position)
            found = window.find(b"\nFrom ")
            while found >= 0:
                starts.append(position + found + 1)
                found = window.find(b"\nFrom ", found + 1)
            position += WINDOW
        for number, start in enumerate(starts, 1):
            end = starts[number] if number < len(starts) else size
            line_end = _line_end(fd, start, end)
            yield Item(f"{path}:{number}", str(path), offset=line_end, length=end - line_end)


def _line_end(fd: int, start: int, end: int) -> int:
    head = os.pread(fd, min(4096, end - start), start)
    newline = head.find(b"\n")
    return start + newline + 1 if newline >= 0 else end


def _queue(path: Path) -> Iterator[Item]:
    mess = path / "mess"
    for split in sorted(mess.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not split.is_dir():
            continue
        for entry in sorted(split.iterdir(), key=lambda p: (len(p.name), p.name)):
            label = f"{path}/mess/{split.name}/{entry.name}"
            relative = Path(split.name) / entry.name
            try:
                info = (path / "info" / relative).read_bytes()
            except OSError:
                info = b""
            recipients = []
            for kind in ("local", "remote"):
                try:
                    records = (path / kind / relative).read_bytes().split(b"\0")
                except OSError:
                    continue
                # qmail-send turns T into D once a recipient is done: both were recipients
                recipients += [r[1:] for r in records if r[:1] in (b"T", b"D")]
            if info.startswith(b"F") and recipients:
                yield Item(
                    label,
                    str(entry),
                    envelope=envelope.serialize(info.split(b"\0")[0][1:], recipients),
                    origin="envelope from the queue (info/, local/, remote/)",
                )
            else:
                yield Item(label, str(entry))


def open_message(item: Item) -> int:
    """A descriptor at offset 0 holding just the message of ``item`` (the file itself, or
    for an mbox message a copy of its range made by the kernel): never the whole in memory."""
    fd = os.open(item.path, os.O_RDONLY | os.O_CLOEXEC)
    if item.length < 0:
        return fd
    try:
        copy = os.memfd_create("replay", os.MFD_CLOEXEC)
        offset, left = item.offset, item.length
        while left > 0:
            sent = os.sendfile(copy, fd, offset, left)
            if not sent:
                break
            offset, left = offset + sent, left - sent
        os.lseek(copy, 0, os.SEEK_SET)
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
    return Facts(raw_envelope, ip, helo, "; ".join(said))


def _header_addresses(head: bytes, name: bytes) -> list[bytes]:
    """The addresses in every ``name:`` header of ``head`` (unfolded), in order."""
    found = []
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    for line in unfolded.split(b"\n"):
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name:
            for angle, bare in _ADDRESS.findall(value):
                found.append(angle if angle or not bare else bare)
    return found
