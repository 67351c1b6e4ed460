"""A streaming MIME walk over the spooled message: the leaf parts, with their first bytes decoded.

The body is never parsed line by line and never held in memory: multipart delimiters are
found with ``bytes.find`` over windows read with ``os.pread``, so a 28 MB attachment costs a
few scans of memory-sized windows, not a Python loop per line (the stdlib parser takes about
a second and 300 MB for it, shared/DESIGN.md section 5). Header fields, which are small, are
read with the stdlib's own semantics (RFC 2231 parameters, encoded-word file names).

Whatever the input, ``walk`` yields parts and returns: no boundary, a wrong or missing closing
boundary, a part with no headers, junk in base64 all give parts; nesting past ``max_depth`` or
more than ``max_parts`` parts are reported in ``Walk.limits`` for policy to judge.
"""

import binascii
import re
from collections.abc import Iterator

from qqfilter.spool import Spool

WINDOW = 1 << 20
MAX_HEADER = 65536
HEAD = 40960
"""Decoded bytes kept per part: enough for libmagic, including an ISO 9660 signature."""

_B64_JUNK = bytes(
    c for c in range(256) if not (c < 128 and chr(c).isalnum()) and chr(c) not in "+/="
)
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]*)\r?$", re.MULTILINE)
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)")
_PLAIN_TYPE = re.compile(
    r"\s*(?:text|image|audio|video)/[\w.+-]+\s*(?:;\s*charset=[\w.:-]+\s*)?;?\s*", re.ASCII
)
"""A Content-Type with no parameter but a plain charset (no boundary, no name)."""


class Part:
    """One leaf part: where it is, what it says it is, and its first bytes decoded.

    ``path`` numbers it like IMAP ("1", "2.1"); ``start``/``end`` are the body's byte range
    in the spool; ``name`` is the declared file name ("" if none); ``disposition`` is
    "attachment", "inline" or ""; ``encoding`` the transfer encoding, lowercased.
    """

    __slots__ = ("content_type", "disposition", "encoding", "end", "head", "name", "path", "start")

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
    ) -> None:
        self.path = path
        self.content_type = content_type
        self.name = name
        self.disposition = disposition
        self.encoding = encoding
        self.start = start
        self.end = end
        self.head = head

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


class Walk:
    """The leaf parts of a message; ``limits`` says what the walk did not look into."""

    def __init__(self, spool: Spool, *, max_depth: int = 30, max_parts: int = 1000) -> None:
        self.spool = spool
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.limits: list[str] = []
        self.count = 0

    def __iter__(self) -> Iterator[Part]:
        return self._entity(0, self.spool.size, "1", 0, "text/plain")

    def _entity(self, start: int, end: int, path: str, depth: int, default: str) -> Iterator[Part]:
        """The parts of the entity (headers, then body) in [start, end)."""
        fields, body = self._headers(start, end)
        content_type, params, name, disposition = _describe(fields, default)
        encoding = fields.get("content-transfer-encoding", "").strip().lower()
        if depth >= self.max_depth and content_type.startswith(("multipart/", "message/")):
            self._limit(f"MIME nesting deeper than {self.max_depth} at part {path}")
            return
        boundary = params.get("boundary", "")
        if content_type.startswith("multipart/") and boundary:
            yield from self._multipart(body, end, boundary, path, depth, content_type)
            return
        if content_type in ("message/rfc822", "message/global") and encoding not in (
            "base64",
            "quoted-printable",
        ):
            yield from self._entity(body, end, path, depth + 1, "text/plain")
            return
        self.count += 1
        if self.count > self.max_parts:
            if self.count == self.max_parts + 1:
                self._limit(f"more than {self.max_parts} parts")
            return
        head = decode_head(self.spool, body, end, encoding)
        yield Part(path, content_type, name, disposition, encoding, body, end, head)
        if content_type.startswith("text/") or not content_type:
            yield from self._uuencoded(body, end, path)

    def _headers(self, start: int, end: int) -> tuple[dict[str, str], int]:
        """The header fields (first of each name, unfolded) and where the body starts."""
        block = self.spool.read(start, min(MAX_HEADER, end - start))
        fields: dict[str, str] = {}
        position = 0
        current: str | None = None
        while position < len(block):
            newline = block.find(b"\n", position)
            if newline < 0:
                if start + len(block) >= end:
                    newline = len(block)  # the last line, with no line end
                else:
                    break  # a header block too long for the window: the rest is body
            line = block[position:newline].rstrip(b"\r")
            if not line:
                position = newline + 1
                break
            if line[:1] in (b" ", b"\t") and current is not None:
                if current:  # a continuation of a field that counts
                    fields[current] += " " + line.strip().decode("latin-1")
            else:
                match = _FIELD.fullmatch(line)
                if not match:
                    break  # not a header line: the body starts here (a part with no headers)
                current = match.group(1).decode("ascii").lower()
                if current in fields:
                    current = ""  # later copies of a field are not believed, nor continued
                else:
                    fields[current] = match.group(2).strip().decode("latin-1")
            position = newline + 1
        return fields, start + min(position, len(block))

    def _multipart(
        self, body: int, end: int, boundary: str, path: str, depth: int, content_type: str
    ) -> Iterator[Part]:
        """The parts between delimiter lines, each walked as soon as its end is found (so
        a message of a million empty parts costs no memory); no closing delimiter means the
        last part runs to the end."""
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        child_default = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
        part_start = -1
        index = 0
        position = body
        while True:
            found = self._delimiter(delimiter, position, end, at_line_start=position == body)
            if part_start >= 0:
                part_end = _before_line_end(self.spool, part_start, found if found >= 0 else end)
                child = f"{path}.{index}" if depth else str(index)
                yield from self._entity(part_start, part_end, child, depth + 1, child_default)
                if self.count > self.max_parts or self.limits:
                    return
            if found < 0:
                break
            after = found + len(delimiter)
            if self.spool.read(after, 2) == b"--":
                break  # the closing delimiter
            line_end = self.spool.find(b"\n", after, end)
            part_start = line_end + 1 if line_end >= 0 else end
            index += 1
            position = after
        if index == 0 and part_start < 0:  # no delimiter: the body is one part
            yield from self._leaf_without_structure(body, end, path, content_type)

    def _delimiter(self, delimiter: bytes, start: int, end: int, *, at_line_start: bool) -> int:
        """The next line starting with ``delimiter`` followed by "--", white space or EOL;
        ``start`` itself counts as a line start only when ``at_line_start``."""
        position = start
        while position < end:
            if (
                at_line_start
                and position == start
                and (self.spool.read(position, len(delimiter)) == delimiter)
            ):
                found = position
            else:
                found = self.spool.find(b"\n" + delimiter, position, end)
                if found < 0:
                    return -1
                found += 1
            after = self.spool.read(found + len(delimiter), 1)
            if after in (b"", b"-", b"\r", b"\n", b" ", b"\t"):
                return found
            position = found + len(delimiter)
        return -1

    def _leaf_without_structure(
        self, body: int, end: int, path: str, content_type: str
    ) -> Iterator[Part]:
        self.count += 1
        head = self.spool.read(body, HEAD)
        yield Part(path, content_type, "", "", "", body, end, head)

    def _uuencoded(self, start: int, end: int, path: str) -> Iterator[Part]:
        """uuencoded files inside a text body (``begin 644 name`` ... ``end``)."""
        position, number = start, 0
        while self.count < self.max_parts:
            found = self.spool.find(b"begin ", position, end)
            if found < 0:
                return
            position = found + 6
            if found > start and self.spool.read(found - 1, 1) != b"\n":
                continue
            line = self.spool.read(found, 1024).split(b"\n", 1)[0]
            match = _UU_BEGIN.match(line)
            if not match:
                continue
            number += 1
            self.count += 1
            data = found + len(line) + 1
            head = decode_uu(self.spool.read(data, min(end - data, HEAD * 2)))
            name = match.group(1).strip().decode("latin-1")
            uu_path = f"{path}.uu{number}"
            yield Part(
                uu_path,
                "application/octet-stream",
                name,
                "attachment",
                "x-uuencode",
                data,
                end,
                head,
            )

    def _limit(self, why: str) -> None:
        if why not in self.limits:
            self.limits.append(why)


