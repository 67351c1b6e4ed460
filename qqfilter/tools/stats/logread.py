"""Reading logs back: time stamps of four kinds, gzip'ed rotations, qqfilter's own lines.

A log line may start with a time stamp, then the text a program wrote. The stamps read:

- TAI64N (``@4000000069...``), what ``multilog t`` writes;
- ``tai64nlocal``'s conversion of it (``2026-11-24 10:00:00.123456789``), in local time;
- a syslog file's: the classic (BSD, RFC 3164) ``Nov 24 10:00:00 host prog[123]: `` in local
  time and without a year, and the ISO 8601 / RFC 3339 one rsyslog and syslog-ng write
  (``2026-11-24T10:00:00.123+01:00 host prog[123]: ``). After a syslog stamp the host and the
  program's name are read off too: the text is what the program wrote (a ``qqfilter[123]:``
  line not starting ``qqfilter: `` is qqfilter's text with that tag taken as said; splogger's
  ``1795000000.123456`` before qmail's words is dropped).

A classic syslog stamp has no year. It is taken as the year of the file's last change (its
mtime; now, for stdin), and a stamp that would then be more than a day after that change (a
December line in a file last written in January) is of the year before: a line cannot have
been written after its file last changed.

qqfilter's lines are the ones it wrote itself (qqfilter.logline): text starting ``qqfilter: ``
or a JSON object with a ``verdict``, right after the stamp; everything else is handed on as it
is (qmail-send's lines), so nothing a client can put inside another program's line (an address
in qmail-send's ``info msg`` line) is counted.

qqfilter's text lines are read as the inverse of ``logline.format_text`` (``key=value`` or
``key="escaped value"``), not by shlex (nine tenths of the time it took): a line with nothing
quoted is split at spaces, one with quoted values at its quotes, one with escapes or an
apostrophe by a precompiled pattern of qqfilter's format (``_TEXT_LINE``); counting
(``counted_fields``) finds the four fields it needs without splitting at all. A line none of
these takes (written by hand, or by something else) is read by shlex. They give the fields
shlex gives for every line qqfilter writes, but for an apostrophe in a bare value
(``from=<o'brien@example.ie>``): a character, where shlex took it for an opening quote and
found the line unreadable.

Logs are what others wrote, sometimes half: every file is read in chunks of bounded size,
lines longer than ``LINE_MAX`` are skipped without being held, a gzip'ed rotation is
decompressed here (one member after another) so a file cut short or corrupt gives the lines
before the break and a note, never an exception. A line that cannot be read (too long, a
stamp no clock can show, JSON nested past Python's limits) is counted, not fatal.

A module of its own under ``stats``: reading lines and stamps off a log is apart from counting
what the lines say, and the same for every kind of line.
"""

import calendar
import json
import os
import re
import shlex
import sys
import time
import zlib
from collections.abc import Callable, Iterator
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

NANOS_MAX = 999_999_000
FRACTION_MAX = NANOS_MAX / 1e9
"""The largest fraction of a second kept: a float of today's Unix time holds about seven
decimals, so .999999999 would round up into the next second (and hour, and day)."""

SLACK = 86400
"""How far past its file's last change a classic syslog stamp may be (clocks and zones differ)
and still be of that year; further past, it is of the year before."""

_TAI64N = re.compile(r"@[0-9a-fA-F]{24}")
_LOCAL = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d{1,9})? ", re.ASCII)
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?(Z|[+-]\d\d:?\d\d) ", re.ASCII
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_CLASSIC = re.compile(rf"({'|'.join(_MONTHS)}) ( ?\d|\d\d) (\d\d):(\d\d):(\d\d) ", re.ASCII)
_SYSLOG_TAIL = re.compile(r"\S+ ([^\s\[\]:]+)(?:\[\d+\])?: ")
_SPLOGGER = re.compile(r"\d+\.\d{6} ", re.ASCII)

_KEY = r"[A-Za-z0-9_.-]+"
_BARE = r"[!#-<>-\[\]-~]+"  # printable ASCII but space, '"', '=' and backslash
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TEXT_LINE = re.compile(rf"(?: {_KEY}=(?:{_QUOTED}|{_BARE}))+")
"""qqfilter's text line after ``qqfilter:``: what ``logline.format_text`` writes."""
_QUOTED_VALUE = re.compile(_QUOTED)
_PAIR = re.compile(rf" ({_KEY})=(?:({_QUOTED})|({_BARE}))")
_ESCAPED = re.compile(r'\\(["\\])')


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


Read = tuple[float | None, str, str]
"""A line as read, before it is a Line: (time, text, why); what counting goes through."""

