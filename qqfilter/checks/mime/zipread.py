"""Reading a zip archive the way unzip, 7-Zip and Windows do, one entry at a time.

The stdlib's zipfile builds a record for every entry of the central directory before the
first can be read: a directory that lists 400,000 entries (all pointing at one local header)
costs hundreds of megabytes before any budget is consulted. Here the end-of-central-directory
record is found from the end of the file (so data in front of the zip, as in self-extractors
and polyglots, is no obstacle: the offsets are corrected as unzip corrects them), and the
directory is walked an entry at a time, as far as the caller keeps asking. Without an end
record, the local headers are walked from the start instead (a truncated zip still shows its
first members, as 7-Zip shows them).

Each entry carries every name a reader might show: the central directory's (UTF-8 when its
flag says so, else code page 437), Info-ZIP's Unicode path field, and the local header's,
which streaming readers use. Of a member only what is asked for is decompressed, with the
stdlib's zlib, bz2 and lzma; other methods (implode, deflate64, ...) are named as unread.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"
END = b"PK\x05\x06"
END64 = b"PK\x06\x06"
END64_LOCATOR = b"PK\x06\x07"

_END = struct.Struct("<4s4H2LH")  # signature, disks (2), entries (2), size, offset, comment
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
END_SIZE = _END.size
MAX_COMMENT = 0xFFFF
TAIL = _END.size + MAX_COMMENT
"""How far from the end of a zip its end record can be: the record and the longest comment."""
CHUNK = 1 << 16
"""Compressed bytes read at a time."""
OUT = 1 << 18
"""Decompressed bytes made at a time, at most."""

STORED, DEFLATED, DEFLATE64, BZIP2, LZMA, XZ, PPMD = 0, 8, 9, 12, 14, 95, 98
MAX_PPMD_MODEL = 32 << 20
"""The largest PPMd model (the archive chooses, up to 256 MB) decompressed here: past it a
member is judged by name only."""
_METHODS = {6: "implode", 9: "deflate64", 93: "zstd", 95: "xz", 98: "ppmd", 99: "AES"}


class NotZip(Exception):
    """No zip here: neither an end record nor a local header at the start."""


class Entry:
    """One member as the directory (or its local header) describes it. A hand-written
    ``__slots__`` class, as every record on the queue path. ``names`` holds every name a
    reader may show, the directory's first; ``offset`` is its local header's, corrected."""

    __slots__ = ("compressed", "encrypted", "method", "names", "offset", "size")

    def __init__(
        self,
        names: tuple[str, ...],
        method: int,
        encrypted: bool,
        compressed: int,
        size: int,
        offset: int,
    ) -> None:
        self.names = names
        self.method = method
        self.encrypted = encrypted
        self.compressed = compressed
        self.size = size
        self.offset = offset

    @property
    def method_name(self) -> str:
        return _METHODS.get(self.method, f"method {self.method}")


def end_records(tail: bytes, tail_at: int | None) -> Iterator[int]:
    """Where in ``tail`` (the last bytes of a file, TAIL of them suffice; ``tail_at`` is
    where they start in the file, None when not known) a zip's end record may start, the
    last first, as unzip and 7-Zip search. A candidate must fit with its comment, and its
    directory must lie in the file before it (or a zip64 locator precede it)."""
    position = len(tail)
    while (position := tail.rfind(END, 0, position)) >= 0:
        if len(tail) - position < _END.size:
            continue
        *_, size, offset, comment = _END.unpack_from(tail, position)
        if position + _END.size + comment > len(tail):
            continue
        if _has_locator(tail, position) or tail_at is None or tail_at + position - size >= offset:
            yield position


def entries(stream: BinaryIO, file_size: int) -> Iterator[Entry]:
    """The entries of the zip in ``stream``, in directory order, one at a time (the caller
    stops when its budget is spent). Raises NotZip when there is no zip at all; a directory
    that breaks off ends the entries there."""
    start = max(0, file_size - TAIL)
    stream.seek(start)
    tail = stream.read(file_size - start)
    for at in end_records(tail, start):
        found = _directory(stream, tail, start, at)
        if found is not None:
            yield from _central_entries(stream, *found)
            return
    stream.seek(0)
    if stream.read(4) != LOCAL:
        raise NotZip("no end of central directory and no local header")
    yield from _local_entries(stream, file_size)


def _directory(stream: BinaryIO, tail: bytes, start: int, at: int) -> tuple[int, int, int] | None:
    """The central directory the end record at ``tail[at:]`` describes: where it starts and
    ends, and the shift of every offset (the bytes in front of the zip); None if there is
    no directory there."""
    end_at = start + at
    *_, size, offset, _ = _END.unpack_from(tail, at)
    directory_at = end_at - size
    if _has_locator(tail, at):
        record = _zip64_end(stream, end_at - _END64_LOCATOR.size)
        if record is not None:
            size, offset = record[1], record[2]
            directory_at = record[0] - size
    shift = directory_at - offset
    if directory_at < 0 or shift < 0:
        return None
    stream.seek(directory_at)
    if size and stream.read(4) != CENTRAL:
        return None
    return directory_at, directory_at + size, shift


def _has_locator(tail: bytes, at: int) -> bool:
    """Is the end record at ``tail[at:]`` preceded by a zip64 locator?"""
    locator_at = at - _END64_LOCATOR.size
    return locator_at >= 0 and tail[locator_at : locator_at + 4] == END64_LOCATOR


def _zip64_end(stream: BinaryIO, locator_at: int) -> tuple[int, int, int] | None:
    """The zip64 end record's position, directory size and offset, or None. The record is
    looked for right before its locator, whatever offset the locator declares (data in front
    of the zip would make that wrong), as zipfile does."""
    record_at = locator_at - _END64.size  # where it is, whatever the locator declares
    if record_at < 0:
        return None
    stream.seek(record_at)
    raw = stream.read(_END64.size)
    if len(raw) < _END64.size or not raw.startswith(END64):
        return None
    fields = _END64.unpack(raw)
    return record_at, fields[8], fields[9]


def _central_entries(stream: BinaryIO, position: int, end: int, shift: int) -> Iterator[Entry]:
    while position + _CENTRAL.size <= end:
        stream.seek(position)
        raw = stream.read(_CENTRAL.size)
        if len(raw) < _CENTRAL.size or not raw.startswith(CENTRAL):
            return
        fields = _CENTRAL.unpack(raw)
        flags, method = fields[3], fields[4]
        compressed, size = fields[8], fields[9]
        name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
        offset = fields[16]
        variable = stream.read(name_length + extra_length)
        position += _CENTRAL.size + name_length + extra_length + comment_length
        name = _name(variable[:name_length], flags)
        extra = variable[name_length:]
        size, compressed, offset = _zip64_sizes(extra, size, compressed, offset)
        names = (name, *_unicode_path(extra))
        local = _local_name(stream, offset + shift)
        if local is not None:
            names = (*names, local)
        yield Entry(
            tuple(dict.fromkeys(names)),
            method,
            bool(flags & 1) or method == 99,
            compressed,
            size,
            offset + shift,
        )


def _local_entries(stream: BinaryIO, file_size: int) -> Iterator[Entry]:
    """Local headers from the start, as a streaming reader sees them: a member whose size
    is only in a data descriptor after it (flag bit 3) is the last one that can be found."""
    position = 0
    while position + _LOCAL.size <= file_size:
        stream.seek(position)
        raw = stream.read(_LOCAL.size)
        if len(raw) < _LOCAL.size or not raw.startswith(LOCAL):
            return
        fields = _LOCAL.unpack(raw)
        flags, method, compressed, size = fields[2], fields[3], fields[7], fields[8]
        name_length, extra_length = fields[9], fields[10]
        variable = stream.read(name_length + extra_length)
        extra = variable[name_length:]
        size, compressed, _ = _zip64_sizes(extra, size, compressed, 0)
        names = (_name(variable[:name_length], flags), *_unicode_path(extra))
        yield Entry(
            tuple(dict.fromkeys(names)),
            method,
            bool(flags & 1) or method == 99,
            compressed,
            size,
            position,
        )
        if flags & 8:
            return
        position += _LOCAL.size + name_length + extra_length + compressed


def _name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, position)
        yield tag, extra[position + 4 : position + 4 + length]
        position += 4 + length


def _zip64_sizes(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field, for those the header marks 0xFFFFFFFF."""
    for tag, data in _extra_fields(extra):
        if tag != 1:
            continue
        values = [v for (v,) in struct.iter_unpack("<Q", data[: len(data) - len(data) % 8])]
        if size == 0xFFFFFFFF and values:
            size = values.pop(0)
        if compressed == 0xFFFFFFFF and values:
            compressed = values.pop(0)
        if offset == 0xFFFFFFFF and values:
            offset = values.pop(0)
    return size, compressed, offset


