"""A MIME part's Content-Type and Content-Disposition fields, read as leniently as the most
lenient mail client: its content type, boundary, disposition, and every file name a client
might give it.

The attachment check refuses a part when *any* of its names is blocked, so this module's job
is to collect generously: a name that only one client would use is still a name a user may
double-click. Mail clients disagree on almost every corner of these fields (which copy of a
duplicated parameter wins, whether RFC 2231 or the plain parameter is preferred, whether
encoded words are decoded inside quotes, where an unquoted value ends, what an unknown charset
means), and each disagreement is a way to show a filter one name and the user another. So
rather than one parser's answer, ``describe`` takes every reading:

- both parameters (``filename`` and ``name``) in both fields, every copy, from every copy of
  the field, in order of preference: the disposition's ``filename`` (its RFC 2231 form first,
  as RFC 6266 says), the type's ``name``, then the swapped ones (the first is the one to show);
- each value as a proper parser reads it (quoted strings and quoted-pairs, RFC 2231 charsets,
  percent-encoding and continuations, in index order, by first and by last copy, and up to a
  gap) and as naive readers do (up to the next ``;`` with the quotes dropped; up to the first
  white space; after decoding encoded words in the whole field);
- each text in each charset a client may assume: raw 8-bit as UTF-8 (RFC 6532) and, when it
  is not UTF-8, as latin-1 too; RFC 2047 encoded words (also inside quotes, also adjacent,
  also split in the middle of a character) in their declared charset and sniffed as UTF-8;
  the undecoded text as well, and the text up to a NUL (where a C string ends).

It is its own small parser, not ``email``: the stdlib raises on hostile input (invalid
base64 in an encoded word, a NUL in a charset, an unknown charset), loses encoded words
(compat32) or keeps one copy of a duplicated parameter, and importing ``email.message`` costs
more than ten times this whole module. Every step is linear in the field's length (a hostile
field fills the whole header window), and ``describe`` never raises: any decoder error falls
back to the raw text, and a bug falls back to a plain scan of the raw fields rather than
losing the verdict.
"""

import binascii
import re

_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"
_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})")
_PLAIN_TYPE = re.compile(
    r"\s*(?:text|image|audio|video)/[\w.+-]+\s*(?:;\s*charset=[\w.:-]+\s*)?;?\s*", re.ASCII
)
"""A Content-Type with no parameter but a plain charset (no boundary, no name): the common
``text/plain; charset=utf-8``, answered without parsing."""
_DISPOSITION = re.compile(r'\s*"?([!#$%&\'*+.^_`{|}~0-9A-Za-z-]*)')
_QUOTED = re.compile(r'(?:[^"\\]|\\.)*\\?', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PARAMETER = re.compile(r"(name|filename|boundary)(?:\*0*(\d{1,18}))?(\*)?", re.ASCII)
"""A key: the parameter, its section number (leading zeros dropped; a number too long for any
client to order is not a section), and the star of an extended value."""
_KEY = re.compile(r"(?<![\w-])(?:file)?name(\*?)\s*=", re.IGNORECASE | re.ASCII)
"""A name parameter anywhere in a field, for the naive readings (inside quotes too); not the
sections of a continuation, which only a parser that knows RFC 2231 reads (and joins)."""
_WORD = re.compile(r"=\?([^?]*)\?([bBqQ])\?(.*?)\?=", re.DOTALL)
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_RAW_BOUNDARY = re.compile(r'(?<![\w-])boundary\s*=\s*"?([^";]*)', re.IGNORECASE | re.ASCII)


class Description:
    """What a part's Content-Type and Content-Disposition fields say.

    ``content_type`` is the lowercased type/subtype of the first Content-Type field (the
    default when there is none or it cannot be read); ``boundary`` its boundary ("" when
    none); ``names`` every file name a client might use, decoded, distinct, in order of
    preference (the first is the one to show); ``disposition`` "attachment", "inline" or "".
    """

    __slots__ = ("boundary", "content_type", "disposition", "names")

    def __init__(
        self, content_type: str, boundary: str, names: tuple[str, ...], disposition: str
    ) -> None:
        self.content_type = content_type
        self.boundary = boundary
        self.names = names
        self.disposition = disposition

    def _key(self) -> tuple[str, str, tuple[str, ...], str]:
        return (self.content_type, self.boundary, self.names, self.disposition)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Description) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Description({self.content_type!r}, {self.boundary!r}, {self.names!r}, "
            f"{self.disposition!r})"
        )


