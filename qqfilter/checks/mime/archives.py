"""Looking inside zip archives: member names and member heads, at a bounded cost.

The archive is decoded from the spool into a file without a name (never into memory), from
whatever transfer encoding it came in (base64, quoted-printable, uuencode, or none), and read
with the stdlib's zipfile from its central directory. Of each member only the first
bytes are decompressed, so a zip bomb costs what its heads cost; a zip inside a zip is opened
only while the depth, member count and expanded-bytes budgets last. What the budgets stop is
reported, so policy can judge it.
"""

import os
import zipfile
from collections.abc import Iterator

from qqfilter.checks.mime.filetypes import ZIP_MAGIC
from qqfilter.checks.mime.walk import HEAD, Part, decoded
from qqfilter.exitcodes import QueueError
from qqfilter.spool import Spool, anonymous_file, write_all


class Member:
    """One file in an archive: its name (with the names of the archives around it) and its
    head (empty for an encrypted member: judged by name only)."""

    __slots__ = ("head", "name")

    def __init__(self, name: str, head: bytes) -> None:
        self.name = name
        self.head = head


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
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        budget.note(f"{outer}: not a readable zip archive")
        return
    with archive:
        for info in archive.infolist():
            if budget.members <= 0:
                budget.note("too many archive members")
                return
            budget.members -= 1
            name = f"{outer}/{info.filename}"
            encrypted = bool(info.flag_bits & 0x1)
            head = b"" if encrypted else _head(archive, info, budget, name)
            yield Member(name, head)
            if head.startswith(ZIP_MAGIC):
                yield from _inner_zip(archive, info, name, depth, budget, directory)


def _head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget, name: str) -> bytes:
    try:
        with archive.open(info) as member:
            head = member.read(HEAD)
    except Exception:  # zipfile raises many kinds on hostile archives; the name still counts
        budget.note(f"{name}: cannot be read")
        return b""
    budget.expanded += len(head)
    return head


def _inner_zip(
    archive, info, name: str, depth: int, budget: Budget, directory: str
) -> Iterator[Member]:
    """A zip inside a zip, expanded into a nameless file (never into memory) within budget."""
    if depth >= budget.depth:
        budget.note(f"{name}: archives nested deeper than {budget.depth}")
        return
    if budget.expanded + info.file_size > budget.max_expanded:
        budget.note(f"{name}: over the expanded-size budget")
        return
    fd = anonymous_file(directory)
    try:
        try:
            with archive.open(info) as member:
                while chunk := member.read(1 << 20):
                    budget.expanded += len(chunk)
                    if budget.expanded > budget.max_expanded:
                        budget.note(f"{name}: over the expanded-size budget")
                        return
                    write_all(fd, chunk, directory)
        except QueueError:
            raise  # the spool directory is full: that is 53, not a note
        except Exception:  # zipfile raises many kinds on hostile archives
            budget.note(f"{name}: cannot be read")
            return
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as stream:
            yield from _walk_zip(stream, name, depth + 1, budget, directory)
    finally:
        os.close(fd)


def _decode_to(spool: Spool, part: Part, fd: int, directory: str) -> None:
    """Write the part's body, decoded from its transfer encoding, to ``fd``, a window at a
    time: what zipfile reads is what the recipient's mail program would save."""
    for data in decoded(spool, part.start, part.end, part.encoding):
        if data:
            write_all(fd, data, directory)
    os.lseek(fd, 0, os.SEEK_SET)