_TOO_LONG: Read = (None, "", TOO_LONG)


class Logs:
    """The lines of log files (``-`` is stdin; ``.gz`` files are decompressed), in bounded
    memory. A compressed file cut short or corrupt ends its lines early: ``cut`` holds one
    note per such file. A file that cannot be opened or read raises OSError."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.cut: list[str] = []

    def __iter__(self) -> Iterator[Line]:
        for time_, text, why in self.read():
            yield Line(time_, text, why)

    def read(self) -> Iterator[Read]:
        """The lines as (time, text, why): what ``__iter__`` gives, without making a Line of
        each (counting half a million lines, that is a fifth of the time)."""
        for path in self.paths:
            if path == "-":
                yield from _reads(_plain(sys.stdin.buffer), Stamps(time.time()).split)
                continue
            with open(path, "rb") as stream:
                stamps = Stamps(os.fstat(stream.fileno()).st_mtime)
                if path.endswith(".gz"):
                    yield from _reads(_gunzip(stream, path, self.cut), stamps.split)
                else:
                    yield from _reads(_plain(stream), stamps.split)


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


def _lines(
    chunks: Iterator[bytes | None], split: Callable[[str], Read] | None = None
) -> Iterator[Line]:
    """Lines out of ``chunks`` (``_reads``), stamps read by ``split`` (by default, for now)."""
    for time_, text, why in _reads(chunks, split or Stamps().split):
        yield Line(time_, text, why)


def _reads(chunks: Iterator[bytes | None], split: Callable[[str], Read]) -> Iterator[Read]:
    """Lines out of ``chunks``, each read by ``split`` (a ``Stamps``' split); ``None`` (a
    break) drops the line it cut. A line over LINE_MAX is skipped as it goes by, never held
    whole. The complete lines of a chunk are decoded at once (UTF-8, bad bytes replaced: the
    same as line by line, a newline ending any sequence it cuts)."""
    partial = b""  # the start of a line the next chunk ends
    skipping = False  # inside a line over LINE_MAX
    for chunk in chunks:
        if chunk is None:
            return
        first = chunk.find(b"\n")
        if first < 0:
            if not skipping:
                if len(partial) + len(chunk) > LINE_MAX:
                    skipping, partial = True, b""
                else:
                    partial += chunk
            continue
        if skipping:
            skipping = False
            yield _TOO_LONG
        elif len(partial) + first > LINE_MAX:
            yield _TOO_LONG
        else:
            yield split((partial + chunk[:first]).decode("utf-8", "replace"))
        last = chunk.rfind(b"\n")
        if last > first:
            block = chunk[first + 1 : last]
            pieces = block.split(b"\n")
            if len(block) > LINE_MAX and max(map(len, pieces)) > LINE_MAX:
                for piece in pieces:
                    if len(piece) > LINE_MAX:
                        yield _TOO_LONG
                    else:
                        yield split(piece.decode("utf-8", "replace"))
            else:
                yield from map(split, block.decode("utf-8", "replace").split("\n"))
        partial = chunk[last + 1 :]
        if len(partial) > LINE_MAX:
            skipping, partial = True, b""
    if skipping:
        yield _TOO_LONG
    elif partial:
        yield split(partial.decode("utf-8", "replace"))


class Stamps:
    """Reads the stamp off the lines of one log. ``reference`` is when the log last changed
    (its mtime; now for stdin): a classic syslog stamp is taken to be of its year, or of the
    year before when that would put it more than SLACK after. Local times (tai64nlocal's,
    classic syslog's) are read in this host's time zone (``TZ``). The Unix time of the last
    minute read is kept: a log's lines come in order, most in the minute of the one before."""

    def __init__(self, reference: float | None = None) -> None:
        self.reference = time.time() if reference is None else reference
        self.year = time.localtime(self.reference).tm_year
        self._minute = ""
        self._minute_at = 0.0

    def split(self, raw: str) -> Read:
        """``raw`` with its stamp read off as the time. Never raises: a stamp for a time
        before 1970 or from the year 10000 on (or no time at all, as ``2026-13-40``) makes
        the line unreadable; a line without a stamp has no time."""
        first = raw[:1]
        if first == "@":
            if _TAI64N.match(raw) is None:
                return (None, raw, "")
            label = int(raw[1:25], 16)
            nanos = label & 0xFFFFFFFF
            if nanos > NANOS_MAX:
                nanos = NANOS_MAX
            seconds = (label >> 32) - TAI64_EPOCH + nanos / 1e9
            if not 0 <= seconds < LATEST:
                return (None, raw, OUT_OF_RANGE)
            return (seconds, raw[25:].lstrip(), "")
        if "0" <= first <= "9":
            if (match := _LOCAL.match(raw)) is not None:
                return self._local(raw, match)
            if (match := _ISO.match(raw)) is not None:
                return self._iso(raw, match)
        elif first in "ADFJMNOS" and (match := _CLASSIC.match(raw)) is not None:
            return self._classic(raw, match)
        return (None, raw, "")

    def _local(self, raw: str, match: re.Match[str]) -> Read:
        """tai64nlocal's ``2026-11-24 10:00:00.123456789``, local time."""
        key = raw[:16]
        if key != self._minute:
            at = _minute(match, local=True)
            if at is None:
                return (None, raw, OUT_OF_RANGE)
            self._minute, self._minute_at = key, at
        seconds = (
            self._minute_at + int(match.group(6)) + min(float(match.group(7) or 0), FRACTION_MAX)
        )
        if not 0 <= seconds < LATEST:
            return (None, raw, OUT_OF_RANGE)
        return (seconds, raw[match.end() :], "")

    def _iso(self, raw: str, match: re.Match[str]) -> Read:
        """ISO 8601 with its offset from UTC, then the host and program as syslog writes."""
        zone = match.group(8)
        key = raw[:16] + zone
        if key != self._minute:
            at = _minute(match, local=False)
            if at is None:
                return (None, raw, OUT_OF_RANGE)
            if zone != "Z":
                hours, minutes = int(zone[1:3]), int(zone[-2:])
                at -= (1 if zone[0] == "+" else -1) * (hours * 3600 + minutes * 60)
            self._minute, self._minute_at = key, at
        seconds = (
            self._minute_at + int(match.group(6)) + min(float(match.group(7) or 0), FRACTION_MAX)
        )
        if not 0 <= seconds < LATEST:
            return (None, raw, OUT_OF_RANGE)
        return (seconds, _syslog_text(raw, match.end()), "")

    def _classic(self, raw: str, match: re.Match[str]) -> Read:
        """``Nov 24 10:00:00``, local time, the year guessed (above)."""
        key = raw[:12]
        if key != self._minute:
            month = _MONTHS.index(match.group(1)) + 1
            hour, minute = int(match.group(3)), int(match.group(4))
            day = int(match.group(2))
            if not (1 <= day <= 31 and hour < 24 and minute < 60):
                return (None, raw, OUT_OF_RANGE)
            at = time.mktime((self.year, month, day, hour, minute, 0, 0, 0, -1))
            if at > self.reference + SLACK:
                at = time.mktime((self.year - 1, month, day, hour, minute, 0, 0, 0, -1))
            self._minute, self._minute_at = key, at
        seconds = self._minute_at + int(match.group(5))
        return (seconds, _syslog_text(raw, match.end()), "")


def _minute(match: re.Match[str], local: bool) -> float | None:
    """The Unix time of the minute a stamp's first five fields say (year to minute), in local
    time or UTC; None for one no calendar has (month 13, hour 24, year 0)."""
    year, month, day, hour, minute = (int(match.group(n)) for n in range(1, 6))
    if not (1970 <= year < 10000 and 1 <= month <= 12 and 1 <= day <= 31):
        return None
    if not (hour < 24 and minute < 60 and int(match.group(6)) <= 60):
        return None
    if local:
        try:
            return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))
        except (OverflowError, ValueError):
            return None
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