def describe(types: list[str], dispositions: list[str], default: str) -> Description:
    """The part's description from the raw (unfolded, latin-1 decoded) values of every
    Content-Type field (``types``) and every Content-Disposition field (``dispositions``), in
    order. Type and boundary come from the first Content-Type; names from all fields."""
    try:
        return _describe(types, dispositions, default)
    except Exception:  # a bug must not cost the verdict: the names as written are still checked
        return _describe_raw(types, dispositions, default)


def _describe(types: list[str], dispositions: list[str], default: str) -> Description:
    if not types and not dispositions:
        return Description(default, "", (), "")
    if len(types) == 1 and not dispositions and _PLAIN_TYPE.fullmatch(types[0]):
        return Description(_content_type(types[0], default), "", (), "")
    type_params = [_parameters(field) for field in types]
    disposition_params = [_parameters(field) for field in dispositions]
    names = _Names()
    for params in disposition_params:
        names.parameter(params, "filename")
    for params in type_params:
        names.parameter(params, "name")
    for params in disposition_params:
        names.parameter(params, "name")
    for params in type_params:
        names.parameter(params, "filename")
    for field in (*dispositions, *types):
        names.naive(field)
        if "=?" in field:  # a client that decodes encoded words in the whole field first
            decoded = _decode_words(field, sniff=False)
            if decoded != field:
                names.naive(decoded)
    content_type = _content_type(types[0], default) if types else default
    boundary = _boundary(type_params[0]) if types else ""
    return Description(content_type, boundary, tuple(names.found), _disposition(dispositions))


def _content_type(field: str, default: str) -> str:
    matched = _TYPE.match(field)
    if not matched:
        return default
    return f"{matched.group(1)}/{matched.group(2)}".lower()


def _disposition(fields: list[str]) -> str:
    """ "attachment" when any field says so or has a type this reader does not know or cannot
    read (RFC 2183 section 2.8: treat it as attachment); else "inline" when one says so; else
    "". Where clients differ on which copy counts, the cautious reading wins."""
    found = ""
    for field in fields:
        matched = _DISPOSITION.match(field)
        token = matched.group(1).lower() if matched else ""
        if token == "inline":
            found = "inline"
        elif token or field.strip():
            return "attachment"
    return found


def _boundary(params: list[tuple[str, str]]) -> str:
    """The first plain ``boundary`` parameter, else the first RFC 2231 one; trailing white
    space dropped (a delimiter line may carry it, RFC 2046)."""
    for key, value in params:
        if key == "boundary":
            return value.rstrip()
    for key, value in params:
        if key == "boundary*":
            charset, data = _extended(value)
            return _readings(data, charset)[0].rstrip()
    return ""


def _parameters(field: str) -> list[tuple[str, str]]:
    """The field's parameters as a lenient parser reads them: (key, value), every copy, in
    order. Keys are lowercased, white space removed; a quoted value is unquoted (quoted-pairs
    resolved, an unclosed quote runs to the end, text after the closing quote is dropped); an
    unquoted value runs to the next ``;``, stripped."""
    out = []
    length = len(field)
    semicolon = field.find(";")
    position = length if semicolon < 0 else semicolon + 1
    while position < length:
        semicolon = field.find(";", position)
        stop = length if semicolon < 0 else semicolon
        equals = field.find("=", position, stop)
        if equals < 0:  # no value: not a parameter
            position = stop + 1
            continue
        key = "".join(field[position:equals].split()).lower()
        position = equals + 1
        while position < length and field[position] in " \t":
            position += 1
        if position < length and field[position] == '"':
            matched = _QUOTED.match(field, position + 1)
            end = matched.end() if matched else position + 1
            value = _QUOTED_PAIR.sub(r"\1", field[position + 1 : end])
            if end < length:  # the closing quote: skip what follows it, up to the next ";"
                semicolon = field.find(";", end)
                position = length if semicolon < 0 else semicolon + 1
            else:
                position = length
        else:
            value = field[position:stop].strip()
            position = stop + 1
        out.append((key, value))
    return out


