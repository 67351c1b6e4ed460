"""The archive layer: every container a desktop opens, looked into at a bounded cost.

A container arrives as a part (or a member of another container) and is decoded into a file
without a name (never into memory), from whatever transfer encoding it came in. Its format is
told by its first bytes (``sniff``), or for a zip also by the end record near its end (data
in front of a zip: self-extractors, polyglots), and its reader lists its entries one at a
time: zipread.py for zips; the modules beside this one for the other formats (FORMATS names
each reader). Every reader gives the same ``Entry``: every name a reader may show, whether it
is encrypted, and its bytes on demand, valid until the next entry is asked for (libarchive
reads a stream, so a member is read while its reader stands on it).

Of each member the first HEAD bytes are read for the content test; a member is expanded whole
(into another nameless file) only when it is a container itself, or when the caller wants
whole files of its kind (documents). Budgets stop the look: members per message, bytes
expanded per message, the nesting depth. What they stop is noted, so policy can judge it.
"""

from __future__ import annotations

import os
import struct

from qqfilter.checks.mime import zipread
from qqfilter.checks.mime.walk import HEAD, Part, decoded
from qqfilter.exitcodes import QueueError
from qqfilter.spool import anonymous_file, write_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

    Reader = Callable[[BinaryIO, int], Iterator["Entry"]]

INNER_NAMES = (".zip", ".jar")
"""Members expanded to be looked into even when they do not start as a zip (a zip with data
in front: a self-extractor or a polyglot under a zip's name)."""

FORMATS: tuple[tuple[str, Callable[[bytes], bool], str], ...] = (
    ("zip", lambda head: head.startswith(zipread.LOCAL), "qqfilter.checks.mime.archives"),
    ("7z", lambda head: head.startswith(b"7z\xbc\xaf\x27\x1c"), "qqfilter.checks.mime.containers"),
    (
        "rar",
        lambda head: head.startswith(b"Rar!\x1a\x07"),
        "qqfilter.checks.mime.containers",
    ),  # RAR 4 and 5
    ("cab", lambda head: head.startswith(b"MSCF\0\0\0\0"), "qqfilter.checks.mime.containers"),
    (
        "arj",
        lambda head: (
            head.startswith(b"\x60\xea") and 30 <= int.from_bytes(head[2:4], "little") <= 2600
        ),
        "qqfilter.checks.mime.arj",
    ),
    (
        "lha",  # the method -lh?- / -lz?- at 2, the header level (0-3) at 20
        lambda head: head[2:5] in (b"-lh", b"-lz") and head[6:7] == b"-" and head[20:21] < b"\x04",
        "qqfilter.checks.mime.containers",
    ),
    (
        "tar",
        lambda head: head[257:262] == b"ustar",
        "qqfilter.checks.mime.containers",
    ),  # POSIX, GNU and pax
    (
        "cpio",  # odc, newc, crc; binary in both byte orders
        lambda head: head.startswith((b"070707", b"070701", b"070702", b"\xc7\x71", b"\x71\xc7")),
        "qqfilter.checks.mime.containers",
    ),
    (
        "compressed",  # one file, or a tar or cpio: gzip, xz, zstd, lzip, bzip2
        lambda head: (
            head.startswith((b"\x1f\x8b\x08", b"\xfd7zXZ\0", b"\x28\xb5\x2f\xfd", b"LZIP"))
            or (head[:3] == b"BZh" and head[4:10] == b"1AY&SY")
        ),
        "qqfilter.checks.mime.containers",
    ),
    ("tnef", lambda head: head.startswith(b"\x78\x9f\x3e\x22"), "qqfilter.checks.mime.tnef"),
    (
        "binhex",
        lambda head: b"(This file must be converted with BinHex" in head,
        "qqfilter.checks.mime.binhex",
    ),
    (
        "udf",  # its volume recognition sequence from 32 KB on; before ISO 9660: a bridge
        lambda head: any(  # image's UDF tree is the one Windows shows
            head[at : at + 5] in (b"BEA01", b"NSR02", b"NSR03")
            for at in range(32769, min(len(head), 65536), 2048)
        ),
        "qqfilter.checks.mime.udf",
    ),
    ("iso9660", lambda head: head[32769:32774] == b"CD001", "qqfilter.checks.mime.containers"),
)
"""(format, test of the first HEAD bytes, module whose ``entries(stream, size)`` reads it),
tried in order. The readers are imported when a container of theirs is met."""


