"""The archives libarchive reads: 7z, rar (4 and 5), cab, lha/lzh, tar, cpio, ISO 9660, and
single compressed files (gzip, bzip2, xz, zstd, ...), one entry at a time.

libarchive (the C library, through libarchive-c) reads a container as a stream: an entry's
bytes can be read only while the reader stands on it, which is the shape ``archives.Entry``
has. The file is handed over as a descriptor and read in blocks, so nothing is held whole,
whatever sizes the headers declare.

Only the format the first bytes name is enabled (never libarchive's "all"): its mtree reader
opens files named inside the archive on the local disk, and some of its filters run outside
programs (lrzip, grzip). The filters are the ones compiled in. A compressed stream may hold a
tar or a cpio; else it is one member ("raw"), named from the gzip header when it has a name.

Skipping a member unread makes libarchive decompress it (a solid 7z block, a tar.gz): the
skipped bytes are read here and counted, and past MAX_SKIP the listing stops (the layer notes
it), so a small archive declaring gigabytes of zeros before its last member costs a bounded
time. libarchive-c is imported (about 60 ms) only when such a container is met; without the
C library (libarchive13) the reader raises an OSError the layer notes.
"""

from __future__ import annotations

import os
import struct

from qqfilter.checks.mime.archives import Encrypted, Entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

BLOCK = 1 << 18
"""Bytes libarchive reads from the file at a time."""
MAX_SKIP = 256 << 20
"""Bytes decompressed to reach the next member, at most, per container."""
COMPRESSED = ("gzip", "bzip2", "xz", "lzma", "lzip", "zstd", "compress")
"""The filters enabled: each is compiled into Debian's libarchive13 (none runs a program)."""
FORMATS = {
    "7z": ("7zip",),
    "rar": ("rar", "rar5"),
    "cab": ("cab",),
    "lha": ("lha",),
    "tar": ("tar",),
    "cpio": ("cpio",),
    "iso9660": ("iso9660",),
    "compressed": ("tar", "cpio", "raw"),
}
"""libarchive's formats for each of archives.FORMATS' rows this module reads."""
_RAW_NAME = "(data)"
_FILE_TYPE, _DIRECTORY = 0o170000, 0o040000


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """The members of the container in ``stream`` (its format told again from its head)."""
    from qqfilter.checks.mime import archives

    stream.seek(0)
    head = stream.read(archives.HEAD)
    found = archives.sniff(head)
    formats = FORMATS.get(found)
    if formats is None:
        raise ValueError(f"{found or 'this format'} is not read by libarchive")
    ffi, error = _library()
    archive = ffi.read_new()
    try:
        for name in COMPRESSED if found == "compressed" else ():
            ffi.get_read_filter_function(name)(archive)
        for name in formats:
            ffi.get_read_format_function(name)(archive)
        if "iso9660" in formats:  # the names Windows shows: Joliet's (it ignores Rock Ridge)
            ffi.read_set_options(archive, b"iso9660:!rockridge")
        try:
            os.lseek(stream.fileno(), 0, os.SEEK_SET)  # the head was read through the buffer
            ffi.read_open_fd(archive, stream.fileno(), BLOCK)
            yield from _walk(ffi, error, archive, gzip_name(head) or _RAW_NAME)
        except error as exc:
            raise ValueError(_message(exc)) from None
    finally:
        ffi.read_free(archive)


