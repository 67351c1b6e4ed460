"""ARJ archives: every member's name and flags, and the bytes of stored members.

libarchive has no ARJ reader (3.6.2 lists none), so the headers are walked here: the main
header, then one local header per member (0x60 0xEA, a basic header of at most 2,600 bytes
with its CRC, extended headers), each followed by the member's compressed data, which is
skipped by its declared size. A member stored (method 0) is read in blocks. ARJ's methods
1-3 (what ``arj a`` writes by default) are the LZH coding LHA's -lh7- method uses (static
Huffman blocks, the same code tables and match lengths; ARJ's 26 KB window fits in -lh7-'s
64 KB): such a member's data is given to libarchive behind an LHA header of our making, in a
file without a name (memfd), up to MAX_LZH compressed bytes. Method 4 (ARJ's "fastest") is
named as unread: judged by name, and noted. A garbled (password) member is encrypted.
"""

from __future__ import annotations

import struct
import zlib

from qqfilter.checks.mime.archives import Entry, stored

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

MARK = b"\x60\xea"
MAX_LZH = 16 << 20
"""Compressed bytes of one member given to libarchive at most (it is copied to read it)."""
MAX_HEADER = 2600
_GARBLED, _DIRECTORY, _COMMENT_HEADER = 0x01, 3, 2


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """The members, in order; the main header is checked and passed over."""
    position = 0
    first = True
    while True:
        header = _header(stream, position)
        if header is None:
            return  # the end-of-archive mark (a header of size 0)
        basic, data_at = header
        if len(basic) < 30:
            raise ValueError("an ARJ header shorter than its fields")
        first_size, _version, _minimum, _host, flags, method, kind = basic[:7]
        compressed, original = struct.unpack_from("<2L", basic, 12)
        if first:
            first = False
            if kind != _COMMENT_HEADER:
                raise ValueError("no ARJ main header")
            position = data_at
            continue
        name_end = basic.find(b"\0", first_size)
        raw_name = basic[first_size : name_end if name_end >= 0 else len(basic)]
        name = raw_name.decode("cp437").replace("\\", "/")
        position = data_at + compressed
        if kind == _DIRECTORY:
            continue
        encrypted = bool(flags & _GARBLED)
        read = stored(stream, data_at, min(compressed, original), "ARJ member")
        unread = ""
        if method in (1, 2, 3) and compressed <= MAX_LZH:
            read = _lzh_reader(stream, data_at, compressed, original)
        elif method and not encrypted:
            unread = f"ARJ compression method {method} is not read"
        yield Entry(
            (name or "(unnamed)",),
            encrypted=encrypted,
            size=original,
            unread=unread,
            read=read,
        )


def _header(stream: BinaryIO, position: int) -> tuple[bytes, int] | None:
    """The basic header at ``position`` and where the member's data starts (after the
    extended headers); None at the end mark."""
    stream.seek(position)
    raw = stream.read(4)
    if len(raw) < 4 or raw[:2] != MARK:
        raise ValueError("no ARJ header where one should be")
    (length,) = struct.unpack_from("<H", raw, 2)
    if length == 0:
        return None
    if length > MAX_HEADER:
        raise ValueError("an ARJ header longer than 2,600 bytes")
    basic = stream.read(length)
    crc = stream.read(4)
    if len(basic) < length or len(crc) < 4:
        raise EOFError("ARJ data ends inside a header")
    if zlib.crc32(basic) != int.from_bytes(crc, "little"):
        raise ValueError("an ARJ header whose CRC does not match")
    at = position + 4 + length + 4
    while True:  # extended headers: a size, the data and a CRC, until a size of 0
        stream.seek(at)
        size = stream.read(2)
        if len(size) < 2:
            raise EOFError("ARJ data ends inside a header")
        extended = int.from_bytes(size, "little")
        at += 2
        if not extended:
            return basic, at
        at += extended + 4


def _lzh_reader(
    stream: BinaryIO, at: int, compressed: int, original: int
) -> Callable[[int], Iterator[bytes]]:
    """A member in ARJ's methods 1-3, read by libarchive as an LHA -lh7- member: a level-0
    LHA header (its CRC-16 cannot be known: libarchive's check of it at the member's end is
    a warning, after the data) and the member's compressed bytes, in a memfd."""

    def read(limit: int) -> Iterator[bytes]:
        import os

        from qqfilter.checks.mime import containers

        name = b"member"
        fields = b"-lh7-" + struct.pack("<LLLBBB", compressed, original, 0, 0x20, 0, len(name))
        fields += name + b"\0\0"  # the CRC-16 of the data: not known
        header = bytes([len(fields), sum(fields) & 0xFF]) + fields
        fd = os.memfd_create("qqfilter-arj", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "w+b") as lha:
                lha.write(header)
                for chunk in stored(stream, at, compressed, "ARJ member")(compressed):
                    lha.write(chunk)
                lha.write(b"\0")  # LHA's end mark
                lha.flush()
                size = lha.tell()
                for entry in containers.entries(lha, size):
                    yield from entry.read(limit)
                    return
        finally:
            os.close(fd)

    return read
