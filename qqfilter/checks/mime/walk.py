"""A streaming MIME walk over the spooled message: the leaf parts, with their first bytes decoded.

Bodies are never parsed line by line and never held in memory. Every read goes through one
cached window of the file (``_Reader``, WINDOW bytes, ``os.pread``) that the walk moves
forward: multipart delimiters and uuencode ``begin`` lines are found inside the window with
``bytes.find`` or a compiled pattern, and a near miss (``--boundaryX``, a ``begin`` line that
is not uuencode) is passed over inside it, in C once a boundary has had a few of them, never
with a new read. So each byte is read a bounded number of times whatever the shape of the
message (the scan of each multipart around it, a second one for the lenient reading below
when it had near misses, and the part's own look), in time linear in its size, and memory
stays at one window: a 28 MB attachment costs a few scans of memory-sized windows, not a
Python loop per line (the stdlib parser takes about a second and 300 MB for it,
shared/DESIGN.md section 5). bench/mime_walk.py prints the figures for adversarial shapes.

Header blocks of any length are read through the window, runs of fields the walk does not
keep passed over in C, keeping only the fields it needs: every copy of Content-Type and
Content-Disposition (in order, raw, as ``Part.types`` and ``Part.dispositions``) and of
Content-Transfer-Encoding, within MAX_KEPT bytes per block; the first copy of each decides.
Mbox ``From `` lines and stray lines of white space in a header block are skipped, as mail
programs and the stdlib skip them. The fields are read with the stdlib's own semantics
(RFC 2231 parameters, encoded-word names).

A delimiter line is matched as RFC 2046 writes it: ``--boundary``, optional spaces or tabs,
the line end (and ``--boundary--`` the same way for the close); a line with anything else
after the boundary is body, so ``--b--x`` neither closes nor splits. After the close, further
delimiter lines of the same boundary still start parts, as mail programs read them. A reader
that matches delimiters by their start (ripmime) splits at ``--b-x`` too: the parts only it
sees are walked as well (paths ``N~M``), so neither reading hides a part. An empty
``boundary=""`` is read as the stdlib reads it (``--`` lines delimit), and as one part when
that finds no delimiter. A part with no bytes at all is counted, not yielded.

message/rfc822, message/global and message/news parts in base64 or quoted-printable are
decoded into a file without a name (never larger than the part) and walked as messages there;
text parts in those encodings are decoded the same way when they hold a ``begin`` line, for
the uuencoded files inside. The parts found there carry that file as ``Part.spool``: it is
open while the part is looked at, and closed when the walk moves past the message (read a
part's bytes before the next part is asked for). The bytes decoded per walk are capped
(DECODE_FACTOR times the message, plus a window). A message part with a file name or a
Content-Disposition is also yielded itself, with an empty head, so the name a mail program
would save it under is judged.

Whatever the input, the walk yields parts and ends: no boundary, a wrong or missing closing
boundary, a part with no headers, junk in base64 all give parts; nesting past ``max_depth``,
more than ``max_parts`` parts, kept header fields past MAX_KEPT or decoding past its cap are
reported in ``Walk.limits`` for policy to judge.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Generator, Iterator

from qqfilter.checks.mime.names import describe
from qqfilter.exitcodes import QueueError
from qqfilter.spool import Spool, anonymous_file, write_all

WINDOW = 1 << 20
"""Bytes read from the file at a time, and held: the walk's memory."""
MAX_KEPT = 65536
"""Bytes of kept header fields (types, dispositions, encodings) per header block."""
LINE_PEEK = 1024
"""Bytes of a header line read to tell what it is (a field not kept is never read whole)."""
HEAD = 40960
"""Decoded bytes kept per part: enough for libmagic, including an ISO 9660 signature."""
DECODE_FACTOR = 3
"""Bytes decoded into files per walk, at most this many times the message (plus a window)."""
MESSAGES = ("message/rfc822", "message/global", "message/news")
"""The types walked as a message inside the part."""
ENCODED = ("base64", "quoted-printable")
UUENCODINGS = ("x-uuencode", "uuencode", "x-uue")
"""The transfer encodings read as uuencode (as walk.decode_head reads them); the walk also
gives a ``begin 644 name`` block in a text body as a part of encoding "x-uuencode"."""
MAX_UU_LINE = 4096
"""A uuencoded line is at most 61 characters; a "line" longer than this is not uuencode."""

COMPILE_AFTER = 64
"""Near misses (or empty parts) of one boundary after which it gets a pattern of its own."""
"""The transfer encodings decoded into a file when a message or uuencode is inside."""