class Encrypted(Exception):
    """Raised by a reader whose container hides even its member names behind a password."""


class Entry:
    """One member as a reader lists it: every name a reader may show (the first is the one
    reported), whether it is encrypted, its declared size (-1: not known), why its content
    cannot be read ("" when it can), and ``read(limit)``, which yields its bytes, at most
    ``limit`` in all, and is valid until the next entry is asked for. A hand-written
    ``__slots__`` class, as every record on the queue path."""

    __slots__ = ("encrypted", "names", "read", "size", "unread")

    def __init__(
        self,
        names: tuple[str, ...],
        *,
        encrypted: bool,
        size: int,
        unread: str,
        read: Callable[[int], Iterator[bytes]],
    ) -> None:
        self.names = names
        self.encrypted = encrypted
        self.size = size
        self.unread = unread
        self.read = read


class Member:
    """One file in a container, as the check judges it: every name a reader may show for it
    (with the names of the containers around it; ``name`` first), its head (empty when
    encrypted or unreadable: judged by name only), and ``file``, a descriptor of the whole
    member expanded (-1 unless the caller asked for its kind or it is a container), valid
    until the next member is asked for."""

    __slots__ = ("encrypted", "file", "head", "name", "names")

    def __init__(
        self, names: tuple[str, ...], head: bytes, *, encrypted: bool, file: int = -1
    ) -> None:
        self.names = names
        self.name = names[0]
        self.head = head
        self.encrypted = encrypted
        self.file = file


class Budget:
    """What one message may spend on containers; ``exceeded`` says what stopped the look."""

    __slots__ = ("depth", "exceeded", "expanded", "max_expanded", "members")

    def __init__(self, *, depth: int, members: int, expanded: int) -> None:
        self.depth = depth
        self.members = members
        self.max_expanded = expanded
        self.expanded = 0
        self.exceeded: list[str] = []

    def note(self, why: str) -> None:
        if why not in self.exceeded:
            self.exceeded.append(why)


def sniff(head: bytes) -> str:
    """The container format ``head`` (a file's first bytes) starts as, or ""."""
    for name, test, _module in FORMATS:
        if test(head):
            return name
    return ""


def container(part: Part) -> str:
    """The container format of ``part``: by its first bytes, or a zip by an end record near
    its end, as unzip and 7-Zip find one (data in front of the zip); "" if none."""
    from qqfilter.checks.mime.walk import decode_tail

    found = sniff(part.head)
    if found or len(part.head) < zipread.END_SIZE:
        return found
    tail = decode_tail(part.spool, part.start, part.end, part.encoding, zipread.TAIL)
    return "zip" if any(True for _ in zipread.end_records(tail, None)) else ""


