"""Property-based tests of the MIME walk and the attachment check (hypothesis).

Random and mutated MIME goes in; the walk must never raise, must end in bounded time, and
a message it cannot make sense of must still get a verdict from the check, not a crash.
The test command runs a fixed set of cases; a long fuzz run explores new ones:

    QQF_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_mime_properties.py
"""

import base64
import binascii
import os
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qqfilter.checks import mime
from qqfilter.checks.mime.walk import Walk
from qqfilter.envelope import parse
from qqfilter.message import Connection, Message
from qqfilter.settings import Settings
from qqfilter.spool import Spool, anonymous_file, write_all

BOUNDARIES = [b"b1", b"b2", b"=_x", b"b1b1"]
TYPES = [b"text/plain", b"text/html", b"application/octet-stream", b"image/png", b"message/rfc822"]
ENCODINGS = [b"base64", b"quoted-printable", b"7bit", b"x-uuencode", b"b\xffse64", b""]
FROM_LINE = b"From someone@example.com Mon Nov 24 10:00:00 2026\n"
RECEIVED = b"Received: from a (HELO a)\n  by mx with SMTP\n"


BEFORE_HEADERS = [b""] * 4 + [FROM_LINE, b" \t\n", RECEIVED * 2, RECEIVED * 1700]
"""What may come before an entity's fields: mbox From lines, a line of white space before
the first field, a header block longer than 64 KB."""


@st.composite
def header_block(draw, fields: bytes) -> bytes:
    """``fields`` (lines) after one of BEFORE_HEADERS, maybe with a From line among them."""
    lines = fields.splitlines(keepends=True)
    at = draw(st.integers(-len(lines), len(lines)))
    if at >= 0:
        lines.insert(at, FROM_LINE)
    return draw(st.sampled_from(BEFORE_HEADERS)) + b"".join(lines)


@st.composite
def entity(draw, depth: int = 0) -> bytes:
    """A MIME entity, well-formed or not."""
    if depth < 4 and draw(st.booleans()):
        boundary = draw(st.sampled_from(BOUNDARIES))
        children = draw(st.lists(entity(depth + 1), max_size=4))
        delimiter = b"--" + boundary
        near_misses = [delimiter + b"X\n", delimiter + b"--x\n", delimiter + b"-x\n"]
        lines = [delimiter + b"\n"] * 3 + [delimiter + b" \t\n", delimiter + b"\r\n"]
        lines += [junk + delimiter + b"\n" for junk in near_misses]
        body = b"".join(draw(st.sampled_from(lines)) + child + b"\n" for child in children)
        close = draw(
            st.sampled_from([delimiter + b"--\n", b"", delimiter + b"\n", delimiter + b"--junk\n"])
        )
        if draw(st.booleans()):  # parts after the close
            close += b"epilogue\n" + delimiter + b"\n" + draw(entity(4)) + b"\n"  # a leaf
        quoted = draw(st.sampled_from([b'"' + boundary + b'"', b'""', boundary]))
        head = draw(header_block(b"Content-Type: multipart/mixed; boundary=" + quoted + b"\n"))
        return head + b"\n" + body + close
    if depth < 4 and draw(st.integers(0, 5)) == 0:  # a message in base64 or quoted-printable
        inner = draw(entity(depth + 1))
        encoding = draw(st.sampled_from([b"base64", b"quoted-printable"]))
        body = base64.encodebytes(inner) if encoding == b"base64" else binascii.b2a_qp(inner)
        ctype = draw(st.sampled_from([b"message/rfc822", b"message/global", b"message/news"]))
        fields = b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: " + encoding + b"\n"
        return draw(header_block(fields)) + b"\n" + body
    ctype = draw(st.sampled_from(TYPES))
    encoding = draw(st.sampled_from(ENCODINGS))
    name = draw(st.sampled_from([b"", b'; name="a.pdf"', b"; name*=utf-8''%E2%80%AE.exe", b";;="]))
    payload = draw(st.one_of(st.binary(max_size=300), st.sampled_from([UUENCODED])))
    if encoding == b"base64":
        payload = base64.encodebytes(payload)
    elif encoding == b"quoted-printable":
        payload = binascii.b2a_qp(payload)
    fields = b"Content-Type: " + ctype + name + b"\n"
    if encoding:
        fields += b"Content-Transfer-Encoding: " + encoding + b"\n"
    return draw(header_block(fields)) + b"\n" + payload


UUENCODED = b"text\nbegin 644 a.exe\n" + binascii.b2a_uu(b"MZ" + bytes(40)) + b"`\nend\n"


@st.composite
def mutated(draw) -> bytes:
    """An entity, then cut, spliced with junk, or with bytes flipped."""
    data = bytearray(draw(entity()))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["cut", "junk", "flip", "dup"]))
        if action == "cut":
            del data[at:]
        elif action == "junk":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            data[at:at] = data[: draw(st.integers(0, min(at, 200)))]
    return bytes(data)


def spool_of(data: bytes, directory: str) -> Spool:
    fd = anonymous_file(directory)
    write_all(fd, data, directory)
    return Spool(fd, len(data), len(data))


EXAMPLES = int(os.environ.get("QQF_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=EXAMPLES or 300,
    derandomize=not EXAMPLES,  # the test command repeats the same cases; a long run explores
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(st.one_of(mutated(), st.binary(max_size=2000)))
def test_the_walk_never_raises_and_ends_quickly(data):
    directory = os.environ.get("TMPDIR", "/tmp")
    spool = spool_of(data, directory)
    try:
        started = time.monotonic()
        walk = Walk(spool, max_depth=8, max_parts=50)
        parts = list(walk)
        assert time.monotonic() - started < 2
        assert len(parts) <= 50
        for part in parts:  # a part of a decoded message or text is in that file
            assert 0 <= part.start <= part.end <= part.spool.size
            assert part.spool is spool or part.spool.size <= len(data)
            assert isinstance(part.name, str)
    finally:
        spool.close()


@PROPERTY
@given(mutated())
@example(b"Content-Type: text/plain; name*=\x00utf-8''%E2%80%AE.exe\n\n")  # found in CI
@example(b"Content-Transfer-Encoding: base64\n\n/\xb9--b1--\n")  # found by a local run
def test_the_check_always_gives_a_verdict(data):
    directory = os.environ.get("TMPDIR", "/tmp")
    spool = spool_of(data, directory)
    try:
        message = Message(
            spool, parse(b"Fa@example.com\0Tb@example.org\0\0"), Connection("192.0.2.1")
        )
        found = mime.check(message, Settings.defaults())
        assert found is None or found.outcome in ("clean", "refuse")
    finally:
        spool.close()
