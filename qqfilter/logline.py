"""The one log line per message, on stderr (qmail's run scripts send it to multilog).

Text lines are ``qqfilter: key=value ...`` with the fields in a fixed order; values that need
it are double-quoted, and every byte outside printable ASCII is escaped, so nothing a client
sends can forge a line or a field. ``json`` gives one object a line with the same keys.

The resident client imports this module to report its own failures, so it imports nothing
but ``os`` (``json`` only for a JSON line): what the message and its envelope say for the
line (``message_id``, ``recipients``) is read here from bytes, without ``re`` or ``email``.
"""

import os

FIELDS = (
    "pid",
    "verdict",
    "code",
    "check",
    "tag",
    "reason",
    "detail",
    "notes",
    "ip",
    "from",
    "rcpts",
    "to",
    "msgid",
    "size",
    "ms",
    "checkms",
    "quarantine",
    "fallback",
    "ignored",
)
"""Every key a line can carry, in the order text lines show them; empty ones are left out."""

HEAD = 65536
"""Bytes at the start of the message looked through for its Message-ID (the header block, or
as much of it as fits: a field further down is not found, and the line goes without it)."""
MSGID_MAX = 200
"""Bytes of a Message-ID the line shows; a longer one is cut and ends ``...``."""
ADDRESS_MAX = 100
"""Bytes of each recipient address ``to`` shows; a longer one is cut and ends ``...>``."""
RECIPIENTS_SHOWN = 5
"""Recipients ``to`` names; past them it says ``+N more`` (``rcpts`` is the count)."""
FALLBACK = "resident server unreachable, handled in-process"
"""The start of ``fallback``: the resident server could not be used, this process did the
work (``qqfilter stats`` counts the lines that carry the field)."""


def escape(value: str) -> str:
    """``value`` with backslash, quote and every character outside printable ASCII escaped.

    A byte that was not UTF-8 (kept by ``surrogateescape``) shows as ``\\xNN``.
    """
    out = []
    for char in value:
        code = ord(char)
        if char in '\\"':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def address(raw: bytes) -> str:
    """An envelope address for the log: ``<...>``, bytes that are not UTF-8 kept as escapes."""
    return "<" + raw.decode("utf-8", "surrogateescape") + ">"


def recipients(raws: list[bytes]) -> str:
    """The ``to`` field: the first RECIPIENTS_SHOWN envelope recipients, each as ``address``
    gives it (cut at ADDRESS_MAX bytes, ending ``...>``), comma-separated, then ``+N more``
    for the rest."""
    shown = [
        address(raw) if len(raw) <= ADDRESS_MAX else address(raw[:ADDRESS_MAX])[:-1] + "...>"
        for raw in raws[:RECIPIENTS_SHOWN]
    ]
    if len(raws) > RECIPIENTS_SHOWN:
        shown.append(f"+{len(raws) - RECIPIENTS_SHOWN} more")
    return ",".join(shown)


def message_id(head: bytes) -> str:
    """The ``msgid`` field: the value of the first Message-ID field in the header block that
    ``head`` (the message's first bytes) starts with, or "" when there is none.

    The header block ends at the first empty line (or where ``head`` does); a field of that
    name in the body is not one. Folded lines are joined (the line breaks dropped, the white
    space kept), white space around the value is stripped, angle brackets and comments are
    kept, and a value over MSGID_MAX bytes is cut and ends ``...``. Bytes that are not UTF-8
    are kept as escapes: the line's escaping shows them, and nothing in a value can end the
    line or start a field.
    """
    block = b"\n" + head
    ends = [at for at in (block.find(b"\n\n"), block.find(b"\n\r\n")) if at >= 0]
    if ends:
        block = block[: min(ends) + 1]
    lowered = block.lower()
    at = 0
    while True:
        at = lowered.find(b"\nmessage-id", at)
        if at < 0:
            return ""
        at += 11
        while block[at : at + 1] in (b" ", b"\t"):  # "Message-ID :", the obsolete form
            at += 1
        if block[at : at + 1] == b":":
            break
    start = stop = at + 1
    while True:  # the field goes on over lines that start with white space
        stop = block.find(b"\n", stop)
        if stop < 0:
            stop = len(block)
            break
        if block[stop + 1 : stop + 2] not in (b" ", b"\t"):
            break
        stop += 1
    value = block[start:stop].replace(b"\r\n", b"").replace(b"\n", b"").strip()
    cut = len(value) > MSGID_MAX
    text = value[:MSGID_MAX].decode("utf-8", "surrogateescape")
    return text + "..." if cut else text


def format_text(fields: dict[str, object]) -> str:
    """One text line for ``fields``."""
    parts = ["qqfilter:"]
    for key in FIELDS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        text = escape(str(value))
        if not text or any(c in text for c in ' "=\\'):
            text = f'"{text}"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def format_json(fields: dict[str, object]) -> str:
    """One JSON object for ``fields``, ASCII only."""
    import json

    return json.dumps(
        {k: fields[k] for k in FIELDS if fields.get(k) not in (None, "")},
        ensure_ascii=True,
        separators=(",", ":"),
    )


def format_line(fields: dict[str, object], style: str) -> str:
    """The line for ``fields`` in ``style`` ("text" or "json")."""
    return format_json(fields) if style == "json" else format_text(fields)


def write_line(line: str) -> None:
    """Write ``line`` to stderr; a closed or broken stderr loses the line, never the message."""
    data = (line + "\n").encode("ascii", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass
