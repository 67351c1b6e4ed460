"""Rendering the header fields the checks add, so no input can break or inject one.

Values are built from things a client chose (HELO names, senders, signature names): every
byte that could end a line or confuse a reader is replaced before it is written.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc costs start-up: the type checker alone reads it
    from collections.abc import Iterable

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