def _unicode_path(extra: bytes) -> tuple[str, ...]:
    """Info-ZIP's Unicode path field (0x7075), which 7-Zip and others show instead."""
    return tuple(
        data[5:].decode("utf-8", "replace")
        for tag, data in _extra_fields(extra)
        if tag == 0x7075 and len(data) > 5
    )


def _local_name(stream: BinaryIO, offset: int) -> str | None:
    """The name in the local header at ``offset`` (streaming readers show this one)."""
    stream.seek(offset)
    raw = stream.read(_LOCAL.size)
    if len(raw) < _LOCAL.size or not raw.startswith(LOCAL):
        return None
    fields = _LOCAL.unpack(raw)
    return _name(stream.read(fields[9]), fields[2])


def data_start(stream: BinaryIO, entry: Entry) -> int:
    """Where the member's compressed data begins (after its local header); NotZip if the
    header is not there."""
    stream.seek(entry.offset)
    raw = stream.read(_LOCAL.size)
    if len(raw) < _LOCAL.size or not raw.startswith(LOCAL):
        raise NotZip("no local header where the directory points")
    fields = _LOCAL.unpack(raw)
    return entry.offset + _LOCAL.size + fields[9] + fields[10]


def decompressed(stream: BinaryIO, entry: Entry, limit: int) -> Iterator[bytes]:
    """The member's bytes, decompressed a chunk of at most OUT bytes at a time, at most
    ``limit`` of them in all (a bomb costs what is asked for, and memory one chunk). Raises
    NotZip for a missing header, ValueError for a method not read here or data that does
    not decompress."""
    position = data_start(stream, entry)
    remaining = entry.compressed
    step = _decompressor(entry.method)
    pending = ended = False
    while limit > 0:
        raw = b""
        if not pending:  # what was fed is drained: read on
            stream.seek(position)
            raw = stream.read(min(CHUNK, remaining, limit if step is None else CHUNK))
            position += len(raw)
            remaining -= len(raw)
            ended = not raw
        data = raw if step is None else step(raw, min(limit, OUT))
        if data:
            limit -= len(data)
            pending = step is not None
            yield data
        elif pending:
            pending = False
        elif ended:
            return