def _syslog_text(raw: str, start: int) -> str:
    """What the program wrote, after a syslog stamp (``raw[:start]``), host and tag."""
    tail = _SYSLOG_TAIL.match(raw, start)
    if tail is None:
        return raw[start:]
    text = raw[tail.end() :]
    program = tail.group(1)
    if program == "qqfilter" or program.endswith("/qqfilter"):
        if not (text.startswith("qqfilter: ") or text.startswith("{")):
            return "qqfilter: " + text
        return text
    if (splogger := _SPLOGGER.match(text)) is not None:
        return text[splogger.end() :]
    return text


def split_stamp(raw: str, reference: float | None = None) -> Line:
    """``raw`` with its stamp read off (``Stamps.split``); ``reference`` the log's mtime."""
    return Line(*Stamps(reference).split(raw))


def qqfilter_fields(text: str) -> dict[str, str] | None:
    """The fields of a qqfilter log line (text or JSON, starting ``text``), or None for any
    other line. Raises Unreadable for a line that starts as qqfilter's but cannot be read."""
    if text.startswith("qqfilter: "):
        fields = text_fields(text)
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


Counted = tuple[str, str, str, bool]
"""What counting needs of one line of qqfilter's: verdict, tag, check, and a fallback or not."""


def counted_fields(text: str) -> Counted | None:
    """``qqfilter_fields`` cut to what is counted: (verdict, tag, check, whether it has a
    non-empty ``fallback``), "" for a field it has not; None for a line not qqfilter's.
    Raises Unreadable as ``qqfilter_fields`` does.

    Quicker than making the dict: a text line with nothing quoted or escaped (most: all
    accepts) is not split at all: a field's value is the word after the line's last
    `` key=`` (words are split at spaces only, so the last word starting ``key=`` is the one
    the dict would keep). A line in qqfilter's format (``_TEXT_LINE``) with quoted values is
    read the same once its quoted values are emptied (``""``): what is left between spaces is
    a ``key=value`` each; a field counted whose value was quoted is read from the dict."""
    if not text.startswith("qqfilter: "):
        return _counted(qqfilter_fields(text))
    if '"' in text or "\\" in text or "'" in text or "\t" in text or "\r" in text or "\n" in text:
        if _TEXT_LINE.fullmatch(text, 9) is None:
            return _counted(qqfilter_fields(text))
        bare = _QUOTED_VALUE.sub('""', text)
    else:
        bare = text
    verdict = bare.rfind(" verdict=")
    if verdict < 0:
        return None
    tag, check, fallback = bare.rfind(" tag="), bare.rfind(" check="), bare.rfind(" fallback=")
    found = (
        _word(bare, verdict + 9),
        _word(bare, tag + 5) if tag >= 0 else "",
        _word(bare, check + 7) if check >= 0 else "",
        _word(bare, fallback + 10) if fallback >= 0 else "",
    )
    if '""' in found:
        return _counted(qqfilter_fields(text))
    return found[0], found[1], found[2], found[3] != ""