class _Names:
    """The names found so far, distinct, in the order found."""

    __slots__ = ("decoded_texts", "found", "seen")

    def __init__(self) -> None:
        self.found: list[str] = []
        self.seen: set[str] = set()
        self.decoded_texts: set[str] = set()  # each text's encoded words are decoded once

    def add(self, name: str) -> None:
        """One decoded name, and the name up to a NUL (where a C string ends)."""
        if not name.strip():
            return
        if name not in self.seen:
            self.seen.add(name)
            self.found.append(name)
        if "\x00" in name:
            self.add(name.split("\x00", 1)[0])

    def decoded(self, text: str) -> None:
        """A name already in characters: with its encoded words decoded, and as it is."""
        if "=?" in text and text not in self.decoded_texts:
            self.decoded_texts.add(text)
            self.add(_decode_words(text, sniff=False))
            self.add(_decode_words(text, sniff=True))
            self.add(_decode_words(text, sniff=False, drop=True))
        self.add(text)

    def raw(self, text: str) -> None:
        """A name as written in the header (latin-1 characters standing for the bytes): as
        UTF-8 (RFC 6532) and, when it is not UTF-8, as latin-1 too."""
        if text.isascii():
            self.decoded(text)
            return
        data = _bytes(text)
        try:
            self.decoded(data.decode("utf-8"))
        except UnicodeDecodeError:
            self.decoded(data.decode("utf-8", "replace"))
            self.decoded(text)

    def encoded(self, data: bytes, charset: str, raw: str) -> None:
        """A name as bytes in a declared charset (RFC 2231), in each reading; also as written
        (``raw``) when the charset is not one Python can decode."""
        declared = _declared(data, charset)
        if declared is not None:
            self.decoded(declared)
        for reading in _sniffed(data):
            self.decoded(reading)
        if charset and declared is None:
            self.raw(raw)

    def parameter(self, params: list[tuple[str, str]], base: str) -> None:
        """The names of parameter ``base`` in one field: RFC 2231 first (extended values,
        then continuations), then the plain copies."""
        sections: dict[int, list[tuple[str, bool]]] = {}
        for key, value in params:
            matched = _PARAMETER.fullmatch(key)
            if not matched or matched.group(1) != base:
                continue
            number, star = matched.group(2), matched.group(3)
            if number is None and star:
                charset, data = _extended(value)
                self.encoded(data, charset, value)
            elif number is not None:
                sections.setdefault(int(number), []).append((value, bool(star)))
        if sections:
            self._continuations(sections)
        for key, value in params:
            if key == base:
                self.raw(value)

    def _continuations(self, sections: dict[int, list[tuple[str, bool]]]) -> None:
        """``name*0``, ``name*1*``...: joined in index order, from the first copies, from the
        last ones, from every copy (in the order written, and sorted as Python's email package
        sorts them), and each also up to the first missing index (where some clients stop)."""
        order = sorted(sections)
        choices = [[sections[number][:1] for number in order]]
        if any(len(copies) > 1 for copies in sections.values()):
            choices.append([sections[number][-1:] for number in order])
            choices.append([sections[number] for number in order])
            choices.append([sorted(sections[number]) for number in order])
        gap = next((i for i, number in enumerate(order) if number != i), len(order))
        if 0 < gap < len(order):
            choices.extend([choice[:gap] for choice in choices])
        for choice in choices:
            charset = ""
            chunks = []
            for position, copies in enumerate(choice):
                for copy, (value, extended) in enumerate(copies):
                    if not extended:
                        chunks.append(_bytes(value))
                    elif position == copy == order[0] == 0:  # the charset is in the first
                        charset, data = _extended(value)
                        chunks.append(data)
                    else:
                        chunks.append(_percent(value))
            raw = "".join(value for copies in choice for value, _ in copies)
            self.encoded(b"".join(chunks), charset, raw)

    def naive(self, field: str) -> None:
        """Each name parameter as a naive reader sees it, anywhere in the field (also inside
        another parameter's quotes): up to the next ``;`` with the quotes dropped, and, for an
        unquoted value, up to the first white space; an RFC 2231 value decoded (its charset
        prefix as text is no name). Each value stops at the next such key, so the work stays
        linear whatever the field holds."""
        keys = list(_KEY.finditer(field))
        for index, key in enumerate(keys):
            stop = keys[index + 1].start() if index + 1 < len(keys) else len(field)
            semicolon = field.find(";", key.end(), stop)
            span = field[key.end() : semicolon if semicolon >= 0 else stop]
            text = span.replace('"', "").strip()
            if key.group(1):
                charset, data = _extended(text)
                self.encoded(data, charset, text)
                continue
            self.raw(text)
            if text and not span.lstrip().startswith('"'):
                self.raw(text.split(None, 1)[0])


def _extended(value: str) -> tuple[str, bytes]:
    """An RFC 2231 extended value (``charset'language'percent-encoded``): charset and bytes.
    Without the two quotes, the whole value is the percent-encoded text."""
    parts = value.split("'", 2)
    if len(parts) == 3:
        return parts[0].strip(), _percent(parts[2])
    return "", _percent(value)


def _percent(text: str) -> bytes:
    """``%XX`` decoded; a ``%`` not followed by two hex digits kept as it is."""
    data = _bytes(text)
    if b"%" not in data:
        return data
    return _PERCENT.sub(lambda matched: bytes((int(matched.group(1), 16),)), data)


