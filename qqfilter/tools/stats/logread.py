"""Reading logs back: multilog's TAI64N stamps, gzip'ed rotations, qqfilter's own lines.

A log line may carry a TAI64N label (``@4000000069...``, what ``multilog t`` writes) and then
the text a program wrote. qqfilter's lines are the ones it wrote itself (qqfilter.logline):
text starting ``qqfilter: `` or a JSON object with a ``verdict``, right after the label;
everything else is handed on as it is (qmail-send's lines), so nothing a client can put
inside another program's line (an address in qmail-send's ``info msg`` line) is counted.

Logs are what others wrote, sometimes half: every file is read in chunks of bounded size,
lines longer than ``LINE_MAX`` are skipped without being held, a gzip'ed rotation is
decompressed here (one member after another) so a file cut short or corrupt gives the lines
before the break and a note, never an exception. A line that cannot be read (too long, a
stamp no clock can show, JSON nested past Python's limits) is counted, not fatal.

A module of its own under ``stats``: reading lines and stamps off a log is apart from counting
what the lines say, and the same for every kind of line.
"""

import json
import re
import shlex
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

TAI64_EPOCH = 2**62 + 10
"""TAI64 label of the Unix epoch, as daemontools writes it (TAI was 10 s ahead in 1970)."""

LINE_MAX = 65536
"""Longest line read, in bytes (qqfilter's own lines are far shorter); longer ones are skipped."""

CHUNK = 1 << 20
"""Bytes read (or decompressed) at a time: what a log costs in memory, with LINE_MAX."""

LATEST = 253402300800
"""Unix time of the year 10000: a stamp at or past it (or before 1970) is not a real one."""

TOO_LONG = f"longer than {LINE_MAX} bytes"
OUT_OF_RANGE = "time stamp out of range"

_STAMP = re.compile(r"@([0-9a-fA-F]{16})([0-9a-fA-F]{8})")


class Unreadable(ValueError):
    """A line that is qqfilter's, or meant to look like it, but cannot be read; why in words."""


class Line:
    """One log line: its time (Unix seconds, or None) and its text after the stamp; ``why``
    says why it cannot be read ("" when it can)."""

    __slots__ = ("text", "time", "why")

    def __init__(self, time: float | None, text: str, why: str = "") -> None:
        self.time = time
        self.text = text
        self.why = why


class Logs:
    """The lines of log files (``-`` is stdin; ``.gz`` files are decompressed), in bounded
    memory. A compressed file cut short or corrupt ends its lines early: ``cut`` holds one
    note per such file. A file that cannot be opened or read raises OSError."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.cut: list[str] = []

    def __iter__(self) -> Iterator[Line]:
        for path in self.paths:
            if path == "-":
                yield from _lines(_plain(sys.stdin.buffer))
                continue
            with open(path, "rb") as stream:
                if path.endswith(".gz"):
                    yield from _lines(_gunzip(stream, path, self.cut))
                else:
                    yield from _lines(_plain(stream))


def lines(paths: list[str]) -> Iterator[Line]:
    """The lines of every file, as ``Logs`` reads them (notes on cut files dropped)."""
    return iter(Logs(paths))


def _plain(stream: BinaryIO) -> Iterator[bytes | None]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _gunzip(stream: BinaryIO, path: str, cut: list[str]) -> Iterator[bytes | None]:
    """The decompressed bytes of a gzip file, every member, CHUNK at most at a time; at a
    break (data ends early, bad data or checksum), a note in ``cut`` and a last ``None``."""
    decompressor = zlib.decompressobj(31)
    pending = b""
    started = False  # a member begun and not finished
    full = False  # the last call filled its output: more may wait inside the decompressor
    while True:
        if not started:
            pending = pending.lstrip(b"\0")  # padding between or after members, as gzip allows
        if not pending and not full:
            pending = stream.read(CHUNK)
            if not pending:
                if started:
                    cut.append(f"{path}: cut short (compressed data ends early)")
                    yield None
                return
            continue
        started = True
        try:
            out = decompressor.decompress(pending, CHUNK)
        except zlib.error as exc:
            cut.append(f"{path}: cut short (not gzip data, or damaged: {exc})")
            yield None
            return
        full = len(out) == CHUNK
        pending = decompressor.unconsumed_tail
        if out:
            yield out
        if decompressor.eof:  # a member ends; another may follow (as `cat a.gz b.gz`)
            pending = decompressor.unused_data  # the rest (zlib leaves it in both)
            decompressor = zlib.decompressobj(31)
            started = full = False


def _lines(chunks: Iterator[bytes | None]) -> Iterator[Line]:
    """Lines out of ``chunks``; ``None`` (a break) drops the line it cut. A line over
    LINE_MAX is skipped as it goes by, never held whole."""
    partial = bytearray()
    skipping = False
    for chunk in chunks:
        if chunk is None:
            return
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if not skipping and len(partial) + len(chunk) - start > LINE_MAX:
                    skipping = True
                    partial.clear()
                if not skipping:
                    partial += chunk[start:]
                break
            if skipping:
                skipping = False
                yield Line(None, "", TOO_LONG)
            elif len(partial) + newline - start > LINE_MAX:
                partial.clear()
                yield Line(None, "", TOO_LONG)
            else:
                partial += chunk[start:newline]
                yield split_stamp(partial.decode("utf-8", "replace"))
                partial.clear()
            start = newline + 1
    if skipping:
        yield Line(None, "", TOO_LONG)
    elif partial:
        yield split_stamp(partial.decode("utf-8", "replace"))


def split_stamp(raw: str) -> Line:
    """``raw`` with a leading TAI64N label read off as the time. Never raises: a label for a
    time before 1970 or from the year 10000 on makes the line unreadable."""
    match = _STAMP.match(raw)
    if match is None:
        return Line(None, raw)
    seconds = int(match.group(1), 16) - TAI64_EPOCH + int(match.group(2), 16) / 1e9
    if not 0 <= seconds < LATEST:
        return Line(None, raw, OUT_OF_RANGE)
    return Line(seconds, raw[25:].lstrip())


def qqfilter_fields(text: str) -> dict[str, str] | None:
    """The fields of a qqfilter log line (text or JSON, starting ``text``), or None for any
    other line. Raises Unreadable for a line that starts as qqfilter's but cannot be read."""
    if text.startswith("qqfilter: "):
        try:
            words = shlex.split(text[len("qqfilter: ") :])
        except ValueError:
            raise Unreadable("unbalanced quotes") from None
        fields = dict(word.partition("=")[::2] for word in words if "=" in word)
        return fields if "verdict" in fields else None
    if text.startswith("{") and '"verdict"' in text:
        try:
            record = json.loads(text)
        except RecursionError:
            raise Unreadable("JSON nested too deep") from None
        except ValueError:
            raise Unreadable("not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("verdict"), str):
            return None
        return {
            str(k): str(v) for k, v in record.items() if isinstance(v, str | int | float | bool)
        }
    return None
