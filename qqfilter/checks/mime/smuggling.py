"""Files hidden in HTML and SVG pages (HTML smuggling): what a page would hand the browser as a
download, found and decoded far enough to be judged like any attachment.

An HTML or SVG attachment needs no executable beside it to deliver one: the page carries the
file as text and the browser builds it when the page is opened. The file is a ``data:`` URI
(``<a href="data:application/octet-stream;base64,TVqQ..." download="invoice.exe">``), or a
long base64 string that a script decodes (``atob``) into a ``new Blob(...)`` and saves
(``msSaveOrOpenBlob``, ``URL.createObjectURL`` and a click on an ``<a download>``), often
split into string literals joined with ``+`` or kept in an array. ``blobs`` yields each such
file as (label, decoded head) of a page ``filetypes.page`` recognised (told there, so this
module and its patterns are loaded only for pages); the caller judges the head with
``filetypes.content_kind`` and the label with ``filetypes.name_problem``, as it judges an
attachment.

The shape follows walk.py's rules, since the page is hostile input: the file is read through
one window (WINDOW bytes, ``os.pread``) that moves forward. Each kind of candidate (a
``data:`` URI, quoted base64 pieces and their ``+`` glue, a bare base64 run, a download name,
a mark of the smuggling APIs) is found by a search in C: ``bytes.find`` on the window mapped
to three classes of bytes, or a pattern that starts with a literal (SRE then searches for it
fast instead of trying every byte: one pattern with every kind as an alternative cost 400 ms
per MB of plain HTML, this costs 7). Only where one is found is it matched whole, by a pattern
whose repetitions are possessive (no input makes it backtrack); the earliest is taken and the
search goes on after it. Short candidates are passed over inside the finders, so Python's
cost per candidate is paid for few. A candidate cut by the end of the window is read again
from its start in the next window (which also holds LOOKBACK bytes before it, for the <a>
tag around a URI); one longer than a window has its head decoded from the window and the rest
passed over in C. So each byte is read a bounded number of times, in time linear in the
file's size (tests/test_smuggling.py times adversarial shapes at 1 and 8 MB); memory is a
window, its lower-case copy and its class map. Bounds: the first MAX_SCAN bytes, at most
MAX_BLOBS results and MAX_NAMES download names, the first walk.HEAD decoded bytes of each;
what they cut off is appended to ``notes``. UTF-16 pages (browsers read them after a
byte-order mark) go through the same window, each code unit seen as one byte.

What a script computes is not run: base64 that is reversed, has junk characters removed by a
``replace``, is XOR'ed or built from character codes is not decoded here (see
docs/attachments.md, "Files hidden in HTML and SVG").
"""

from __future__ import annotations

import os
import re

from qqfilter.checks.mime.filetypes import utf16_form
from qqfilter.checks.mime.walk import HEAD, clean_base64, decode_base64

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    _Found = tuple[int, int, str, re.Match[bytes]]
    """A candidate as the finders give it: start, end, kind, its match."""

WINDOW = 1 << 20
"""Bytes read at a time, and held (with a lower-case copy): the scan's memory."""
MARGIN = 1024
"""A candidate ending this close to the end of a window may go on: it is read again."""
OVERLAP = 4096
"""The next window starts this far back, so a candidate cut before it matched is seen whole."""
LOOKBACK = 4096
"""Bytes a window holds before where the search goes on: the <a> tag around a data: URI and
the pieces joined in front of a long one are looked for there."""
MAX_SCAN = 20 << 20
"""Bytes of the file looked at; past them, a note."""
MAX_BLOBS = 50
"""Results per file (files and names); past them, a note and the scan stops."""
MAX_NAMES = 1000
"""Download names looked at per file (most repeat); past them, a note."""
MIN_BASE64 = 1000
"""Base64 characters a string (or its joined pieces) or a bare run needs to be a file: shorter
ones are tokens, hashes and ids, and a file worth smuggling is longer."""
RAW_HEAD = 2 * HEAD
"""Encoded bytes read to decode a head: base64 plus the quotes, glue and white space."""

