"""PDFs that run code: a /Launch action, JavaScript, and the files a PDF carries inside.

Two pure functions the attachment check calls on a part (or an archive member) whose head
``filetypes.pdf_document`` calls a PDF (told there, so this module is imported only then):
``problem`` says whether the PDF launches a program (always refused) or holds
JavaScript (refused when the setting says so); ``embedded`` yields each embedded file's name
and decoded first bytes, so the check judges them with its own name and content rules, as it
judges any part.

Why a scanner of its own and not a PDF library: a PDF reader acts on names wherever they are,
also in a damaged file (readers rebuild a broken cross-reference table by scanning), so the
names are looked for the same way, in the bytes: the file is read in windows of 1 MB (with an
overlap, so no name is cut in two) through ``os.pread`` (the caller's descriptor is neither
moved nor closed), names are matched in any spelling of PDF's ``#xx`` escapes (``/L#61unch``),
and object streams (/ObjStm, where PDF 1.5 hides dictionaries) are inflated piece by piece and
scanned the same way. Time is linear in the file, memory a few windows, inflation bounded per
stream and per file (a zlib bomb stops at the bound). Only the stdlib is used (zlib, re).

Any exception inside becomes None (or the end of ``embedded``): a file this module cannot read
is left to the other tests.
"""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

WINDOW = 1 << 20
OVERLAP = 4096
"""Bytes shared by consecutive windows: longer than any name or key we match, escaped."""
MAX_FILE = 100_000_000
"""Larger files are not read (None, nothing embedded)."""
MAX_STREAMS = 1000
"""Object streams and embedded-file streams looked into per file."""
MAX_INFLATE = 16_000_000
"""Bytes inflated from one object stream, at most."""
MAX_INFLATE_TOTAL = 64_000_000
"""Bytes inflated from all the object streams of a file, at most."""
MAX_EMBEDDED = 100
"""Embedded files yielded per file."""
HEAD = 40_960
"""Bytes of an embedded file decoded for its content test, as for any part."""
DICT_BEFORE = 4096
"""How far before a /Type key its object's dictionary may start."""
DICT_AFTER = 16384
"""How far after a /Type key the ``stream`` keyword may be."""

_DELIMITER = rb"(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])"
"""The end of a name: white space, a delimiter, or the end of the data."""


def _name(word: bytes) -> bytes:
    """A pattern for the name /word in any spelling of its #xx escapes."""
    return b"/" + b"".join(_char(c) for c in word) + _DELIMITER


def _char(c: int) -> bytes:
    hexa = b"%02x" % c
    alternatives = [re.escape(bytes([c])), b"#" + _either_case(hexa)]
    return b"(?:" + b"|".join(alternatives) + b")"


def _either_case(hexa: bytes) -> bytes:
    return b"".join(
        b"[%s%s]" % (bytes([h]).lower(), bytes([h]).upper()) if h > 0x39 else bytes([h])
        for h in hexa
    )


class _Patterns:
    """The patterns, compiled on first use (about 6 ms: not paid by mail without a PDF)."""

    def __init__(self) -> None:
        self.launch = re.compile(_name(b"Launch"))
        self.javascript = re.compile(_name(b"JavaScript") + b"|" + _name(b"JS"))
        self.type_stream = re.compile(
            _name(b"Type") + rb"\s*(?:" + _name(b"ObjStm") + b"|" + _name(b"EmbeddedFile") + b")"
        )
        self.objstm = re.compile(_name(b"ObjStm"))
        self.obj = re.compile(rb"(\d{1,10})\s+\d{1,5}\s+obj\b")
        self.stream = re.compile(rb"(?<!end)stream(?:\r\n|\n|\r)")
        self.filter = re.compile(_name(b"Filter") + rb"\s*(\[)?\s*(/[^\s/\[\]<>()]*)")
        self.flate = re.compile(rb"^(?:" + _name(b"FlateDecode") + b"|" + _name(b"Fl") + b")$")
        self.ef = re.compile(_name(b"EF") + rb"\s*<<")
        self.ef_ref = re.compile(
            rb"(?:" + _name(b"F") + b"|" + _name(b"UF") + rb")\s*(\d{1,10})\s+\d{1,5}\s+R"
        )
        self.file_name = re.compile(
            rb"(?:" + _name(b"UF") + b"|" + _name(b"F") + rb")\s*(\(|<(?!<))"
        )
        self.endobj = re.compile(rb"\bendobj\b")


