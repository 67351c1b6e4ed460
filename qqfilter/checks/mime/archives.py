"""Looking inside zip archives: member names and member heads, at a bounded cost.

The archive is decoded from the spool into a file without a name (never into memory), from
whatever transfer encoding it came in (base64, quoted-printable, uuencode, or none), and read
an entry at a time by zipread.py from its central directory (found from the end, so data in
front of the zip does not hide it). Of each member only the first bytes are decompressed, so
a zip bomb costs what its heads cost, and the directory is read only as far as the member
budget goes, so a directory of a million entries costs what a thousand cost. A zip inside a
zip is opened only while the depth, member count and expanded-bytes budgets last. What the
budgets stop is reported, so policy can judge it.
"""

import os
import struct
from collections.abc import Iterator

from qqfilter.checks.mime import zipread
from qqfilter.checks.mime.walk import HEAD, Part, decoded
from qqfilter.exitcodes import QueueError
from qqfilter.spool import Spool, anonymous_file, write_all

INNER_NAMES = (".zip", ".jar")
"""Members expanded to be looked into even when they do not start as a zip (a zip with data
in front: a self-extractor or a polyglot under a zip's name)."""


class Member:
    """One file in an archive: every name a reader may show for it (with the names of the
    archives around it; ``name`` first) and its head (empty for an encrypted member or one
    whose compression is not read here: judged by name only)."""

    __slots__ = ("encrypted", "head", "name", "names")

    def __init__(self, names: tuple[str, ...], head: bytes, *, encrypted: bool) -> None:
        self.names = names
        self.name = names[0]
        self.head = head
        self.encrypted = encrypted


class Budget:
    """What one message may spend on archives; ``exceeded`` says what stopped the look."""

    __slots__ = ("depth", "exceeded", "expanded", "max_expanded", "members")

    def __init__(self, *, depth: int, members: int, expanded: int) -> None:
        self.depth = depth
        self.members = members
        self.max_expanded = expanded
        self.expanded = 0
        self.exceeded: list[str] = []

    def note(self, why: str) -> None:
        if why not in self.exceeded:
            self.exceeded.append(why)


def members(spool: Spool, part: Part, directory: str, budget: Budget) -> Iterator[Member]:
    """The members of the zip archive in ``part`` (decoded into a nameless file). The part's
    bytes are read from the file it carries (``part.spool``: the message, or the file the
    walk decoded an encoded message or text into), not from ``spool``, the message."""
    fd = anonymous_file(directory)
    try:
        _decode_to(part.spool, part, fd, directory)
        with os.fdopen(os.dup(fd), "rb") as stream:
            yield from _walk_zip(stream, part.name or "(zip)", 1, budget, directory)
    finally:
        os.close(fd)


def _walk_zip(stream, outer: str, depth: int, budget: Budget, directory: str) -> Iterator[Member]:
    size = os.fstat(stream.fileno()).st_size
    try:
        for entry in zipread.entries(stream, size):
            if budget.members <= 0:
                budget.note("too many archive members")
                return
            budget.members -= 1
            names = tuple(f"{outer}/{name}" for name in entry.names)
            head = b"" if entry.encrypted else _head(stream, entry, budget, names[0])
            yield Member(names, head, encrypted=entry.encrypted)
            if head.startswith(zipread.LOCAL) or (head and names[0].lower().endswith(INNER_NAMES)):
                yield from _inner_zip(stream, entry, names[0], depth, budget, directory)
    except zipread.NotZip:
        budget.note(f"{outer}: not a readable zip archive")
    except (OSError, ValueError, OverflowError, struct.error):  # a directory that lies
        budget.note(f"{outer}: not a readable zip archive")


def _head(stream, entry: zipread.Entry, budget: Budget, name: str) -> bytes:
    try:
        head = b"".join(zipread.decompressed(stream, entry, HEAD))
    except zipread.NotZip:
        budget.note(f"{name}: cannot be read")
        return b""
    except ValueError as exc:  # a method not read here, or data that does not decompress
        budget.note(f"{name}: cannot be read ({exc})")
        return b""
    budget.expanded += len(head)
    return head


def _inner_zip(
    stream, entry: zipread.Entry, name: str, depth: int, budget: Budget, directory: str
) -> Iterator[Member]:
    """A zip inside a zip, expanded into a nameless file (never into memory) within budget."""
    if depth >= budget.depth:
        budget.note(f"{name}: archives nested deeper than {budget.depth}")
        return
    if budget.expanded + entry.size > budget.max_expanded:
        budget.note(f"{name}: over the expanded-size budget")
        return
    fd = anonymous_file(directory)
    try:
        allowed = budget.max_expanded - budget.expanded
        try:
            for chunk in zipread.decompressed(stream, entry, allowed + 1):
                budget.expanded += len(chunk)
                if budget.expanded > budget.max_expanded:
                    budget.note(f"{name}: over the expanded-size budget")
                    return
                write_all(fd, chunk, directory)
        except QueueError:
            raise  # the spool directory is full: that is 53, not a note
        except (zipread.NotZip, ValueError, OSError):
            budget.note(f"{name}: cannot be read")
            return
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as inner:
            yield from _walk_zip(inner, name, depth + 1, budget, directory)
    finally:
        os.close(fd)


def _decode_to(spool: Spool, part: Part, fd: int, directory: str) -> None:
    """Write the part's body, decoded from its transfer encoding, to ``fd``, a window at a
    time: what the zip reader reads is what the recipient's mail program would save."""
    for data in decoded(spool, part.start, part.end, part.encoding):
        if data:
            write_all(fd, data, directory)
    os.lseek(fd, 0, os.SEEK_SET)