def _walk(ffi: Any, error: type[Exception], archive: int, raw_name: str) -> Iterator[Entry]:
    from ctypes import byref, c_longlong, c_size_t, c_void_p

    entry = ffi.entry_new()
    skipped = 0
    current = [0]  # the entry a read() belongs to: reads are valid until the next one
    try:
        while True:
            try:
                if ffi.read_next_header2(archive, entry) == 1:  # ARCHIVE_EOF
                    return
            except error as exc:
                if current[0] == 0 and "ncrypt" in _message(exc):
                    raise Encrypted(_message(exc)) from None
                raise
            current[0] += 1
            if ffi.entry_filetype(entry) & _FILE_TYPE == _DIRECTORY:
                continue
            raw = ffi.format_name(archive) == b"raw"
            names = (raw_name,) if raw else _names(ffi, entry)
            declared = ffi.entry_size(entry) if ffi.entry_size_is_set(entry) else -1
            yield Entry(
                names,
                encrypted=bool(ffi.entry_is_encrypted(entry)),
                size=declared,
                unread="",
                read=_reader(ffi, error, archive, current),
            )
            # the member's rest, decompressed to reach the next one: counted, not kept
            block, length, offset = c_void_p(), c_size_t(), c_longlong()
            try:
                while (
                    got := ffi.read_data_block(archive, byref(block), byref(length), byref(offset))
                ) != 1:
                    if got < 0 and not length.value:
                        break  # a warning without data: the next header tells the rest
                    skipped += length.value
                    if skipped > MAX_SKIP:
                        raise ValueError(
                            f"stopped: more than {MAX_SKIP >> 20} MB decompressed to skip members"
                        )
            except error:
                if not ffi.entry_is_encrypted(entry):
                    raise  # an encrypted member's data cannot be read: libarchive goes on
    finally:
        ffi.entry_free(entry)


def _reader(
    ffi: Any, error: type[Exception], archive: int, current: list[int]
) -> Callable[[int], Iterator[bytes]]:
    """The member's bytes, a block at a time as libarchive decodes them (read_data_block: a
    warning that comes with the last block, like LHA's CRC check, does not lose the block,
    as read_data would), at most ``limit`` in all."""
    from ctypes import byref, c_longlong, c_size_t, c_void_p, string_at

    mine = current[0]

    def read(limit: int) -> Iterator[bytes]:
        block, length, offset = c_void_p(), c_size_t(), c_longlong()
        while limit > 0:
            if current[0] != mine:
                raise ValueError("read after the next member was asked for")
            try:
                got = ffi.read_data_block(archive, byref(block), byref(length), byref(offset))
            except error as exc:
                raise ValueError(_message(exc)) from None
            if got == 1:  # ARCHIVE_EOF
                return
            if length.value and block.value:
                data = string_at(block.value, min(length.value, limit))
                limit -= len(data)
                yield data
            if got < 0:  # a warning: what came with it is given, the member ends here
                return

    return read


def _names(ffi: Any, entry: int) -> tuple[str, ...]:
    """The member's path as libarchive has it: UTF-8 when it can convert it, else the raw
    bytes in Latin-1 (no locale is set under qmail), never nothing."""
    utf8 = ffi.entry_pathname_utf8(entry)
    if utf8 is not None:
        return (utf8.decode("utf-8", "replace") or _RAW_NAME,)
    raw = ffi.entry_pathname(entry)
    return ((raw or b"").decode("latin-1") or _RAW_NAME,)


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "msg", None) or exc or type(exc).__name__)


def _library() -> tuple[Any, type[Exception]]:
    """libarchive-c's ffi module and its error class; OSError when the C library is missing."""
    import logging

    try:
        from libarchive import ffi
        from libarchive.exception import ArchiveError
    except (OSError, AttributeError, ImportError) as exc:
        # without libarchive.so.13, ctypes loads the program itself: no archive_* symbol
        raise OSError(f"libarchive (libarchive13) cannot be loaded: {exc}") from None
    log = logging.getLogger("libarchive")  # its warnings would go to stderr: the log line's
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    if not hasattr(ffi, "entry_is_encrypted"):
        from ctypes import c_char_p, c_int, c_void_p

        ffi.ffi("entry_is_encrypted", [c_void_p], c_int)
        ffi.ffi("entry_pathname_utf8", [c_void_p], c_char_p)
        ffi.ffi("read_set_options", [c_void_p, c_char_p], c_int, ffi.check_int)
    return ffi, ArchiveError


def gzip_name(head: bytes) -> str:
    """The file name a gzip header holds (FNAME), as gunzip -N restores it; "" if none."""
    if not head.startswith(b"\x1f\x8b\x08") or len(head) < 10 or not head[3] & 0x08:
        return ""
    at = 10
    if head[3] & 0x04:  # FEXTRA comes first
        if len(head) < 12:
            return ""
        (length,) = struct.unpack_from("<H", head, 10)
        at = 12 + length
    end = head.find(b"\0", at)
    if end < 0:
        return ""
    return head[at:end].decode("latin-1").replace("\\", "/").rsplit("/", 1)[-1]