_compiled: list[_Patterns] = []


def _rx() -> _Patterns:
    if not _compiled:
        _compiled.append(_Patterns())
    return _compiled[0]


def problem(fd: int, head: bytes, pdfjs: str) -> tuple[str, str] | None:
    """("script", reason) for a /Launch action (always) or JavaScript (when ``pdfjs`` is
    "refuse"), else None. ``fd`` is the whole decoded file; not closed, not moved."""
    try:
        patterns = [(_rx().launch, "PDF with a /Launch action")]
        if pdfjs == "refuse":
            patterns.append((_rx().javascript, "PDF with JavaScript"))
        for text in _texts(fd):
            for pattern, reason in patterns:
                if pattern.search(text):
                    return "script", reason
    except Exception:  # hostile or broken files: the other tests judge them
        return None
    return None


def embedded(fd: int) -> Iterator[tuple[str, bytes]]:
    """(file name, first bytes decoded) of each file embedded in the PDF, at most
    MAX_EMBEDDED: each /EmbeddedFile stream under each name a file specification (/F, /UF)
    that points to it gives it ("" when none does), and each named file specification whose
    stream was not found or not decoded, with no bytes."""
    try:
        yield from _embedded(fd)
    except Exception:  # hostile or broken files: what was found so far
        return


def _embedded(fd: int) -> Iterator[tuple[str, bytes]]:
    names: dict[int, list[str]] = {}
    unlinked: list[str] = []
    for text in _texts(fd):
        _file_specs(text, names, unlinked)
    count = 0
    for number, head in _embedded_streams(fd):
        for name in names.pop(number, None) or [""]:
            yield name, head
            count += 1
            if count >= MAX_EMBEDDED:
                return
    for name in unlinked + [n for ns in names.values() for n in ns]:
        yield name, b""
        count += 1
        if count >= MAX_EMBEDDED:
            return


def _size(fd: int) -> int:
    size = os.fstat(fd).st_size
    if size > MAX_FILE:
        raise ValueError("too large to look into")
    return size


def _windows(fd: int, start: int = 0, end: int = -1) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the file in windows of WINDOW + OVERLAP bytes, WINDOW apart."""
    size = _size(fd) if end < 0 else end
    pos = start
    while pos < size:
        data = os.pread(fd, min(WINDOW + OVERLAP, size - pos), pos)
        if not data:
            return
        yield pos, data
        pos += WINDOW


def _texts(fd: int) -> Iterator[bytes]:
    """The file's windows, then the inflated content of each object stream, in windows."""
    streams: list[int] = []
    for offset, data in _windows(fd):
        yield data
        for match in _rx().type_stream.finditer(data):
            if match.start() >= WINDOW:
                break  # the next window has it
            if _rx().objstm.search(match.group()) and len(streams) < MAX_STREAMS:
                streams.append(offset + match.start())
    budget = [MAX_INFLATE_TOTAL]
    for at in streams:
        try:
            found = _stream_at(fd, at)
        except (OSError, ValueError):
            continue
        if found:
            yield from _inflated(fd, found[1], found[2], min(MAX_INFLATE, budget[0]), budget)
        if budget[0] <= 0:
            return


def _stream_at(fd: int, at: int) -> tuple[int, int, bool] | None:
    """(object number or -1, offset of the stream's data, FlateDecode?) of the stream whose
    dictionary holds the key at ``at``; None when there is none or its filter is not read."""
    start = max(0, at - DICT_BEFORE)
    region = os.pread(fd, at - start + DICT_AFTER, start)
    key = at - start
    stream = _rx().stream.search(region, key)
    if not stream:
        return None
    objects = list(_rx().obj.finditer(region, 0, key))
    dict_start = objects[-1].end() if objects else 0
    number = int(objects[-1].group(1)) if objects else -1
    dictionary = region[dict_start : stream.start()]
    filters = _rx().filter.search(dictionary)
    flate = False
    if filters:
        if filters.group(1):  # an array: one filter in it, or it is not read
            close = dictionary.find(b"]", filters.end())
            if close < 0 or dictionary[filters.end() : close].strip():
                return None
        if not _rx().flate.match(filters.group(2)):
            return None  # another filter: not read
        flate = True
    return number, start + stream.end(), flate