def _bytes(text: str) -> bytes:
    """The bytes a latin-1 decoded header text stands for (UTF-8 for text that is not)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _readings(data: bytes, charset: str) -> list[str]:
    """``data`` in ``charset`` (when Python knows it), then the sniffed readings."""
    declared = _declared(data, charset)
    return _sniffed(data) if declared is None else [declared, *_sniffed(data)]


def _declared(data: bytes, charset: str) -> str | None:
    """``data`` in ``charset``, or None when there is none or Python cannot decode it."""
    if not charset:
        return None
    try:
        return data.decode(charset, "replace")
    except Exception:  # LookupError, a NUL in the name, a codec's own error
        return None


def _sniffed(data: bytes) -> list[str]:
    """``data`` as UTF-8, or, when it is not UTF-8, as UTF-8 with replacement characters and
    as latin-1."""
    try:
        return [data.decode("utf-8")]
    except UnicodeDecodeError:
        return [data.decode("utf-8", "replace"), data.decode("latin-1")]


def _decode_words(text: str, *, sniff: bool, drop: bool = False) -> str:
    """``text`` with its RFC 2047 encoded words decoded, wherever they are (inside quotes, not
    separated by white space); white space between two words dropped, the bytes of adjacent
    words in one charset joined before decoding (a character split between words).

    With ``sniff`` false, the declared charset is used, and a word that cannot be decoded
    (invalid base64) stays as written; with ``sniff`` true, bytes that are UTF-8 are read as
    UTF-8 whatever the charset says, and an undecodable word gives its encoded text, as
    Python's email package does; with ``drop``, an undecodable word is left out, as ripmime
    does (``x.exe=?utf-8?B?A?=`` is x.exe). An unknown charset reads as UTF-8, else latin-1.
    """
    last = text.rfind("?=")
    if last < 0:
        return text
    out: list[str] = []
    charset = ""
    chunks: list[bytes] = []

    def flush() -> None:
        if chunks:
            out.append(_word_text(b"".join(chunks), charset, sniff=sniff))
            chunks.clear()

    position = 0
    after_word = False
    for word in _WORD.finditer(text, 0, last + 2):
        between = text[position : word.start()]
        position = word.end()
        if between and not (after_word and between.isspace()):
            flush()
            out.append(between)
        word_charset = word.group(1).split("*", 1)[0].strip()
        payload = word.group(3)
        data = _q(payload) if word.group(2) in "qQ" else _b(payload)
        if data is None:
            flush()
            if not drop:
                out.append(payload if sniff else word.group(0))
            after_word = sniff or drop
            continue
        if word_charset.lower() != charset.lower():
            flush()
            charset = word_charset
        chunks.append(data)
        after_word = True
    flush()
    out.append(text[position:])
    return "".join(out)


def _word_text(data: bytes, charset: str, *, sniff: bool) -> str:
    if sniff:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _readings(data, charset)[0]


def _q(payload: str) -> bytes:
    """RFC 2047 "Q": ``_`` is a space, ``=XX`` a byte; a stray ``=`` stays as it is."""
    data = _bytes(payload).replace(b"_", b" ")
    if b"=" not in data:
        return data
    return _Q_ESCAPE.sub(lambda matched: bytes((int(matched.group(1), 16),)), data)


def _b(payload: str) -> bytes | None:
    """RFC 2047 "B", leniently (missing padding, junk characters), as Python's email package
    decodes it; None when no reading exists (a length of 4n+1 characters)."""
    data = _bytes(payload)
    for attempt in (data + b"=" * (-len(data) % 4), data, data + b"=="):
        try:
            return binascii.a2b_base64(attempt)
        except binascii.Error:
            pass
    return None


def _describe_raw(types: list[str], dispositions: list[str], default: str) -> Description:
    """The last resort, should ``_describe`` ever fail: the type, boundary and each name
    parameter's value as written, so the structure is still walked and the names checked."""
    names: dict[str, None] = {}
    for field in (*dispositions, *types):
        text = str(field)
        keys = list(_KEY.finditer(text))
        for index, key in enumerate(keys):
            stop = keys[index + 1].start() if index + 1 < len(keys) else len(text)
            value = text[key.end() : stop].split(";", 1)[0].replace('"', "").strip()
            if value:
                names[value] = None
    matched = _TYPE.match(str(types[0])) if types else None
    content_type = f"{matched.group(1)}/{matched.group(2)}".lower() if matched else default
    found = _RAW_BOUNDARY.search(str(types[0])) if types else None
    boundary = found.group(1).rstrip() if found else ""
    return Description(content_type, boundary, tuple(names), "attachment" if dispositions else "")