def decode_part(part: Part, directory: str) -> int:
    """A nameless file (its descriptor, at offset 0) holding the part's body decoded from
    its transfer encoding: what the recipient's mail program would save. The bytes are read
    from the file the part carries (``part.spool``: the message, or the file the walk
    decoded an encoded message or text into)."""
    fd = anonymous_file(directory)
    try:
        for data in decoded(part.spool, part.start, part.end, part.encoding):
            if data:
                write_all(fd, data, directory)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def members(
    fd: int,
    outer: str,
    budget: Budget,
    directory: str,
    *,
    whole: Callable[[bytes], bool] | None = None,
    depth: int = 1,
) -> Iterator[Member]:
    """The members of the container in the file ``fd`` (named ``outer`` in reports), and of
    the containers inside it down to the budget's depth. ``whole(head)`` says which members
    the caller wants expanded (``Member.file``)."""
    size = os.fstat(fd).st_size
    with os.fdopen(os.dup(fd), "rb") as stream:
        head = stream.read(HEAD)
        found = sniff(head) or _zip_by_its_end(stream, size)
        if not found:
            budget.note(f"{outer}: not a readable archive")
            return
        stream.seek(0)
        yield from _entries(stream, size, found, outer, budget, directory, whole, depth)


def _zip_by_its_end(stream: BinaryIO, size: int) -> str:
    start = max(0, size - zipread.TAIL)
    stream.seek(start)
    tail = stream.read(size - start)
    return "zip" if any(True for _ in zipread.end_records(tail, start)) else ""


def _entries(
    stream: BinaryIO,
    size: int,
    found: str,
    outer: str,
    budget: Budget,
    directory: str,
    whole: Callable[[bytes], bool] | None,
    depth: int,
) -> Iterator[Member]:
    reader = _reader(found)
    try:
        for entry in reader(stream, size):
            if budget.members <= 0:
                budget.note("too many archive members")
                return
            budget.members -= 1
            if found == "compressed":  # and the name a desktop saves it under, too
                entry.names = (*entry.names, _uncompressed_name(outer))
            yield from _member(entry, outer, budget, directory, whole, depth)
    except Encrypted:
        yield Member((f"{outer}/",), b"", encrypted=True)
    except (OSError, ValueError, OverflowError, EOFError, struct.error) as exc:
        budget.note(f"{outer}: not a readable {found} archive ({_words(exc)})")


def _member(
    entry: Entry,
    outer: str,
    budget: Budget,
    directory: str,
    whole: Callable[[bytes], bool] | None,
    depth: int,
) -> Iterator[Member]:
    names = tuple(f"{outer}/{name}" for name in entry.names)
    if entry.encrypted or entry.unread:
        if entry.unread:
            budget.note(f"{names[0]}: cannot be read ({entry.unread})")
        yield Member(names, b"", encrypted=entry.encrypted)
        return
    chunks = entry.read(budget.max_expanded - budget.expanded + 1)
    try:
        head = _head(chunks)
    except (OSError, ValueError, EOFError) as exc:
        budget.note(f"{names[0]}: cannot be read ({_words(exc)})")
        yield Member(names, b"", encrypted=False)
        return
    budget.expanded += len(head)
    inner = sniff(head) or ("zip?" if head and names[0].lower().endswith(INNER_NAMES) else "")
    wanted = whole is not None and whole(head)
    if not (inner or wanted):
        yield Member(names, head, encrypted=False)
        return
    if inner and not wanted and depth >= budget.depth:
        budget.note(f"{names[0]}: archives nested deeper than {budget.depth}")
        yield Member(names, head, encrypted=False)
        return
    fd = _expand(head, chunks, entry.size, names[0], budget, directory)
    try:
        yield Member(names, head, encrypted=False, file=fd)
        if fd < 0 or not inner:
            return
        if depth >= budget.depth:
            budget.note(f"{names[0]}: archives nested deeper than {budget.depth}")
            return
        os.lseek(fd, 0, os.SEEK_SET)
        if inner == "zip?":
            yield from members(fd, names[0], budget, directory, whole=whole, depth=depth + 1)
            return
        with os.fdopen(os.dup(fd), "rb") as stream:
            size = os.fstat(fd).st_size
            yield from _entries(stream, size, inner, names[0], budget, directory, whole, depth + 1)
    finally:
        if fd >= 0:
            os.close(fd)


