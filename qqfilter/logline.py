"""The one log line per message, on stderr (qmail's run scripts send it to multilog).

Text lines are ``qqfilter: key=value ...`` with the fields in a fixed order; values that need
it are double-quoted, and every byte outside printable ASCII is escaped, so nothing a client
sends can forge a line or a field. ``json`` gives one object a line with the same keys.
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
    "size",
    "ms",
    "ignored",
)
"""Every key a line can carry, in the order text lines show them; empty ones are left out."""


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