_B64_JUNK = bytes(
    c for c in range(256) if not (c < 128 and chr(c).isalnum()) and chr(c) not in "+/="
)
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]*)\r?$", re.MULTILINE)
_UU_LINE = re.compile(rb"\nbegin [0-7]{3,4} ([^\r\n]*)\r?(?:\n|\Z)")
"""A ``begin`` line after a line end, found inside a window (near misses stay in C)."""
_UNKEPT_LINES = re.compile(
    rb"(?:(?:[ \t]|From |:|(?!(?i:content-(?:type|disposition|transfer-encoding))[ \t]*:)"
    rb"[!-9;-~]+[ \t]*:)[^\n]*\n)*+"
)
"""A run of whole header lines the walk skips: fields it does not keep (and their
continuations), mbox ``From `` lines, fields with no name, lines of white space."""
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_NAME_RUN = re.compile(rb"[!-9;-~]+[ \t]*")
"""The start of a header line longer than LINE_PEEK whose name has not ended yet."""
_NOT_NAME = re.compile(rb"[^!-9;-~]")
_KEPT = {
    b"content-type": "content-type",
    b"content-disposition": "content-disposition",
    b"content-transfer-encoding": "content-transfer-encoding",
}
_EMPTY_BOUNDARY = re.compile(r'(?:^|;)\s*boundary\s*(?:=\s*(?:"\s*"|(?=;|$))|(?=;|$))', re.I)
"""A boundary parameter with an empty value, which the stdlib reads as the boundary ""."""