def _inflated(fd: int, at: int, flate: bool, limit: int, budget: list[int]) -> Iterator[bytes]:
    """The stream's data from ``at``, inflated (or not), in windows with an overlap, at most
    ``limit`` bytes out; ``budget`` is what the file may still inflate."""
    import zlib

    inflater = zlib.decompressobj() if flate else None
    produced = 0
    tail = b""
    pos = at
    size = _size(fd)
    while produced < limit and pos < size:
        chunk = os.pread(fd, min(65536, size - pos), pos)
        if not chunk:
            return
        pos += len(chunk)
        while chunk and produced < limit:
            if inflater is None:
                out, chunk = chunk[: limit - produced], b""
            else:
                try:
                    out = inflater.decompress(chunk, min(WINDOW, limit - produced))
                except zlib.error:  # damaged or encrypted: what came out so far is all
                    return
                chunk = inflater.unconsumed_tail
            produced += len(out)
            budget[0] -= len(out)
            if out:
                text = tail + out
                yield text
                tail = text[-OVERLAP:]
            if inflater is not None and inflater.eof:
                return
            if not out:
                break
        if inflater is None and produced >= limit:
            return


def _embedded_streams(fd: int) -> Iterator[tuple[int, bytes]]:
    """(object number, first HEAD bytes decoded) of each /EmbeddedFile stream."""
    count = 0
    for offset, data in _windows(fd):
        for match in _rx().type_stream.finditer(data):
            if match.start() >= WINDOW:
                break  # the next window has it
            if _rx().objstm.search(match.group()):
                continue
            found = _stream_at(fd, offset + match.start())
            if not found:
                continue
            number, at, flate = found
            head = b""
            for text in _inflated(fd, at, flate, HEAD, [HEAD]):
                head = text[:HEAD]  # the first piece holds HEAD bytes when there are that many
                break
            yield number, head
            count += 1
            if count >= MAX_STREAMS:
                return


def _file_specs(text: bytes, names: dict[int, list[str]], unlinked: list[str]) -> None:
    """The file names of file specifications with an embedded file (/EF) in ``text``, by the
    object numbers their /EF dictionary points to."""
    for match in _rx().ef.finditer(text):
        if sum(len(n) for n in names.values()) + len(unlinked) >= MAX_EMBEDDED:
            return
        close = text.find(b">>", match.end())
        refs = [int(m.group(1)) for m in _rx().ef_ref.finditer(text, match.end(), close)]
        start = max(0, match.start() - 1024)
        before = [m.end() for m in _rx().endobj.finditer(text, start, match.start())]
        start = before[-1] if before else start
        after = _rx().endobj.search(text, match.end(), match.end() + 1024)
        end = after.start() if after else match.end() + 1024
        found = []
        for name in _rx().file_name.finditer(text, start, end):
            value = _string(text, name.end() - 1)
            if value and value not in found:
                found.append(value)
        for ref in refs[:1] or [-1]:
            if ref < 0:
                unlinked.extend(n for n in found if n not in unlinked)
            else:
                names.setdefault(ref, []).extend(n for n in found if n not in names.get(ref, []))


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("f"): 12}


def _string(text: bytes, at: int) -> str:
    """The PDF string at ``at`` (literal or hex), decoded: UTF-16 with a byte-order mark,
    else PDFDocEncoding read as latin-1."""
    raw = bytearray()
    if text[at : at + 1] == b"<":
        end = text.find(b">", at, at + 4096)
        digits = re.sub(rb"[^0-9A-Fa-f]", b"", text[at + 1 : end])
        raw = bytearray(bytes.fromhex((digits + b"0" * (len(digits) & 1)).decode()))
    else:
        depth, pos, end = 0, at + 1, min(len(text), at + 4096)
        while pos < end:
            c = text[pos]
            pos += 1
            if c == 0x5C and pos < end:  # backslash
                e = text[pos]
                pos += 1
                if 0x30 <= e <= 0x37:
                    digits = bytes([e])
                    while len(digits) < 3 and pos < end and 0x30 <= text[pos] <= 0x37:
                        digits += text[pos : pos + 1]
                        pos += 1
                    raw.append(int(digits, 8) & 0xFF)
                elif e in (10, 13):
                    if e == 13 and text[pos : pos + 1] == b"\n":
                        pos += 1
                else:
                    raw.append(_ESCAPES.get(e, e))
                continue
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                if depth == 0:
                    break
                depth -= 1
            raw.append(c)
    data = bytes(raw)
    if data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return data.decode("utf-16", "replace").strip("\0")
    return data.decode("latin-1").strip("\0")