def readable(method: int) -> bool:
    """Is ``method`` one read here (stored, deflate, deflate64, bzip2, lzma, xz, PPMd)?"""
    return method in (STORED, DEFLATED, DEFLATE64, BZIP2, LZMA, XZ, PPMD)


def _decompressor(method: int):
    """A function (compressed chunk, limit) -> bytes for ``method``; None for stored."""
    if method == STORED:
        return None
    if method == DEFLATED:
        state = zlib.decompressobj(-15)
        return _bounded(state)
    if method == BZIP2:
        import bz2

        return _bounded_stream(bz2.BZ2Decompressor())
    if method == LZMA:
        return _lzma()
    if method == XZ:
        import lzma

        return _bounded_stream(lzma.LZMADecompressor(lzma.FORMAT_XZ))
    if method == DEFLATE64:
        return _deflate64()
    if method == PPMD:
        return _ppmd()
    raise ValueError(f"compression {_METHODS.get(method, f'method {method}')} is not read")


def _bounded(state):
    """zlib: input not yet consumed (past ``limit``) is kept and fed first next time."""

    def step(raw: bytes, limit: int) -> bytes:
        data = state.unconsumed_tail + raw
        try:
            return state.decompress(data, limit)
        except zlib.error as exc:
            raise ValueError(str(exc)) from None

    return step


