"""Differential test of the MIME walk: qqfilter must see every attachment that Python's email
package or ripmime sees, in every message of tests/mime_corpus.py.

Each message is read three ways, and each reading is a list of leaves (parts with no parts
inside) with their file names and the SHA-256 of their decoded head (the first HEAD bytes,
40 KB, as the walk keeps them):

- qqfilter: the parts ``Walk`` yields; a part's names are ``part.names`` (every name a client
  might give it) or, before that attribute, ``part.name``;
- email: ``email.message_from_bytes(data, policy=email.policy.default)``, the leaves of
  ``walk()``, ``get_filename()`` and ``get_payload(decode=True)``; when the package raises on
  the message, it sees nothing;
- ripmime: the files ``ripmime -i MESSAGE -d DIR`` writes, named as it names them (it also
  saves a named forwarded message whole, under its name, besides the parts inside); a part
  with no name is written as ``NAMELESS<n>`` (``-p``), and the content type ripmime reports
  for it (``-v --verbose-contenttype``) says whether it was body text. A ripmime that runs
  past RIPMIME_TIMEOUT is stopped, and what it wrote counts.

An attachment, in the email and ripmime readings, is a leaf that has a file name, or whose
decoded head is not empty and that is not body text. Body text is a part of type text/plain
or text/html that is not marked ``Content-Disposition: attachment`` (ripmime does not say;
for it the type alone decides), or the preamble and epilogue ripmime writes under the type of
their multipart. That is what a mail client shows as a file to open; body text it shows as the
message, and qqfilter looks at that too (for executable magic numbers).

qqfilter sees an attachment when one of its leaves has the same decoded head (a non-empty
one), or has the attachment's name among its names: the check judges every leaf's head and
every leaf's names, attachment or not.

``python tests/test_differential.py`` prints, for each shape, which reader sees the file
planted in it (the table in docs/attachments.md).
"""

import email
import email.policy
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from mime_corpus import CORPUS, NAMES, PLANTED

from qqfilter.checks.mime.walk import Walk
from qqfilter.spool import Spool, anonymous_file, write_all

HEAD = 40960
"""Decoded bytes compared per leaf: the walk's Part.head."""
RIPMIME = shutil.which("ripmime") or "/usr/bin/ripmime"
RIPMIME_TIMEOUT = 30
NAMELESS = "_qqf_nameless_"
"""ripmime's prefix (-p) for the files of parts with no name."""
BODY_TYPES = ("text/plain", "text/html")
_RIPMIME_LINE = re.compile(r"^Decoding content-type=(.*?) filename=(.*)$", re.MULTILINE)


class Leaf:
    """One leaf of a reading: its names, its decoded head's digest, what it is."""

    __slots__ = ("attachment", "content_type", "digest", "empty", "head", "names")

    def __init__(
        self, names: tuple[str, ...], head: bytes, content_type: str, attachment: bool
    ) -> None:
        self.names = names
        self.head = head[:HEAD]
        self.digest = hashlib.sha256(head[:HEAD]).hexdigest()
        self.empty = not head
        self.content_type = content_type
        self.attachment = attachment

    def __repr__(self) -> str:
        names = ", ".join(self.names) or "(no name)"
        size = "empty" if self.empty else self.digest[:12]
        return f"<{self.content_type or '?'} {names} {size}>"


def is_attachment(names: tuple[str, ...], head: bytes, content_type: str, disposition: str):
    """Named, or content that is not body text: what a client offers as a file."""
    if names:
        return True
    if not head:
        return False
    body = content_type in BODY_TYPES and disposition != "attachment"
    return not (body or content_type.startswith("multipart/"))


class Reading:
    """What one reader made of one message: its leaves, and why it stopped if it did."""

    def __init__(self, reader: str, leaves: list[Leaf], note: str = "") -> None:
        self.reader = reader
        self.leaves = leaves
        self.note = note

    @property
    def attachments(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.attachment]

    def sees(self, other: Leaf) -> bool:
        """Does a leaf of this reading have ``other``'s content or one of its names?"""
        return any(
            (leaf.digest == other.digest and not other.empty) or set(leaf.names) & set(other.names)
            for leaf in self.leaves
        )

    def holding(self, data: bytes) -> list[Leaf]:
        """The leaves whose decoded head holds ``data`` (the table's test: a reader that
        adds a byte to a file still gives the user the file)."""
        return [leaf for leaf in self.leaves if data[:HEAD] in leaf.head]

    def names(self) -> list[str]:
        return [name for leaf in self.leaves for name in leaf.names]

    def __repr__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.reader}{note}: {self.leaves}"