def _before_line_end(spool: Spool, start: int, end: int) -> int:
    """``end`` moved before the line end that belongs to the next delimiter."""
    if end > start and spool.read(end - 1, 1) == b"\n":
        end -= 1
        if end > start and spool.read(end - 1, 1) == b"\r":
            end -= 1
    return end


def _describe(fields: dict[str, str], default: str) -> tuple[str, dict[str, str], str, str]:
    """Content type, its parameters, the declared file name and the disposition."""
    raw_type = fields.get("content-type")
    raw_disposition = fields.get("content-disposition", "")
    if raw_type is None and not raw_disposition:
        return default, {}, "", ""
    if raw_type is not None and not raw_disposition and _PLAIN_TYPE.fullmatch(raw_type):
        # the common "text/plain; charset=utf-8": nothing the stdlib would read otherwise
        return raw_type.split(";")[0].strip().lower(), {}, "", ""
    from email.message import Message

    header = Message()
    header.set_default_type(default)
    if raw_type is not None:
        header["Content-Type"] = raw_type
    if raw_disposition:
        header["Content-Disposition"] = raw_disposition
    try:
        content_type = header.get_content_type() if raw_type is not None else default
        boundary = header.get_boundary()
        name = header.get_filename() or ""
        disposition = (header.get_content_disposition() or "") if raw_disposition else ""
    except Exception:  # the stdlib on hostile parameters (a NUL in a charset): read them raw
        return _describe_raw(raw_type or "", raw_disposition, default)
    params = {"boundary": boundary} if boundary else {}
    return content_type, params, _decode_words(str(name)), disposition


_RAW_TYPE = re.compile(r"\s*([\w.+-]+/[\w.+-]+)", re.ASCII)
_RAW_PARAM = re.compile(r'(?:^|;)\s*(boundary|filename|name)(?:\*\d*)?\*?\s*=\s*"?([^";]*)', re.I)


def _describe_raw(raw_type: str, raw_disposition: str, default: str):
    """What ``_describe`` gives, read without the stdlib: names as written (still checked)."""
    matched = _RAW_TYPE.match(raw_type)
    content_type = matched.group(1).lower() if matched else default
    found: dict[str, str] = {}
    for text in (raw_type, raw_disposition):
        for key, value in _RAW_PARAM.findall(text):
            found.setdefault(key.lower(), value.strip())
    params = {"boundary": found["boundary"]} if found.get("boundary") else {}
    name = found.get("filename") or found.get("name") or ""
    disposition = raw_disposition.split(";")[0].strip().lower()
    return content_type, params, name, disposition


def _decode_words(name: str) -> str:
    """``name`` with RFC 2047 encoded words decoded; undecodable bytes as U+FFFD."""
    if "=?" not in name:
        return name
    from email.header import decode_header

    try:
        pieces = decode_header(name)
    except (ValueError, LookupError):
        return name
    out = []
    for value, charset in pieces:
        if isinstance(value, bytes):
            try:
                out.append(value.decode(charset or "latin-1", "replace"))
            except LookupError:
                out.append(value.decode("latin-1"))
        else:
            out.append(value)
    return "".join(out)


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