_B64 = rb"a-z0-9+/="  # on the lower-case copy: case says nothing about where a blob is
_GLUE = rb"[ \t\r\n]*+[+,][ \t\r\n]*+"
_NOT_GLUE = rb"(?![ \t]*+[+,][ \t]*+[\"'`])"  # a closing quote is not read as an opening one
_CONTENT = rb"[" + _B64 + rb"_\-]*+(?:\\\r?\n[" + _B64 + rb"_\-]*+)*+"
# (a class repeated is SRE's tight loop; an alternation per character is ten times slower)
_PIECE = (
    rb"(?:\"" + _NOT_GLUE + _CONTENT + rb"\"|'" + _NOT_GLUE + _CONTENT + rb"'"
    rb"|`" + _NOT_GLUE + rb"[" + _B64 + rb"_\-\s\\]*+`)"
)
_NAME_TEXT = rb"[^\"'`<>\r\n]{1,255}+"
_QUOTED_NAME = rb"(?P<q>[\"'`])(?P<v>" + _NAME_TEXT + rb")(?P=q)"
_NAMES = tuple(
    re.compile(pattern)
    for pattern in (
        # a file name the page gives a download: <a download=...>, a.download = "...",
        # msSaveOrOpenBlob(blob, "..."), new File([...], "..."), setAttribute("download", ...)
        rb"download\s*+=\s*+(?:" + _QUOTED_NAME + rb"|(?P<bare>[^\s\"'`<>=;,()]{1,255}+))",
        rb"mssave(?:oropen)?blob\s*+\([^,()]{0,200}+,\s*+" + _QUOTED_NAME,
        rb"new\s++file\s*+\(\s*+\[[^\]]{0,200}+\]\s*+,\s*+" + _QUOTED_NAME,
        rb"setattribute\s*+\(\s*+[\"']download[\"']\s*+,\s*+" + _QUOTED_NAME,
    )
)
"""Each starts with a literal, so SRE finds its candidates with a fast search, not byte by
byte; so do _MARKS and _DATA."""
_MARKS = tuple(
    re.compile(pattern)
    for pattern in (
        # the APIs that turn text into a downloaded file
        rb"new\s++blob\b",
        rb"createobjecturl",
        rb"mssave(?:oropen)?blob",
        rb"atob\s*+\(",
        rb"frombase64string",
        rb"uint8array\.from",
    )
)
_DATA = re.compile(
    # a data: URI (the colon also as an HTML entity; not metadata:), its payload and any "+"
    # glue in it
    rb"data(?<![a-z0-9+.\-]data)(?::|&colon;|&#0*+58;?|&#x0*+3a;?)"
    rb"(?P<header>[a-z0-9!#$&^_.+\-/;= \t*]{0,256}+),"
    rb"(?P<payload>["
    + _B64
    + rb"\s%\\_\-]*+(?:[\"'`]"
    + _GLUE
    + rb"[\"'`]["
    + _B64
    + rb"\s%\\_\-]*+)*+)"
)
_CHAIN = re.compile(_PIECE + rb"(?:" + _GLUE + _PIECE + rb")*+")
"""Quoted base64 pieces joined by + (or listed in an array, joined by the script)."""
_CHAIN_BACK = re.compile(
    rb"(?:[ \t\r\n]*+\+[ \t\r\n]*+(?P<q>[\"'`])[" + _B64 + rb"_\-\r\n\\]*+(?P=q))*+"
)
"""The pieces joined by + in front of a long piece, matched on the reversed text before it."""
_RUN = re.compile(rb"[" + _B64 + rb"]{64}[" + _B64 + rb"]*+(?:\r?\n[" + _B64 + rb"]++)*+")
"""Bare base64 (in an element's text, a comment, a script), lines allowed."""
_CLASSES = bytes(
    ord("A")
    if chr(c) in "abcdefghijklmnopqrstuvwxyz0123456789+/="
    else ord('"')
    if chr(c) in "\"'`"
    else ord(".")
    for c in range(256)
)
"""The lower-case window mapped to base64 (A), quotes (") and the rest (.), for C's search."""
_LONG_PIECE = b'"' + b"A" * 16
_LONG_RUN = b"A" * 64
_BACK = 4096
"""How far in front of a long piece the pieces joined to it are looked for."""
_SCHEME = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789+.-")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_$-")
_ATTRIBUTE_START = frozenset(b" \t\r\n\"'/")
_EMPTY = (b"", b'"', b"'", b"`", b")", b" ", b"\t", b"\r", b"\n", b">")
_RESUME = rb"(?:[\"'`]?" + _GLUE + rb"[\"'`])?"  # a window may have ended in the glue
_REST = {  # what a candidate longer than a window goes on with (on the file's own case)
    "data": re.compile(
        _RESUME
        + rb"[A-Za-z0-9+/=\s%\\_\-]*+(?:[\"'`]"
        + _GLUE
        + rb"[\"'`][A-Za-z0-9+/=\s%\\_\-]*+)*+"
    ),
    "chain": re.compile(
        _RESUME
        + rb"[A-Za-z0-9+/=_\-\\\r\n]*+(?:[\"'`]"
        + _GLUE
        + rb"[\"'`][A-Za-z0-9+/=_\-\\\r\n]*+)*+[\"'`]?"
    ),
    "run": re.compile(rb"[A-Za-z0-9+/=]*+(?:\r?\n[A-Za-z0-9+/=]++)*+"),
}
_BASE64_HEADER = re.compile(rb";\s*base64\s*(?:;|$)")
_GLUE_SUB = re.compile(rb"[\"'`]" + _GLUE + rb"[\"'`]")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TAG_DOWNLOAD = re.compile(
    rb"(?<![\w.$\-])download\s*+=\s*+(?:([\"'])([^\"'<>\r\n]{1,255}+)\1|([^\s\"'<>=]{1,255}+))",
    re.IGNORECASE,
)
_NONZERO = bytes([0]) + bytes([255]) * 255


