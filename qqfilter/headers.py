"""The header fields: rendering those the checks add, so no input can break or inject one,
and finding those the message came with, for the edits checks ask for (Finding.edits).

Values are built from things a client chose (HELO names, senders, signature names): every
byte that could end a line or confuse a reader is replaced before it is written.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc costs start-up: the type checker alone reads it
    from collections.abc import Iterable

    from qqfilter.spool import Spool

FOLD_AT = 78


def clean(value: str) -> str:
    """``value`` as printable ASCII on one line: controls and non-ASCII become ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def render(fields: Iterable[tuple[str, str]]) -> bytes:
    """The fields as header lines (LF-terminated, as qmail stores mail), folded at spaces."""
    lines = []
    for name, value in fields:
        lines.append(_fold(f"{clean(name).replace(':', '?')}: {clean(value)}"))
    return "".join(lines).encode("ascii")


def _fold(line: str) -> str:
    """Fold ``line`` at spaces so that lines stay near FOLD_AT columns where possible."""
    out: list[str] = []
    current = ""
    for word in line.split():
        if current and len(current) + 1 + len(word) > FOLD_AT:
            out.append(current)
            current = "\t" + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\n".join(out) + "\n"


MAX_HEADER_BLOCK = 1 << 20
"""Bytes of the message's header block looked through for the fields edits touch."""


def fields(spool: Spool) -> list[tuple[str, int, int, int]]:
    """The message's header fields as (name, start, where the value starts, end): byte
    offsets in the spool, folded lines included, up to the empty line (or MAX_HEADER_BLOCK)."""
    block = spool.read(0, min(spool.size, MAX_HEADER_BLOCK))
    found: list[tuple[str, int, int, int]] = []
    position = 0
    while position < len(block):
        line_end = block.find(b"\n", position)
        line_end = len(block) if line_end < 0 else line_end + 1
        line = block[position:line_end]
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and found:  # a folded line: the field goes on
            name, start, value_at, _ = found[-1]
            found[-1] = (name, start, value_at, line_end)
        else:
            colon = line.find(b":")
            if colon > 0:
                value_at = position + colon + 1
                while value_at < line_end and block[value_at : value_at + 1] in (b" ", b"\t"):
                    value_at += 1
                name = line[:colon].decode("latin-1").strip()
                found.append((name, position, value_at, line_end))
        position = line_end
    return found
