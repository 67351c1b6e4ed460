"""s/qmail's WarLord tests on base64 bodies: BADMIMETYPE and BADLOADERTYPE.

BADMIMETYPE looks up the first 9 base64 characters of each base64 part in
control/badmimetypes (``TVqQAAMAA`` is how an MZ executable starts in base64); with ``!`` it
also refuses base64 with white space inside a line. BADLOADERTYPE=<char> looks, in every line
of every base64 part, at the 5 characters starting at each <char>, and refuses when they are
in control/badloadertypes (base64 fragments of loader strings such as "32.dll" at the three
byte alignments). A value of ``-`` turns a test off; ``+`` turns it off for RELAYCLIENT.
"""

import re

from qqfilter.checks.mime.walk import Part
from qqfilter.spool import Spool

SIGNATURE = 9
FRAGMENT = 5
_WHITE_INSIDE = re.compile(rb"[ \t][A-Za-z0-9+/=]")


class Rules:
    """The WarLord settings of one connection, with the control files' entries."""

    __slots__ = ("loader_char", "loader_pattern", "mime_types", "white_space")

    def __init__(
        self,
        mime_types: frozenset[bytes],
        white_space: bool,
        loader_char: bytes,
        loader_fragments: frozenset[bytes],
    ) -> None:
        self.mime_types = mime_types
        self.white_space = white_space
        self.loader_char = loader_char
        fragments = sorted(f for f in loader_fragments if f[:1] == loader_char)
        self.loader_pattern = (
            re.compile(b"|".join(re.escape(f) for f in fragments)) if fragments else None
        )

    def bad_mime(self, spool: Spool, part: Part) -> str:
        """Why the base64 ``part`` fails BADMIMETYPE ("" if it does not)."""
        if part.encoding != "base64":
            return ""
        if self.mime_types:
            first = spool.read(part.start, 256).lstrip()[:SIGNATURE]
            if first in self.mime_types:
                return f"banned base64 signature {first.decode('ascii', 'replace')}"
        if self.white_space and spool.search(_WHITE_INSIDE, part.start, part.end, 2):
            return "white space inside base64"
        return ""

    def bad_loader(self, spool: Spool, part: Part) -> str:
        """Why the base64 ``part`` fails BADLOADERTYPE ("" if not): a scan of its body."""
        if part.encoding != "base64" or self.loader_pattern is None:
            return ""
        found = spool.search(self.loader_pattern, part.start, part.end, FRAGMENT)
        return f"banned loader fragment {found.decode('ascii', 'replace')}" if found else ""


def parse_badmimetype(value: str, relayclient: bool) -> tuple[bool, bool]:
    """(on, white_space) for a BADMIMETYPE value on this connection."""
    if not value or "-" in value or ("+" in value and relayclient):
        return False, False
    return True, "!" in value


def parse_badloadertype(value: str, relayclient: bool) -> bytes:
    """The loader character for a BADLOADERTYPE value on this connection (b"" = off)."""
    char = value.replace("+", "")[:1]
    if not value or value == "-" or ("+" in value and relayclient):
        return b""
    return (char or "M").encode("latin-1", "replace")


def entries(lines: list[str] | None, length: int) -> frozenset[bytes]:
    """Control-file lines cut to ``length`` characters (the first word of each line)."""
    found = set()
    for line in lines or ():
        words = line.split()
        if words and len(words[0]) >= length:
            found.add(words[0][:length].encode("ascii", "replace"))
    return frozenset(found)


def unused(
    variable: str, name: str, lines: list[str] | None, length: int, char: bytes = b""
) -> str:
    """The log note for a test that ``variable`` turns on and that has nothing to look for:
    control/``name`` is missing (``lines`` None), or holds no entry of ``length`` characters
    (starting with the loader character ``char``, when one is given)."""
    if lines is None:
        why = "is missing"
    else:
        why = f"has no entry of {length} characters or more"
        if char:
            why += f" starting with {char.decode('latin-1')}"
    return f"warlord: {variable} set but control/{name} {why}"