def blobs(fd: int, notes: list[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(label, first walk.HEAD decoded bytes) for each file the page at ``fd`` smuggles.

    ``fd`` is the whole decoded page (read with ``os.pread``; not closed, its offset not
    moved). The label is the file name the page gives the download when one is found (an
    ``<a download>`` around a data: URI), else what the file is (``data: URI
    application/octet-stream``, ``base64 string at byte N``, ``base64 text at byte N``); a
    download name found elsewhere in a page that builds files is yielded alone, with an
    empty head, for its name to be judged. What the bounds cut off goes into ``notes``.
    """
    scan = _Scan(fd)
    yield from scan.run()
    if notes is not None:
        notes.extend(scan.notes)


class _Scan:
    """One page's scan: the window loop, the bounds, and the names waiting for a mark."""

    __slots__ = (
        "count",
        "fd",
        "found",
        "limit",
        "marked",
        "names",
        "notes",
        "offset",
        "pending",
        "seen",
        "wide",
    )

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        self.wide, self.offset = utf16_form(os.pread(fd, 512, 0))
        usable = min(size, MAX_SCAN)
        self.limit = (usable - self.offset) // 2 if self.wide else usable
        self.notes: list[str] = []
        if size > MAX_SCAN:
            self.notes.append(f"HTML page larger than {MAX_SCAN} bytes: the rest not looked at")
        self.count = 0
        self.names = 0
        self.found: list[tuple[str, bytes]] = []  # a window's results, yielded after it
        self.marked = False  # the page builds files: its download names are judged
        self.pending: list[str] = []
        self.seen: set[str] = set()

    def read(self, position: int, length: int) -> bytes:
        """``length`` bytes at ``position`` of the page as 8-bit text (a UTF-16 code unit
        above 255 reads as 0xff, which no candidate holds, so offsets stay exact)."""
        length = min(length, self.limit - position)
        if length <= 0:
            return b""
        if not self.wide:
            return os.pread(self.fd, length, position)
        raw = os.pread(self.fd, 2 * length, self.offset + 2 * position)
        raw = raw[: len(raw) & ~1]
        low, high = (raw[0::2], raw[1::2]) if self.wide == "utf-16-le" else (raw[1::2], raw[0::2])
        if high.count(0) == len(high):
            return low
        mask = high.translate(_NONZERO)
        value = int.from_bytes(low, "big") | int.from_bytes(mask, "big")
        return value.to_bytes(len(low), "big")

    def run(self) -> Iterator[tuple[str, bytes]]:
        floor = 0  # where the search goes on; the window starts up to LOOKBACK before it
        while floor < self.limit:
            position = max(0, floor - LOOKBACK)
            window = self.read(position, WINDOW)
            if len(window) <= floor - position:
                break
            following = self._window(position, window, floor - position)
            yield from self.found
            self.found.clear()
            if following is None:
                return
            floor = following
        for name in self.pending if self.marked else ():
            if name not in self.seen and not self._emit(name, b""):
                break
        yield from self.found

    def _window(self, position: int, window: bytes, pos: int) -> int | None:
        """The candidates in ``window`` (at ``position``) from offset ``pos`` on into
        ``found``; returns where the search goes on, or None when the results are used up.

        Each kind of candidate is found by a search in C (``bytes.find`` on the window mapped
        to _CLASSES, or a pattern SRE scans by its first characters) and matched whole where
        found; the earliest is taken, and each kind is searched again only once the scan has
        passed its last find."""
        lower = window.lower()
        classes = lower.translate(_CLASSES)
        at_end = position + len(window) >= self.limit
        edge = len(window) if at_end else len(window) - MARGIN
        names = _NAME_FINDERS if self.names <= MAX_NAMES else ()
        marks = () if self.marked else _MARK_FINDERS
        finders = (_next_data, *names, *marks, _next_chain, _next_run)
        first = pos
        ahead: list[_Found | None] = [finder(lower, classes, pos) for finder in finders]
        done = pos  # where the last candidate ended: the search never goes on before it
        while True:
            for index, finder in enumerate(finders):
                cached = ahead[index]
                if cached is not None and cached[0] < pos:
                    ahead[index] = finder(lower, classes, pos)
            candidates = [cached for cached in ahead if cached is not None]
            if not candidates:
                break
            start, end, kind, m = min(candidates, key=_first)
            beyond = 0  # the absolute end of a candidate longer than the window
            if end > edge:
                if start > first:
                    return position + start  # read it again, whole, from its start
                rest = _REST.get(kind)
                if rest is not None:
                    beyond = self._skip(position + end, rest)
            pos = end
            if kind == "name":
                self.names += 1
                if self.names > MAX_NAMES:  # the names are searched for no more
                    self.notes.append(f"HTML page: more than {MAX_NAMES} download names")
                    ahead[1 : 1 + len(names)] = [None] * len(names)
                    continue
                group = "v" if m["v"] is not None else "bare"
                if not self._name(window[m.start(group) : m.end(group)]):
                    return None
            elif kind == "mark":
                if not self.marked:  # the marks are searched for no more
                    for index in range(1 + len(names), 1 + len(names) + len(marks)):
                        ahead[index] = None
                    self.marked = True
                    for name in self.pending:
                        if name not in self.seen and not self._emit(name, b""):
                            return None
                    self.pending.clear()
            elif kind in ("data", "text"):
                pos = self._data(m, window, lower, kind == "data")
                if pos < 0:
                    return None
            else:
                raw = window[start : min(end, start + RAW_HEAD)]
                if (beyond or end - start >= MIN_BASE64) and (
                    len(clean_base64(_GLUE_SUB.sub(b"", raw))) >= MIN_BASE64
                ):
                    what = "string" if kind == "chain" else "text"
                    head = _decode(raw)
                    if head and not self._emit(f"base64 {what} at byte {position + start}", head):
                        return None
                    self.marked = True
            if beyond:
                return beyond
            done = max(done, pos)
            pos = max(pos, start + 1)
        if at_end:
            return self.limit
        return max(position + done, position + len(window) - OVERLAP)

    def _data(self, m: re.Match[bytes], window: bytes, lower: bytes, base64: bool) -> int:
        """A data: URI: its head yielded, labelled by its <a download> name or its type.
        Returns where the search goes on, -1 when the results are used up."""
        start, end = m.span()
        header = lower[m.start("header") : m.end("header")]
        payload = m.start("payload")
        media = header.split(b";", 1)[0].strip().decode("ascii", "replace") or "(no type)"
        if base64:
            raw = window[payload : min(end, payload + RAW_HEAD)]
            head = _decode(raw)
            if not head:
                return end
            if not media.startswith(("image/", "font/")):  # inline images build no file
                self.marked = True
            label = self._tag_name(window, lower, start, end) or f"data: URI {media}"
            return end if self._emit(label, head) else -1
        # text (percent-encoded or as it is): its head up to the quote or paren before it
        closer = {ord('"'): b'"', ord("'"): b"'", ord("("): b")"}.get(
            lower[start - 1] if start else 0, b""
        )
        stop = payload + RAW_HEAD
        if closer:
            found = lower.find(closer, payload, stop)
            stop = found if found >= 0 else stop
        else:
            found_at = re.compile(rb"[\s>]").search(lower, payload, stop)
            stop = found_at.start() if found_at else stop
        raw = window[payload:stop]
        if raw:
            from urllib.parse import unquote_to_bytes

            label = self._tag_name(window, lower, start, stop) or f"data: URI {media}"
            if not self._emit(label, unquote_to_bytes(raw)[:HEAD]):
                return -1
        return payload  # the text is read on: a page in a data: URI may hold more

    def _tag_name(self, window: bytes, lower: bytes, start: int, end: int) -> str:
        """The download name of the <a> tag around [start, end) of the window, or ""."""
        opening = lower.rfind(b"<", max(0, start - 2048), start)
        if opening < 0 or not lower.startswith(b"<a", opening) or b">" in lower[opening:start]:
            return ""
        if lower[opening + 2 : opening + 3] not in (b" ", b"\t", b"\n", b"\r"):
            return ""
        closing = lower.find(b">", end, end + 2048)
        for part in (window[opening:start], window[end:closing] if closing >= 0 else b""):
            found = _TAG_DOWNLOAD.search(part)
            if found:
                name = _text(found[2] if found[2] is not None else found[3])
                if name:
                    self.seen.add(name)
                    return name
        return ""

    def _name(self, raw: bytes) -> bool:
        """A download name: yielded once the page has shown that it builds files."""
        name = _text(raw)
        if not name or name in self.seen:
            return True
        if self.marked:
            return self._emit(name, b"")
        if len(self.pending) < MAX_BLOBS:
            self.pending.append(name)
        return True

    def _emit(self, label: str, head: bytes) -> bool:
        """One result into ``found``; False once MAX_BLOBS are out (and the note made)."""
        if self.count >= MAX_BLOBS:
            self.notes.append(f"HTML page: more than {MAX_BLOBS} files, the rest not looked at")
            return False
        self.count += 1
        if not head:
            self.seen.add(label)
        self.found.append((label, head))
        return True

    def _skip(self, position: int, rest: re.Pattern[bytes]) -> int:
        """Where a candidate that goes on past a window ends: ``rest`` matched a window at a
        time (in C), from ``position``."""
        while position < self.limit:
            window = self.read(position, WINDOW)
            end = rest.match(window).end()  # type: ignore[union-attr]  # *+ always matches
            if end < len(window) - MARGIN or position + len(window) >= self.limit:
                return position + end
            position += end
        return position


def _first(found: _Found) -> int:
    return found[0]


def _next_data(lower: bytes, classes: bytes, pos: int) -> _Found | None:
    """The next data: URI at or after ``pos`` with something in it: kind "data" (base64,
    its payload included) or "text" (the rest of the page is read on: a page in a data: URI
    may hold more)."""
    while (m := _DATA.search(lower, pos)) is not None:
        pos = m.end("header") + 1
        if _BASE64_HEADER.search(m["header"].rstrip()):
            if m.end() > m.start("payload"):
                return m.start(), m.end(), "data", m
        elif lower[pos : pos + 1] not in _EMPTY:
            return m.start(), pos, "text", m
    return None


def _searcher(
    pattern: re.Pattern[bytes], kind: str
) -> Callable[[bytes, bytes, int], _Found | None]:
    """A finder for ``pattern``: kind "name" (a download name: not ondownload=, and a bare
    name only as an attribute's value) or "mark"."""

    def find(lower: bytes, classes: bytes, pos: int) -> _Found | None:
        while (m := pattern.search(lower, pos)) is not None:
            at = m.start()
            pos = at + 1
            if kind == "name" and lower.startswith(b"download", at):
                before = lower[at - 1] if at else 32
                if before in _WORD:
                    continue  # ondownload=, x-download=
                if m["bare"] is not None and before not in _ATTRIBUTE_START:
                    continue  # a.download = name: a variable, not a name
            return at, m.end(), kind, m
        return None

    return find


_NAME_FINDERS = tuple(_searcher(pattern, "name") for pattern in _NAMES)
_MARK_FINDERS = tuple(_searcher(pattern, "mark") for pattern in _MARKS)


def _next_chain(lower: bytes, classes: bytes, pos: int) -> _Found | None:
    """The next quoted base64 string with a piece of 16 characters or more, with the pieces
    joined to it by + in front of it (at most _BACK bytes back, never before ``pos``)."""
    while (found := classes.find(_LONG_PIECE, pos)) >= 0:
        start, m = found, None
        if lower[max(pos, found - 64) : found].rstrip().endswith(b"+"):  # pieces in front
            back = _CHAIN_BACK.match(lower[max(pos, found - _BACK) : found][::-1])
            start = found - back.end() if back else found
            m = _CHAIN.match(lower, start) if start != found else None
            if m is None or m.end() <= found:
                start, m = found, None
        m = m or _CHAIN.match(lower, found)
        pos = found + 1
        if m is None:
            continue
        if m.end() - start >= MIN_BASE64 or m.end() + MARGIN >= len(lower):
            return start, m.end(), "chain", m
        pos = m.end()  # too short to be a file: passed over here, not by the caller
    return None


def _next_run(lower: bytes, classes: bytes, pos: int) -> _Found | None:
    """The next bare run of 64 base64 characters or more (and the lines after it)."""
    while (found := classes.find(_LONG_RUN, pos)) >= 0:
        m = _RUN.match(lower, found)
        if m is None:  # cannot be: _CLASSES maps the same characters to A
            return None
        if m.end() - found >= MIN_BASE64 or m.end() + MARGIN >= len(lower):
            return found, m.end(), "run", m
        pos = m.end()
    return None


def _decode(raw: bytes) -> bytes:
    """The first HEAD bytes of encoded text: string glue ("..." + "...") removed, then
    percent-encoding, URL-safe base64, junk, as a lenient reader takes them."""
    raw = _GLUE_SUB.sub(b"", raw)
    if b"%" in raw:
        from urllib.parse import unquote_to_bytes

        raw = unquote_to_bytes(raw)
    if (b"-" in raw or b"_" in raw) and not (b"+" in raw or b"/" in raw):
        raw = raw.translate(_URLSAFE)
    return decode_base64(raw)[:HEAD]


def _text(raw: bytes) -> str:
    """A name's bytes as text: UTF-8, else latin-1; white space at the ends dropped."""
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()