def _head(chunks: Iterator[bytes]) -> bytes:
    """The first HEAD bytes from ``chunks`` (the rest stays in the iterator, except what the
    last chunk read carried past HEAD: _expand is given the head and the rest)."""
    parts: list[bytes] = []
    have = 0
    for chunk in chunks:
        parts.append(chunk)
        have += len(chunk)
        if have >= HEAD:
            break
    return b"".join(parts)


def _expand(
    head: bytes,
    chunks: Iterator[bytes],
    declared: int,
    name: str,
    budget: Budget,
    directory: str,
) -> int:
    """The member written whole into a nameless file (its descriptor), within the expanded
    budget; -1, noted, when it does not fit or cannot be read."""
    if declared > 0 and budget.expanded + declared - len(head) > budget.max_expanded:
        budget.note(f"{name}: over the expanded-size budget")
        return -1
    fd = anonymous_file(directory)
    try:
        write_all(fd, head, directory)
        for chunk in chunks:
            budget.expanded += len(chunk)
            if budget.expanded > budget.max_expanded:
                budget.note(f"{name}: over the expanded-size budget")
                os.close(fd)
                return -1
            write_all(fd, chunk, directory)
    except QueueError:
        os.close(fd)
        raise  # the spool directory is full: that is 53, not a note
    except (OSError, ValueError, EOFError) as exc:
        budget.note(f"{name}: cannot be read ({_words(exc)})")
        os.close(fd)
        return -1
    return fd


CHUNK = 1 << 18
"""Bytes of a stored member read at a time."""


def stored(stream: BinaryIO, at: int, length: int, what: str) -> Callable[[int], Iterator[bytes]]:
    """``Entry.read`` for a member kept as it is in the container: ``length`` bytes of
    ``stream`` from ``at``, CHUNK at a time; EOFError naming ``what`` if the file ends first."""

    def read(limit: int) -> Iterator[bytes]:
        position, remaining = at, min(length, limit)
        while remaining > 0:
            stream.seek(position)
            data = stream.read(min(CHUNK, remaining))
            if not data:
                raise EOFError(f"{what} cut short")
            position += len(data)
            remaining -= len(data)
            yield data

    return read


def _reader(found: str) -> Reader:
    if found == "zip":
        return entries
    import importlib

    for name, _test, module in FORMATS:
        if name == found:
            return importlib.import_module(module).entries
    raise ValueError(f"no reader for {found}")


COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz", ".xz", ".txz", ".zst", ".lz", ".z")


def _uncompressed_name(outer: str) -> str:
    """The name 7-Zip, gunzip and a desktop save a compressed file's content under: its own
    name without the compression's suffix (``invoice.pdf.exe.gz``: ``invoice.pdf.exe``)."""
    last = outer.rsplit("/", 1)[-1]
    for suffix in COMPRESSED_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            stem = last[: -len(suffix)]
            return stem + ".tar" if suffix.startswith(".t") else stem
    return last


def _words(exc: BaseException) -> str:
    """An exception in a few words for the log line."""
    text = str(exc) or type(exc).__name__
    return text[:120]


# The zip reader (zipread.py) in the layer's terms.


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """The entries of a zip, from its central directory (or its local headers)."""
    try:
        for found in zipread.entries(stream, size):
            yield Entry(
                found.names,
                encrypted=found.encrypted,
                size=found.size,
                unread=_unread_method(found),
                read=_zip_read(stream, found),
            )
    except zipread.NotZip as exc:
        raise ValueError(str(exc)) from None


def _unread_method(found: zipread.Entry) -> str:
    if found.encrypted or zipread.readable(found.method):
        return ""
    return f"compression {found.method_name} is not read"


def _zip_read(stream: BinaryIO, found: zipread.Entry) -> Callable[[int], Iterator[bytes]]:
    def read(limit: int) -> Iterator[bytes]:
        try:
            yield from zipread.decompressed(stream, found, limit)
        except zipread.NotZip as exc:
            raise ValueError(str(exc)) from None

    return read