def _bounded_stream(state):
    """bz2 and lzma decompressors keep unconsumed input themselves (``needs_input``)."""

    def step(raw: bytes, limit: int) -> bytes:
        if state.eof:
            return b""
        try:
            if not raw and state.needs_input:
                return b""
            return state.decompress(raw, max_length=limit)
        except (OSError, EOFError) as exc:
            raise ValueError(str(exc)) from None

    return step


def _lzma():
    """zip's LZMA: a 4-byte header and the filter properties, then raw LZMA1 data."""
    import lzma

    header = b""
    state: list = []

    def step(raw: bytes, limit: int) -> bytes:
        nonlocal header
        if not state:
            header += raw
            if len(header) < 4:
                return b""
            (length,) = struct.unpack_from("<H", header, 2)
            if len(header) < 4 + length:
                return b""
            try:
                filters = [
                    lzma._decode_filter_properties(lzma.FILTER_LZMA1, header[4 : 4 + length])  # type: ignore[attr-defined]  # zipfile reads it so too
                ]
                state.append(
                    _bounded_stream(lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters))
                )
            except lzma.LZMAError as exc:
                raise ValueError(str(exc)) from None
            raw = header[4 + length :]
        return state[0](raw, limit)

    return step


def _deflate64():
    """Deflate64 (7-Zip and Windows write it for large files) through inflate64, whose
    inflate() has no output limit: it is fed 1 KB at a time (at most about 1 MB out), and
    what it gave past ``limit`` is kept for the next call."""
    import inflate64

    state = inflate64.Inflater()
    queue = b""
    pending = bytearray()

    def step(raw: bytes, limit: int) -> bytes:
        nonlocal queue
        queue += raw
        try:
            while len(pending) < limit and queue and not state.eof:
                piece, queue = queue[:1024], queue[1024:]
                pending.extend(state.inflate(piece))
        except Exception as exc:  # the library's own error for data that does not inflate
            raise ValueError(f"deflate64: {exc}") from None
        out = bytes(pending[:limit])
        del pending[:limit]
        return out

    return step


def _ppmd():
    """zip's PPMd (version I, revision 1): a 2-byte header (order, model size, restore
    method), then the data, through pyppmd's decoder, whose output is bounded per call."""
    import pyppmd

    header = b""
    state: list = []

    def step(raw: bytes, limit: int) -> bytes:
        nonlocal header
        if not state:
            header += raw
            if len(header) < 2:
                return b""
            properties = int.from_bytes(header[:2], "little")
            order, model = (properties & 0xF) + 1, (((properties >> 4) & 0xFF) + 1) << 20
            if order < 2 or model > MAX_PPMD_MODEL:
                raise ValueError(f"PPMd model of order {order}, {model >> 20} MB not read")
            state.append(pyppmd.Ppmd8Decoder(order, model, restore_method=properties >> 12))
            raw = header[2:]
        decoder = state[0]
        if decoder.eof or (not raw and decoder.needs_input):
            return b""
        try:
            return decoder.decode(raw, limit)
        except Exception as exc:  # the library's own error for data that does not decode
            raise ValueError(f"PPMd: {exc}") from None

    return step