def _counted(fields: dict[str, str] | None) -> Counted | None:
    if fields is None:
        return None
    get = fields.get
    return get("verdict", ""), get("tag", ""), get("check", ""), bool(get("fallback"))


def _word(text: str, start: int) -> str:
    """The word of ``text`` from ``start`` to the next space (or the end)."""
    end = text.find(" ", start)
    return text[start:] if end < 0 else text[start:end]


def text_fields(text: str) -> dict[str, str]:
    """The ``key=value`` fields of a text line starting ``qqfilter: ``, as shlex reads them
    (``shlex_fields``), the value of a quoted word keeping its escapes but ``\\"`` and
    ``\\\\``. Quickly: split at spaces and quotes, when nothing is escaped and every quote
    opens right after a word's first ``=`` and closes before a space (what qqfilter writes);
    by the pattern of qqfilter's format (``_TEXT_LINE``) when something is escaped or holds an
    apostrophe (shlex took that for a quote: such lines were unreadable); else by shlex.
    Raises Unreadable when shlex cannot read it."""
    if "\\" in text or "'" in text or "\t" in text or "\r" in text or "\n" in text:
        if _TEXT_LINE.fullmatch(text, 9) is not None:
            return _pattern_fields(text)
        return shlex_fields(text)
    fields = {}
    if '"' not in text:
        for word in text[10:].split(" "):
            name, equals, value = word.partition("=")
            if equals:
                fields[name] = value
        return fields
    parts = text[10:].split('"')
    last = len(parts) - 1
    if last % 2:
        return shlex_fields(text)  # a quote not closed
    for at in range(0, last + 1, 2):
        words = parts[at].split(" ")
        if at < last:  # a quoted value follows, the value of the last word's key
            opening = words.pop()
            key, equals, before = opening.partition("=")
            after = parts[at + 2]
            if not equals or before or (after and after[0] != " "):
                return shlex_fields(text)  # a quote inside a word: not qqfilter's
        for word in words:
            name, equals, value = word.partition("=")
            if equals:
                fields[name] = value
        if at < last:
            fields[key] = parts[at + 1]
    return fields


def _pattern_fields(text: str) -> dict[str, str]:
    """The fields of a line ``_TEXT_LINE`` takes, each pair as ``_PAIR`` finds it."""
    fields = {}
    for key, quoted, bare in _PAIR.findall(text, 9):
        fields[key] = _ESCAPED.sub(r"\1", quoted[1:-1]) if quoted else bare
    return fields


def shlex_fields(text: str) -> dict[str, str]:
    """The fields of a text line as shlex splits it: the slow path, and the reference."""
    try:
        words = shlex.split(text[len("qqfilter: ") :])
    except ValueError:
        raise Unreadable("unbalanced quotes") from None
    return dict(word.partition("=")[::2] for word in words if "=" in word)
