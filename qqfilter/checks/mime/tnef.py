"""TNEF (winmail.dat): Outlook's wrapping of a message's attachments, read as a container.

A TNEF stream is a list of objects (level, id, length, data, checksum); an attachment is the
run of level-2 objects that starts with attAttachRendData: its 8.3 title (attAttachTitle),
its bytes (attAttachData) and its MAPI properties (attAttachment), which hold the long file
name, the display name and, for an attached message, a whole TNEF stream of its own, whose
attachments are members too. Every name Outlook or a TNEF decoder may show is given.

The objects are walked on the file, never loaded: an attachment is its place in the file
(read in blocks when the layer asks), its names are the only bytes kept, and an embedded
message is walked in its window of the same file. tnefparse, the library the project names
for TNEF, cannot be used so: it takes the whole stream as one bytes object and copies the
rest of it for every object it parses (quadratic time for many small objects). The format is
small enough to walk here; its property ids are tnefparse's (and MS-OXTNEF's).
"""

from __future__ import annotations

import struct

from qqfilter.checks.mime.archives import Entry, stored

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

SIGNATURE = b"\x78\x9f\x3e\x22"
MAX_NESTING = 4
"""Attached messages inside attached messages, looked into at most this deep."""
MAX_PROPERTIES = 10_000
"""MAPI properties read per attachment (Outlook writes a few dozen)."""
MAX_NAME = 4096
"""Bytes of a name property kept (a longer one is cut)."""

_OBJECT = struct.Struct("<BHHL")  # level, name, type, length; then data and a 2-byte checksum
_LEVEL_MESSAGE, _LEVEL_ATTACHMENT = 1, 2
_ATTACH_REND_DATA, _ATTACH_TITLE, _ATTACH_DATA, _ATTACHMENT = 0x9002, 0x8010, 0x800F, 0x9005
_OEM_CODEPAGE = 0x9007
_NAME_PROPERTIES = (0x3707, 0x3704, 0x3001, 0x370D, 0x3708)
"""PR_ATTACH_LONG_FILENAME first (what Outlook shows), then PR_ATTACH_FILENAME,
PR_DISPLAY_NAME, PR_ATTACH_LONG_PATHNAME, PR_ATTACH_PATHNAME."""
_DATA_OBJECT = 0x3701  # PR_ATTACH_DATA_OBJ: the bytes (binary), or an attached message (object)
_IMESSAGE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_FIXED = {0x02: 2, 0x03: 4, 0x04: 4, 0x05: 8, 0x06: 8, 0x07: 8, 0x0A: 4, 0x0B: 4, 0x14: 8}
_FIXED.update({0x40: 8, 0x48: 16, 0x00: 0, 0x01: 0})
_VARIABLE = (0x0D, 0x1E, 0x1F, 0x102)  # object, 8-bit string, UTF-16 string, binary


class _Window:
    """Reading a part of the file [at, end) in order; EOFError past its end."""

    __slots__ = ("at", "end", "stream")

    def __init__(self, stream: BinaryIO, at: int, end: int) -> None:
        self.stream = stream
        self.at = at
        self.end = end

    def take(self, count: int) -> bytes:
        if count > self.end - self.at:
            raise EOFError("TNEF data ends inside a record")
        self.stream.seek(self.at)
        data = self.stream.read(count)
        if len(data) < count:
            raise EOFError("TNEF data ends inside a record")
        self.at += count
        return data

    def skip(self, count: int) -> int:
        """Skip ``count`` bytes; where they started."""
        if count > self.end - self.at:
            raise EOFError("TNEF data ends inside a record")
        start = self.at
        self.at += count
        return start

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")


class _Attachment:
    __slots__ = ("data", "names", "nested", "title")

    def __init__(self) -> None:
        self.names: list[str] = []  # from the MAPI properties, the long name first
        self.title = ""
        self.data: tuple[int, int] | None = None  # where its bytes are, and how many
        self.nested: tuple[int, int] | None = None  # an attached message's TNEF stream


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """The attachments of the TNEF stream in ``stream``, and of the messages attached in it."""
    yield from _stream(stream, 0, size, "", 0)


