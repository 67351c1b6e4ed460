"""BinHex 4.0 (.hqx): a Macintosh file as text, read as a container of its two forks.

The text is a line "(This file must be converted with BinHex 4.0)", then 6-bit characters
between two colons (line breaks ignored), which decode to a run-length encoded stream (0x90
marks a run): a header (the file's name, type, creator, flags, the lengths of its forks), the
data fork and the resource fork, each followed by a CRC. The data fork is what a Mac or
StuffIt Expander saves under the name; both forks are members.

The stdlib's binhex module is gone (Python 3.11), and decoded whole anyway. Here the 6-bit
text is turned into base64's alphabet and decoded by binascii a block at a time, and runs are
expanded as they are met, so memory is a block whatever the declared lengths; skipping a fork
costs its length in expansion, which MAX_SKIP bounds (a run of 255 bytes costs 2 bytes).
"""

from __future__ import annotations

import binascii

from qqfilter.checks.mime.archives import Entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

MARK = b"(This file must be converted with BinHex"
BLOCK = 1 << 16
"""Text read at a time (about 48 KB of data before the runs are expanded)."""
MAX_SKIP = 256 << 20
"""Bytes expanded to skip the data fork and reach the resource fork, at most."""
_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_TO_BASE64 = bytes.maketrans(
    _ALPHABET, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)
_DROP = b" \t\r\n"
_RUN = 0x90


class _Stream:
    """The decoded, run-expanded bytes of the BinHex text, read in order."""

    __slots__ = ("ended", "last", "pending", "run", "stream", "taken", "text")

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.text = b""  # 6-bit characters not yet decoded (fewer than 4)
        self.ended = False
        self.pending = b""  # the block of expanded bytes being taken
        self.taken = 0
        self.last = -1  # the byte a run repeats
        self.run = False  # a 0x90 was the last byte decoded: its count comes next

    def _decode(self) -> bytes:
        """The next block of run-length encoded bytes; b"" at the end."""
        while not self.ended:
            raw = self.stream.read(BLOCK)
            colon = raw.find(b":")
            if colon >= 0 or not raw:
                raw, self.ended = raw[: max(colon, 0)], True
            text = self.text + raw.translate(None, _DROP)
            if text.strip(_ALPHABET):
                raise ValueError("a character BinHex does not use")
            usable = len(text) if self.ended else len(text) - len(text) % 4
            self.text = text[usable:]
            text = text[:usable].translate(_TO_BASE64)
            if len(text) % 4 == 1:
                text = text[:-1]  # six bits: not a whole byte
            if text:
                return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        return b""

    def _expand(self) -> bytes:
        """The next block of expanded bytes (at most 127 times a decoded block); b"" at the
        end."""
        while True:
            data = self._decode()
            if not data:
                return b""
            out = bytearray()
            at = 0
            if self.run:  # the count of a run whose 0x90 ended the last block
                self.run = False
                self._repeat(out, data[0])
                at = 1
            while at < len(data):
                mark = data.find(b"\x90", at)
                if mark < 0:
                    out += data[at:]
                    self.last = data[-1]
                    break
                out += data[at:mark]
                if mark > at:
                    self.last = data[mark - 1]
                if mark + 1 == len(data):
                    self.run = True
                    break
                self._repeat(out, data[mark + 1])
                at = mark + 2
            if out:
                return bytes(out)

    def _repeat(self, out: bytearray, count: int) -> None:
        """0x90 then ``count``: the last byte ``count`` times in all, or 0x90 itself (0)."""
        if count == 0:
            out.append(_RUN)
            self.last = _RUN
        elif self.last >= 0:
            out += bytes((self.last,)) * (count - 1)

    def take(self, count: int) -> bytes:
        """``count`` bytes, or fewer at the end; the chunks are joined (for small counts)."""
        parts = []
        while count > 0:
            data = self.chunk(count)
            if not data:
                break
            parts.append(data)
            count -= len(data)
        return b"".join(parts)

    def chunk(self, limit: int) -> bytes:
        """At most ``limit`` (> 0) bytes; b"" at the end."""
        if self.taken >= len(self.pending):
            self.pending, self.taken = self._expand(), 0
        data = self.pending[self.taken : self.taken + limit]
        self.taken += len(data)
        return data


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """The data fork and the resource fork, named from the header."""
    text = stream.read(min(size, 1 << 16))
    mark = text.find(MARK)
    start = text.find(b":", mark)
    if mark < 0 or start < 0:
        raise ValueError("no BinHex data after its line")
    stream.seek(start + 1)
    decoded = _Stream(stream)
    length = decoded.take(1)
    if not length:
        raise EOFError("BinHex data ends before its header")
    header = decoded.take(length[0] + 1 + 4 + 4 + 2 + 4 + 4 + 2)
    if len(header) < length[0] + 21:
        raise EOFError("BinHex data ends inside its header")
    name = header[: length[0]].decode("mac-roman", "replace") or "(data)"
    data_length = int.from_bytes(header[length[0] + 11 : length[0] + 15], "big")
    resource_length = int.from_bytes(header[length[0] + 15 : length[0] + 19], "big")
    forks = ((name, data_length), (f"{name} (resource fork)", resource_length))
    current = [0]
    for number, (fork_name, fork_length) in enumerate(forks, 1):
        if fork_length == 0 and number == 2:
            return
        remaining = [fork_length]
        current[0] = number
        yield Entry(
            (fork_name,),
            encrypted=False,
            size=fork_length,
            unread="",
            read=_reader(decoded, remaining, current, number),
        )
        if number == 2:
            return
        if remaining[0] > MAX_SKIP:
            raise ValueError(f"stopped: a data fork of over {MAX_SKIP >> 20} MB to skip")
        while remaining[0] > 0:  # the rest of the data fork, then its CRC
            data = decoded.chunk(min(remaining[0], BLOCK * 4))
            if not data:
                return
            remaining[0] -= len(data)
        decoded.take(2)


def _reader(decoded: _Stream, remaining: list[int], current: list[int], number: int):
    def read(limit: int) -> Iterator[bytes]:
        while limit > 0 and remaining[0] > 0:
            if current[0] != number:
                raise ValueError("read after the next fork was asked for")
            data = decoded.chunk(min(limit, remaining[0], BLOCK * 4))
            if not data:
                return
            remaining[0] -= len(data)
            limit -= len(data)
            yield data

    return read