def read_qqfilter(data: bytes, directory: str) -> Reading:
    """The walk's leaves: every part it yields, with all its names."""
    fd = anonymous_file(directory)
    write_all(fd, data, directory)
    spool = Spool(fd, len(data), len(data))
    leaves = []
    try:
        walk = Walk(spool, directory=directory)
        for part in walk:
            names = getattr(part, "names", None) or ((part.name,) if part.name else ())
            attachment = is_attachment(names, part.head, part.content_type, part.disposition)
            leaves.append(Leaf(tuple(names), part.head, part.content_type, attachment))
    finally:
        spool.close()
    return Reading("qqfilter", leaves, "; ".join(walk.limits))


def read_email(data: bytes) -> Reading:
    """The stdlib's leaves; nothing when it raises on the message."""
    leaves = []
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        for part in message.walk():
            if part.is_multipart():
                continue
            name = part.get_filename()
            names = (str(name),) if name else ()
            head = (part.get_payload(decode=True) or b"")[:HEAD]
            disposition = part.get_content_disposition() or ""
            attachment = is_attachment(names, head, part.get_content_type(), disposition)
            leaves.append(Leaf(names, head, part.get_content_type(), attachment))
    except Exception as error:
        return Reading("email", [], f"raised {type(error).__name__}: {error}")
    return Reading("email", leaves)


def read_ripmime(data: bytes, directory: Path) -> Reading:
    """The files ripmime writes (a hung ripmime is stopped; what it wrote still counts)."""
    message = directory / "message.eml"
    message.write_bytes(data)
    out = directory / "ripmime"
    out.mkdir()
    command = [RIPMIME, "-i", str(message), "-d", str(out), "-p", NAMELESS]
    command += ["-v", "--verbose-contenttype", "--timeout", str(RIPMIME_TIMEOUT)]
    note = ""
    try:
        run = subprocess.run(command, capture_output=True, timeout=RIPMIME_TIMEOUT + 10)
        report = run.stdout.decode("utf-8", "replace")
        if run.returncode:
            note = f"exit {run.returncode}"
    except subprocess.TimeoutExpired as stopped:
        report = (stopped.stdout or b"").decode("utf-8", "replace")
        note = "timed out"
    types = {name: ctype.strip().lower() for ctype, name in _RIPMIME_LINE.findall(report)}
    leaves = []
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        with path.open("rb") as file:
            head = file.read(HEAD)
        file_name = path.name
        names = () if file_name.startswith(NAMELESS) else (file_name,)
        ctype = types.get(file_name, "")
        leaves.append(Leaf(names, head, ctype, is_attachment(names, head, ctype, "")))
    return Reading("ripmime", leaves, note)


def readings(data: bytes, directory: Path) -> tuple[Reading, Reading, Reading]:
    return (
        read_qqfilter(data, str(directory)),
        read_email(data),
        read_ripmime(data, directory),
    )


@pytest.mark.parametrize("shape", list(CORPUS))
def test_qqfilter_sees_every_attachment_email_or_ripmime_sees(shape, tmp_path):
    qqfilter, stdlib, ripmime = readings(CORPUS[shape], tmp_path)
    missed = [
        f"{other.reader} sees {leaf!r}"
        for other in (stdlib, ripmime)
        for leaf in other.attachments
        if not qqfilter.sees(leaf)
    ]
    assert not missed, "\n".join([f"qqfilter misses in {shape}:", *missed, repr(qqfilter)])


def planted_table() -> str:
    """Markdown: for each shape, which reader sees the planted file: as an attachment (with
    the names it gives it), only as message text, or only by a name a client may show."""

    def cell(reading: Reading, shape: str) -> str:
        planted = PLANTED.get(shape)
        if planted is None:
            return "-"
        holding = reading.holding(planted)
        files = [leaf for leaf in holding if leaf.attachment]
        if files:
            named = [name for leaf in files for name in leaf.names]
            return "yes" + (f" ({', '.join(named)})" if named else " (no name)")
        if holding:
            return "as body text"
        wanted = set(NAMES.get(shape, ()))
        by_name = [name for name in reading.names() if name in wanted]
        if by_name:
            return f"name only ({', '.join(by_name)})"
        return "no" + (f": {reading.note}" if reading.note else "")

    rows = ["| shape | qqfilter | email | ripmime |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for number, (shape, data) in enumerate(CORPUS.items()):
            directory = Path(scratch) / str(number)
            directory.mkdir()
            try:
                ours = read_qqfilter(data, str(directory))
            except Exception as error:
                ours = Reading("qqfilter", [], f"raised {type(error).__name__}")
            found = (ours, read_email(data), read_ripmime(data, directory))
            rows.append(f"| {shape} | " + " | ".join(cell(r, shape) for r in found) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(planted_table())