class Part:
    """One leaf part: where it is, what it says it is, and its first bytes decoded.

    ``path`` numbers it like IMAP ("1", "2.1"); ``start``/``end`` are the body's byte range
    in ``spool`` (the message, or the file an encoded message or text was decoded into);
    ``name`` is the declared file name ("" if none), ``names`` every name a client might use
    for it (names.py), ``name`` first; ``disposition`` is "attachment",
    "inline" or ""; ``encoding`` the transfer encoding, lowercased; ``types`` and
    ``dispositions`` every Content-Type and Content-Disposition value of the part, raw and
    unfolded, in order (the first one decides ``content_type`` and ``disposition``).
    """

    __slots__ = (
        "content_type",
        "disposition",
        "dispositions",
        "encoding",
        "end",
        "head",
        "name",
        "names",
        "path",
        "spool",
        "start",
        "types",
    )

    def __init__(
        self,
        path: str,
        content_type: str,
        name: str,
        disposition: str,
        encoding: str,
        start: int,
        end: int,
        head: bytes,
        *,
        spool: Spool,
        types: tuple[str, ...] = (),
        dispositions: tuple[str, ...] = (),
        names: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.content_type = content_type
        self.name = name
        self.disposition = disposition
        self.encoding = encoding
        self.start = start
        self.end = end
        self.head = head
        self.spool = spool
        self.types = types
        self.dispositions = dispositions
        self.names = names or ((name,) if name else ())

    @property
    def is_attachment(self) -> bool:
        """Named, or marked as an attachment, or not text: what a user would open as a file."""
        return (
            bool(self.name)
            or self.disposition == "attachment"
            or not (
                self.content_type.startswith("text/") or self.content_type.startswith("multipart/")
            )
        )


class _Reader(Spool):
    """A spool read through one cached window of WINDOW bytes.

    A read or a search inside the window costs no system call; one outside it loads the
    window there (a read of a window or more goes to the file directly). The walk's reads
    and searches move forward, so the file is read a bounded number of times, and memory is
    one window. Reads go through ``origin.read``.
    """

    __slots__ = ("base", "data", "origin")

    def __init__(self, origin: Spool) -> None:
        super().__init__(origin.fd, origin.size, origin.received)
        self.origin = origin
        self.base = 0
        self.data = b""

    def read(self, start: int, length: int) -> bytes:
        stop = min(start + length, self.size)
        if start >= stop:
            return b""
        if start < self.base or stop > self.base + len(self.data):
            if stop - start >= WINDOW:
                return self.origin.read(start, stop - start)
            self._load(start)
        return self.data[start - self.base : stop - self.base]

    def find(self, needle: bytes, start: int, end: int) -> int:
        end = min(end, self.size)
        position = start
        while end - position >= len(needle):
            if not self.base <= position < self.base + len(self.data):
                self._load(position)
            limit = min(end, self.base + len(self.data))
            found = self.data.find(needle, position - self.base, limit - self.base)
            if found >= 0:
                return self.base + found
            if limit >= end:
                return -1
            position = max(position, limit - len(needle) + 1)
            self._next(start, position)
        return -1

    def scan(
        self, pattern: re.Pattern[bytes], start: int, end: int, overlap: int
    ) -> tuple[int, re.Match[bytes], bool] | None:
        """The first match of ``pattern`` starting in [start, end), as (the window's
        offset, the match in ``data``, whether it is cut), or None.

        ``pattern`` must decide a match within ``overlap`` bytes of where it starts, or run
        to the end of what it is given (``\\Z``). A match that runs to the end of a window
        before ``end`` may go on: it is looked for again in a window loaded where it starts,
        and is given as cut when it runs through that whole window too.
        """
        end = min(end, self.size)
        position = start
        while position < end:
            if not self.base <= position < self.base + len(self.data):
                self._load(position)
            limit = min(end, self.base + len(self.data))
            match = pattern.search(self.data, position - self.base, limit - self.base)
            if match is not None:
                if limit >= end or match.end() < limit - self.base:
                    return self.base, match, False
                if match.start() == 0:
                    return self.base, match, True
                position = self.base + match.start()
                self._load(position)
                continue
            if limit >= end:
                return None
            position = max(position, limit - overlap)
            self._next(start, position)
        return None

    def skip(self, pattern: re.Pattern[bytes], start: int, end: int) -> tuple[int, int]:
        """Where repeated matches of ``pattern`` (whole lines) from ``start`` end, and how
        many line ends they held."""
        end = min(end, self.size)
        position, lines = start, 0
        while position < end:
            if not self.base <= position < self.base + len(self.data):
                self._load(position)
            limit = min(end, self.base + len(self.data))
            match = pattern.match(self.data, position - self.base, limit - self.base)
            if match is None or match.end() == match.start():
                break
            lines += self.data.count(b"\n", match.start(), match.end())
            position = self.base + match.end()
            if position < limit or limit >= end:
                break
        return position, lines

    def release(self) -> None:
        """Let the window go (the walk looks into another file for a while)."""
        self.data = b""

    def _load(self, start: int) -> None:
        self.base = start
        self.data = self.origin.read(start, WINDOW)

    def _next(self, start: int, position: int) -> None:
        """The window after this one, for a search from ``start`` now at ``position``: it
        keeps ``start`` when that costs at most a quarter window, since the caller reads
        what it searched next (a line, a delimiter)."""
        self._load(start if 0 <= position - start <= WINDOW // 4 else position)


class Walk:
    """The leaf parts of a message; ``limits`` says what the walk did not look into.

    ``directory`` holds the files encoded messages are decoded into (default: $TMPDIR or
    /tmp; the attachment check passes its spool directory).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        max_depth: int = 30,
        max_parts: int = 1000,
        directory: str | None = None,
    ) -> None:
        self.spool = spool
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.directory = directory or os.environ.get("TMPDIR") or "/tmp"
        self.limits: list[str] = []
        self.count = 0
        self.decoded = 0
        self.max_decoded = DECODE_FACTOR * spool.size + WINDOW

    def __iter__(self) -> Iterator[Part]:
        return self._entity(_Reader(self.spool), 0, self.spool.size, "1", 0, "text/plain")

    def _entity(
        self, src: _Reader, start: int, end: int, path: str, depth: int, default: str
    ) -> Iterator[Part]:
        """The parts of the entity (headers, then body) in [start, end)."""
        header = self._headers(src, start, end, path)
        if header is None:
            return
        fields, types, dispositions, body = header
        described = describe(list(types), list(dispositions), default)
        content_type, disposition, names = (
            described.content_type,
            described.disposition,
            described.names,
        )
        name = names[0] if names else ""
        params = {"boundary": described.boundary} if described.boundary else {}
        encoding = fields.get("content-transfer-encoding", "").strip().lower()
        if depth >= self.max_depth and content_type.startswith(("multipart/", "message/")):
            self._limit(f"MIME nesting deeper than {self.max_depth} at part {path}")
            return
        if content_type.startswith("multipart/"):
            boundary: str | None = params.get("boundary")
            if boundary is None and types and _EMPTY_BOUNDARY.search(types[0]):
                boundary = ""  # the stdlib's reading: "--" lines delimit
            if boundary is not None:
                found = yield from self._multipart(
                    src, body, end, boundary, path, depth, content_type
                )
                if found or self.limits:
                    return
        elif content_type in MESSAGES:
            if name or dispositions:  # a mail program may save it as a file: by its name
                if not self._counted():
                    return
                yield Part(
                    path,
                    content_type,
                    name,
                    disposition,
                    encoding,
                    body,
                    end,
                    b"",  # its content is the message walked below, not a file's bytes
                    spool=src.origin,
                    types=types,
                    dispositions=dispositions,
                    names=names,
                )
            if encoding not in ENCODED:
                yield from self._entity(src, body, end, path, depth + 1, "text/plain")
                return
            decoded = self._decode(src, body, end, encoding, path)
            if decoded is not None:
                src.release()
                try:
                    yield from self._entity(
                        _Reader(decoded), 0, decoded.size, path, depth + 1, "text/plain"
                    )
                finally:
                    decoded.close()
                return
            if self.limits:
                return
            # no file to decode into: the part is looked at as it is, its head decoded
        if not self._counted():
            return
        head = decode_head(src, body, end, encoding)
        yield Part(
            path,
            content_type,
            name,
            disposition,
            encoding,
            body,
            end,
            head,
            spool=src.origin,
            types=types,
            dispositions=dispositions,
            names=names,
        )
        if content_type.startswith("text/") or not content_type:
            if encoding in ENCODED:
                yield from self._uuencoded_inside(src, body, end, path, encoding)
            else:
                yield from self._uuencoded(src, body, end, path)

    def _headers(
        self, src: _Reader, start: int, end: int, path: str
    ) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...], int] | None:
        """The kept fields of the header block at ``start`` (the first copy of each, then
        every Content-Type and every Content-Disposition), and where the body starts; None
        when the kept fields are past MAX_KEPT (noted in ``limits``).

        The block ends at an empty line (the body starts after it) or at a line that is not a
        header line (the body starts with it: a part with no headers). A line of any length
        costs one search and a read of at most LINE_PEEK bytes, unless its field is kept.
        """
        if start >= end:
            return {}, (), (), end
        kept: dict[str, list[list[bytes]]] = {}
        pieces: list[bytes] | None = None  # the kept copy a continuation line goes on
        room = MAX_KEPT
        position = start
        while position < end:
            if pieces is None:
                position = src.skip(_UNKEPT_LINES, position, end)[0]
                if position >= end:
                    break
            newline = src.find(b"\n", position, end)
            stop = newline if newline >= 0 else end
            following = stop + 1 if newline >= 0 else end
            length = stop - position
            whole = length <= LINE_PEEK
            line = src.read(position, min(length, LINE_PEEK))
            if whole:
                line = line.rstrip(b"\r")
                if not line:
                    position = following
                    break
            first = line[:1]
            if first in (b" ", b"\t"):
                # a continuation; before any field (a stray line of white space), or of a
                # field not kept, it is skipped, as the stdlib's parser skips it
                if pieces is not None:
                    if length > room:
                        self._limit(f"header fields longer than {MAX_KEPT} bytes at part {path}")
                        return None
                    room -= length
                    pieces.append((line if whole else src.read(position, length)).strip())
            elif line.startswith(b"From ") or first == b":":
                pieces = None  # an mbox separator, or a field with no name: skipped
            else:
                match = _FIELD_NAME.match(line)
                if match is None:
                    long_name = not whole and _NAME_RUN.fullmatch(line)
                    if not (long_name and _long_name(src, position, stop)):
                        break  # not a header line: the body starts here
                    pieces = None  # a field name longer than LINE_PEEK: not one we keep
                else:
                    key = _KEPT.get(match.group(1).lower())
                    if key is None:
                        pieces = None
                    else:
                        if length > room:
                            self._limit(
                                f"header fields longer than {MAX_KEPT} bytes at part {path}"
                            )
                            return None
                        room -= length
                        full = line if whole else src.read(position, length)
                        pieces = [full[match.end() :].strip()]
                        kept.setdefault(key, []).append(pieces)
            position = following
        values = {
            key: tuple(b" ".join(copy).decode("latin-1") for copy in copies)
            for key, copies in kept.items()
        }
        fields = {key: copies[0] for key, copies in values.items()}
        types = values.get("content-type", ())
        dispositions = values.get("content-disposition", ())
        return fields, types, dispositions, min(position, end)

    def _multipart(
        self,
        src: _Reader,
        body: int,
        end: int,
        boundary: str,
        path: str,
        depth: int,
        content_type: str,
    ) -> Generator[Part, None, bool]:
        """The parts between delimiter lines, each walked as soon as its end is found (so
        a message of a million parts costs no memory); no closing delimiter means the last
        part runs to the end. After the close, a delimiter line starts a part again. A part
        with no bytes at all (no headers, no body) is counted, not yielded. Returns whether
        there was a delimiter line at all."""
        lines = _Boundary(boundary)
        child_default = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
        part_start = -1  # -1: in the preamble or the epilogue
        index = 0
        position = body
        while True:
            found, close, following = lines.next(src, position, end)
            if part_start >= 0:
                part_end = _before_line_end(src, part_start, found if found >= 0 else end)
                if part_end > part_start:
                    child = f"{path}.{index}" if depth else str(index)
                    yield from self._entity(
                        src, part_start, part_end, child, depth + 1, child_default
                    )
                    if self.limits:
                        return True
                else:  # an empty part: nothing to look at, but it counts
                    lines.empties += 1
                    if not self._counted():
                        return True
            if found < 0:
                if lines.misses:  # every line that starts with the delimiter was a delimiter
                    yield from self._lenient(src, body, end, lines, path, depth, child_default)
                return index > 0
            if close:
                part_start = -1
            else:
                index += 1
                part_start = following
                # more delimiter lines right after it: the empty parts between, counted at once
                following, empty = lines.empty_parts(src, following, end)
                if empty:
                    index += empty
                    part_start = following
                    self.count += empty
                    if self.count > self.max_parts:
                        self._limit(f"more than {self.max_parts} parts")
                        return True
            position = following

    def _lenient(
        self,
        src: _Reader,
        body: int,
        end: int,
        lines: _Boundary,
        path: str,
        depth: int,
        child_default: str,
    ) -> Iterator[Part]:
        """The parts only a reader that matches delimiters by their start sees (ripmime
        does): after each line that starts with the delimiter but is no delimiter line and no
        close (``--bX``, ``--b-x``, not ``--b--x``), up to the next line that starts with
        the delimiter. Walked too (paths ``N~M``), so no reading hides a part; an empty one
        costs nothing."""
        position, number = body, 0
        while not self.limits:
            found = lines.lenient(src, position, end)
            if found is None:
                return
            part_start, part_end = found
            number += 1
            child = f"{path}.~{number}" if depth else f"~{number}"
            yield from self._entity(src, part_start, part_end, child, depth + 1, child_default)
            position = part_end

    def _uuencoded(self, src: _Reader, start: int, end: int, path: str) -> Iterator[Part]:
        """uuencoded files inside a text body (``begin 644 name`` ... ``end``)."""
        if start >= end:
            return
        first = src.read(start, min(end - start, 1024)).split(b"\n", 1)[0]
        match = _UU_BEGIN.match(first)  # a begin line at the start: no line end before it
        begins = [(match.group(1), start + len(first) + 1)] if match else []
        position, number = start, 0
        while True:
            for name, data in begins:
                if not self._counted():
                    return
                number += 1
                data = min(data, end)
                yield Part(
                    f"{path}.uu{number}",
                    "application/octet-stream",
                    name.strip().decode("latin-1"),
                    "attachment",
                    "x-uuencode",
                    data,
                    end,
                    decode_uu(src.read(data, min(end - data, HEAD * 2))),
                    spool=src.origin,
                )
            hit = src.scan(_UU_LINE, position, end, 16)
            if hit is None:
                return
            base, line, _ = hit
            begins = [(line.group(1)[:1014], base + line.end())]
            position = base + line.start() + 1

    def _uuencoded_inside(
        self, src: _Reader, start: int, end: int, path: str, encoding: str
    ) -> Iterator[Part]:
        """uuencoded files in a base64 or quoted-printable text body: looked for in the
        decoded text (in memory, a window at a time), and walked in a decoded file when a
        line starts with ``begin ``."""
        tail = b"\n"  # the text starts at a line start
        for data in decoded(src, start, end, encoding):
            if data.find(b"\nbegin ") >= 0 or (tail + data[:7]).find(b"\nbegin ") >= 0:
                break
            tail = (tail + data[-7:])[-7:]
        else:
            return
        text = self._decode(src, start, end, encoding, path)
        if text is None:
            if not self.limits:  # no file to decode into: the text as it is
                yield from self._uuencoded(src, start, end, path)
            return
        src.release()
        try:
            yield from self._uuencoded(_Reader(text), 0, text.size, path)
        finally:
            text.close()

    def _decode(self, src: _Reader, start: int, end: int, encoding: str, path: str) -> Spool | None:
        """The body in [start, end) decoded into a file without a name, as a Spool to close;
        None past the walk's cap on decoded bytes (noted in ``limits``) or when the file
        cannot be written."""
        try:
            fd = anonymous_file(self.directory)
        except QueueError:
            return None
        size = 0
        try:
            for data in decoded(src, start, end, encoding):
                self.decoded += len(data)
                if self.decoded > self.max_decoded:
                    self._limit(
                        f"more than {self.max_decoded} bytes to decode at part {path} "
                        "(encoded messages in encoded messages)"
                    )
                    os.close(fd)
                    return None
                write_all(fd, data, self.directory)
                size += len(data)
        except QueueError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Spool(fd, size, size)

    def _counted(self) -> bool:
        """Count one more part: False past ``max_parts`` (noted in ``limits``)."""
        self.count += 1
        if self.count > self.max_parts:
            self._limit(f"more than {self.max_parts} parts")
            return False
        return True

    def _limit(self, why: str) -> None:
        if why not in self.limits:
            self.limits.append(why)


class _Boundary:
    """The delimiter lines of one multipart, found in the window.

    A delimiter line is ``--boundary``, optionally "--" (the close), optionally spaces and
    tabs, then the line end (LF, CRLF, a lone CR) or the end of the entity (RFC 2046, and
    the stdlib's reading); anything else makes the line body. Candidates are found with
    ``bytes.find`` and told in Python; once a boundary has had COMPILE_AFTER near misses
    (``--boundaryX`` lines), it gets a pattern of its own, so the rest are passed over in C
    (a compiled pattern costs more than a few near misses, so ordinary mail never pays it).
    The same for runs of empty parts, and for the lines a lenient reader takes for
    delimiters (``lenient``).
    """

    __slots__ = ("delimiter", "empties", "line", "loose", "loose_seen", "misses", "run")

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1", "replace")
        self.misses = 0
        self.empties = 0
        self.loose_seen = 0
        self.line: re.Pattern[bytes] | None = None
        self.run: re.Pattern[bytes] | None = None
        self.loose: re.Pattern[bytes] | None = None

    def next(self, src: _Reader, position: int, end: int) -> tuple[int, bool, int]:
        """The next delimiter line at or after the line start ``position``: where it
        starts, whether it is the close, and where the line after it starts; (-1, False,
        end) if none."""
        delimiter = self.delimiter
        close, following, resume = _delimiter_at(src, delimiter, position, end)
        if following >= 0:
            return position, close, following
        if resume > position + 1:  # the line starts with the delimiter: a near miss
            self.misses += 1
        needle = b"\n" + delimiter
        while True:
            if self.line is None:
                hit = src.find(needle, position, end)
                if hit < 0:
                    return -1, False, end
                found = hit + 1
            else:
                scanned = src.scan(self.line, position, end, len(needle) + 2)
                if scanned is None:
                    return -1, False, end
                base, match, cut = scanned
                found = base + match.start() + 1
                if not cut:
                    return found, match.group(1) is not None, base + match.end()
                # transport padding longer than a window: told the slow way below
            close, following, resume = _delimiter_at(src, delimiter, found, end)
            if following >= 0:
                return found, close, following
            position = resume
            self.misses += 1
            if self.misses == COMPILE_AFTER:
                self.line = re.compile(re.escape(needle) + rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")

    def lenient(self, src: _Reader, position: int, end: int) -> tuple[int, int] | None:
        """From the line start ``position``, the next part a lenient reader sees that the
        exact reading does not (see Walk._lenient), not empty: (its start, its end)."""
        delimiter = self.delimiter
        needle = b"\n" + delimiter
        at = position if src.read(position, len(delimiter)) == delimiter else -1
        while True:
            if at < 0:
                if self.loose is None:
                    hit = src.find(needle, position, end)
                    at = hit + 1 if hit >= 0 else -1
                else:
                    scanned = src.scan(self.loose, position, end, len(needle) + 2)
                    at = scanned[0] + scanned[1].start() + 1 if scanned else -1
                if at < 0:
                    return None
            position, candidate, at = at + 1, at, -1
            if _delimiter_at(src, delimiter, candidate, end)[1] >= 0:
                continue  # a delimiter line: the exact reading has its part
            after = candidate + len(delimiter)
            if src.read(after, min(2, end - after)) == b"--":
                continue  # a close to a lenient reader: it hides nothing the exact one sees
            self.loose_seen += 1
            if self.loose_seen == COMPILE_AFTER and self.loose is None:
                self.loose = re.compile(
                    re.escape(needle)
                    + rb"(?!--)(?![ \t]*(?:\r\n|\r|\n))[^\n]*(?:\n(?!"
                    + re.escape(delimiter)
                    + rb")|\Z)"
                )
            newline = src.find(b"\n", after, end)
            if newline < 0:
                return None  # the line runs to the end: no part after it
            part_start = newline + 1
            following = src.find(needle, newline, end)
            part_end = _before_line_end(src, part_start, following + 1 if following >= 0 else end)
            if part_end > part_start:
                return part_start, part_end
            position = newline  # the next line starts with the delimiter: look at it

    def empty_parts(self, src: _Reader, position: int, end: int) -> tuple[int, int]:
        """After a delimiter line, the delimiter lines that follow at once (empty parts):
        where they end and how many; (position, 0) until COMPILE_AFTER empty parts."""
        if self.run is None:
            if self.empties < COMPILE_AFTER:
                return position, 0
            self.run = re.compile(b"(?:" + re.escape(self.delimiter) + rb"[ \t]*\r?\n)*+")
        return src.skip(self.run, position, end)


def _delimiter_at(src: _Reader, delimiter: bytes, at: int, end: int) -> tuple[bool, int, int]:
    """Is there a delimiter line at ``at``: (is it the close, where the next line starts,
    where to search on); the next line's start is -1 when there is none."""
    if src.read(at, min(len(delimiter), end - at)) != delimiter:
        return False, -1, at + 1
    after = at + len(delimiter)
    close = src.read(after, min(2, end - after)) == b"--"
    line_end = _padding_end(src, after + 2 if close else after, end)
    if line_end >= end:
        return close, end, end
    ending = src.read(line_end, min(2, end - line_end))
    if ending[:1] == b"\n":
        return close, line_end + 1, line_end + 1
    if ending[:1] == b"\r":
        return close, line_end + (2 if ending == b"\r\n" else 1), line_end + 1
    return False, -1, line_end


def _long_name(src: _Reader, position: int, stop: int) -> bool:
    """Is the line in [position, stop), a run of name characters longer than LINE_PEEK,
    a header field: is the run followed by white space and a colon?"""
    hit = src.scan(_NOT_NAME, position, stop, 1)
    if hit is None:
        return False  # name characters to the line end: no colon, not a field
    base, match, _ = hit
    colon = _padding_end(src, base + match.start(), stop)
    return colon < stop and src.read(colon, 1) == b":"


def _padding_end(src: _Reader, position: int, end: int) -> int:
    """Where the spaces and tabs from ``position`` end (transport padding of any length)."""
    while position < end:
        chunk = src.read(position, min(4096, end - position))
        if not chunk:
            return end
        rest = chunk.lstrip(b" \t")
        if rest:
            return position + len(chunk) - len(rest)
        position += len(chunk)
    return end


def _before_line_end(spool: Spool, start: int, end: int) -> int:
    """``end`` moved before the line end that belongs to the next delimiter."""
    tail = spool.read(max(start, end - 2), min(2, end - start))
    if tail.endswith(b"\r\n"):
        return end - 2
    return end - 1 if tail.endswith(b"\n") else end


def decode_head(spool: Spool, start: int, end: int, encoding: str) -> bytes:
    """The first HEAD bytes of the body in [start, end), decoded from ``encoding``."""
    if encoding == "base64":
        raw = spool.read(start, min(end - start, HEAD * 2))
        return decode_base64(raw)[:HEAD]
    if encoding == "quoted-printable":
        raw = spool.read(start, min(end - start, HEAD * 3))
        return binascii.a2b_qp(raw)[:HEAD]
    if encoding in ("x-uuencode", "uuencode", "x-uue"):
        return decode_uu(spool.read(start, min(end - start, HEAD * 2)))
    return spool.read(start, min(end - start, HEAD))


def decode_tail(spool: Spool, start: int, end: int, encoding: str, length: int) -> bytes:
    """About the last ``length`` bytes of the body in [start, end), decoded from
    ``encoding`` (at least that many when the body has them): where a zip keeps its end
    record. Base64 is decoded from the quantum boundary that a correctly padded body ends
    on; quoted-printable and uuencode from a line start."""
    if encoding == "base64":
        first = max(start, end - length * 2)
        clean = clean_base64(spool.read(first, end - first))
        if first > start:
            clean = clean[len(clean) % 4 :]
        return decode_base64(clean)[-length:]
    if encoding == "quoted-printable" or encoding in UUENCODINGS:
        first = max(start, end - length * 3)
        raw = spool.read(first, end - first)
        if first > start:
            raw = raw[raw.find(b"\n") + 1 :]
        if encoding == "quoted-printable":
            return binascii.a2b_qp(raw)[-length:]
        return _uu_lines(raw.split(b"\n"))[0][-length:]
    first = max(start, end - length)
    return spool.read(first, end - first)


def decoded(spool: Spool, start: int, end: int, encoding: str) -> Iterator[bytes]:
    """The body in [start, end) decoded from its transfer ``encoding``, a window at a time:
    what the recipient's mail program would save (base64 leniently, quoted-printable, the
    uuencode family; 7bit, 8bit, binary and names no mail program decodes as sent). The one
    decoder for whole bodies: encoded messages and texts here, archives in archives.py."""
    windows = _windows(spool, start, end)
    if encoding == "base64":
        return _base64(windows)
    if encoding == "quoted-printable":
        return _quoted_printable(windows)
    if encoding in UUENCODINGS:
        return _uudecoded(windows)
    return windows


def _windows(spool: Spool, start: int, end: int) -> Iterator[bytes]:
    """The raw bytes in [start, end), a window at a time."""
    position = start
    while position < end:
        raw = spool.read(position, min(WINDOW, end - position))
        if not raw:
            return
        position += len(raw)
        yield raw


def _base64(windows: Iterator[bytes]) -> Iterator[bytes]:
    """Lenient base64 (as walk.decode_base64), a window at a time: the characters of a
    quantum split between two windows are carried over."""
    carry = b""
    for raw in windows:
        data = carry + clean_base64(raw)
        usable = len(data) - len(data) % 4
        carry = data[usable:]
        yield decode_base64(data[:usable])
    if carry:
        yield decode_base64(carry + b"=" * (-len(carry) % 4))


def _quoted_printable(windows: Iterator[bytes]) -> Iterator[bytes]:
    """Quoted-printable, whole lines at a time (a soft line break or an ``=XX`` escape is
    never cut); a line longer than a window is cut before a partial escape."""
    carry = b""
    for raw in windows:
        data = carry + raw
        cut = data.rfind(b"\n") + 1
        if not cut:
            tail = data[-2:]
            cut = len(data) - len(tail) + tail.find(b"=") if b"=" in tail else len(data)
        carry = data[cut:]
        yield binascii.a2b_qp(data[:cut])
    if carry:
        yield binascii.a2b_qp(carry)


def _uudecoded(windows: Iterator[bytes]) -> Iterator[bytes]:
    """uuencoded lines up to the ``end`` line (read as walk.decode_uu reads them: ``begin``
    and empty lines skipped, the first line that does not decode ends the data)."""
    carry = b""
    for raw in windows:
        lines = (carry + raw).split(b"\n")
        carry = lines.pop()
        data, done = _uu_lines(lines)
        yield data
        if done or len(carry) > MAX_UU_LINE:  # a line that long is not uuencode: the end
            return
    yield _uu_lines([carry])[0]


def _uu_lines(lines: list[bytes]) -> tuple[bytes, bool]:
    """The data of uuencoded ``lines``, and whether the data ended among them."""
    out: list[bytes] = []
    for line in lines:
        line = line.rstrip(b"\r")
        if not line or line.startswith(b"begin "):
            continue
        if line in (b"end", b"`"):
            return b"".join(out), True
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:
            return b"".join(out), True
    return b"".join(out), False


def clean_base64(raw: bytes) -> bytes:
    """``raw`` with everything that is not a base64 character (line ends, junk) removed."""
    return raw.translate(None, _B64_JUNK)


def decode_base64(raw: bytes) -> bytes:
    """Lenient base64: junk and white space dropped, a broken last quantum left out."""
    clean = clean_base64(raw)
    try:
        return binascii.a2b_base64(clean[: len(clean) - len(clean) % 4])
    except binascii.Error:  # padding in the middle: decode the characters as they come
        clean = clean.replace(b"=", b"")
        return binascii.a2b_base64(clean[: len(clean) - len(clean) % 4])


def decode_uu(text: bytes) -> bytes:
    """The data of uuencoded lines, as far as they decode, up to HEAD bytes."""
    out = []
    total = 0
    for line in text.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"begin ") or not line:
            continue
        if line == b"end" or line == b"`":
            break
        try:
            chunk = binascii.a2b_uu(line)
        except binascii.Error:
            break
        out.append(chunk)
        total += len(chunk)
        if total >= HEAD:
            break
    return b"".join(out)[:HEAD]