def _stream(stream: BinaryIO, start: int, end: int, prefix: str, depth: int) -> Iterator[Entry]:
    window = _Window(stream, start, end)
    if window.take(4) != SIGNATURE:
        raise ValueError("no TNEF signature")
    window.skip(2)  # the legacy key
    codepage = "cp1252"
    current: _Attachment | None = None
    count = 0
    while window.end - window.at >= _OBJECT.size + 2:
        level, name, _type, length = _OBJECT.unpack(window.take(_OBJECT.size))
        at = window.skip(length)
        window.skip(2)  # the checksum, not checked: a reader shows the attachment anyway
        if level == _LEVEL_MESSAGE and name == _OEM_CODEPAGE and length >= 4:
            codepage = _codec(int.from_bytes(_read(stream, at, 4), "little"))
        if level != _LEVEL_ATTACHMENT:
            continue
        if name == _ATTACH_REND_DATA:
            if current is not None:
                count += 1
                yield from _members(stream, current, prefix, count, depth)
            current = _Attachment()
        elif current is None:
            continue  # attachment objects before any attAttachRendData: no attachment yet
        elif name == _ATTACH_TITLE:
            current.title = _string(_read(stream, at, min(length, MAX_NAME)), codepage)
        elif name == _ATTACH_DATA:
            current.data = (at, length)
        elif name == _ATTACHMENT:
            _properties(_Window(stream, at, at + length), current, codepage)
    if current is not None:
        yield from _members(stream, current, prefix, count + 1, depth)


def _members(
    stream: BinaryIO, attachment: _Attachment, prefix: str, number: int, depth: int
) -> Iterator[Entry]:
    every = (*attachment.names, attachment.title)  # Outlook shows the long name
    names = tuple(dict.fromkeys(name for name in every if name.strip()))
    names = tuple(prefix + name for name in names or (f"(attachment {number})",))
    if attachment.data is not None or attachment.nested is None:
        at, length = attachment.data or (0, 0)
        yield Entry(
            names,
            encrypted=False,
            size=length,
            unread="",
            read=stored(stream, at, length, "TNEF attachment"),
        )
    if attachment.nested is not None:
        at, length = attachment.nested
        if depth >= MAX_NESTING:
            yield Entry(
                names,
                encrypted=False,
                size=length,
                unread=f"attached messages nested deeper than {MAX_NESTING}",
                read=stored(stream, at, 0, "TNEF attachment"),
            )
            return
        yield from _stream(stream, at, at + length, names[0] + "/", depth + 1)


def _properties(window: _Window, attachment: _Attachment, codepage: str) -> None:
    """The names and data of an attachment from its MAPI properties (attAttachment); a
    list that breaks off keeps what was read before."""
    found: dict[int, str] = {}
    try:
        count = min(window.u32(), MAX_PROPERTIES)
        for _ in range(count):
            kind, tag = struct.unpack("<HH", window.take(4))
            if tag >= 0x8000:  # a named property: its GUID, then an id or a name
                window.skip(16)
                if window.u32() == 0:
                    window.skip(4)
                else:
                    window.skip(_padded(window.u32()))
            base, multiple = kind & 0x0FFF, bool(kind & 0x1000)
            if base in _VARIABLE:
                values = min(window.u32(), MAX_PROPERTIES)
                for _ in range(values):
                    length = window.u32()
                    at = window.skip(_padded(length))
                    _value(window.stream, attachment, found, tag, base, at, length, codepage)
            elif base in _FIXED:
                values = window.u32() if multiple else 1
                window.skip(values * _padded(_FIXED[base]))
            else:
                break  # a type not known: the rest cannot be walked
    except EOFError:
        pass
    attachment.names.extend(found[tag] for tag in _NAME_PROPERTIES if tag in found)


def _value(
    stream: BinaryIO,
    attachment: _Attachment,
    found: dict[int, str],
    tag: int,
    base: int,
    at: int,
    length: int,
    codepage: str,
) -> None:
    if tag in _NAME_PROPERTIES and base in (0x1E, 0x1F) and tag not in found:
        raw = _read(stream, at, min(length, MAX_NAME))
        found[tag] = _string(raw, "utf-16-le" if base == 0x1F else codepage)
    elif tag == _DATA_OBJECT and base == 0x0D and _read(stream, at, 16) == _IMESSAGE:
        attachment.nested = (at + 16, length - 16)
    elif tag == _DATA_OBJECT and attachment.data is None:
        attachment.data = (at, length)


def _read(stream: BinaryIO, at: int, count: int) -> bytes:
    stream.seek(at)
    return stream.read(count)


def _padded(length: int) -> int:
    return (length + 3) & ~3


def _string(raw: bytes, codec: str) -> str:
    return raw.decode(codec, "replace").split("\0", 1)[0].strip()


def _codec(codepage: int) -> str:
    import codecs

    name = "utf-8" if codepage == 65001 else f"cp{codepage}"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name
