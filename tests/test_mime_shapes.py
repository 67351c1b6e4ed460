"""Shapes of MIME the walk must read as mail programs read them, in time linear in the size.

Each shape that once let an executable through is a regression test through the real
attachment check (a refusal is 31); the adversarial shapes for time are walked directly,
at 1 MB and at 8 MB, and their CPU time and the bytes they read must grow with the size,
not faster. bench/mime_walk.py prints the same shapes' figures per MB.
"""

import base64
import binascii
import os
import time
from email.parser import BytesParser

import pytest
from clamav import TEXT_PART, forwarded, mime
from conftest import assert_clean_failure, envelope

from qqfilter.checks.mime.walk import WINDOW, Walk
from qqfilter.spool import Spool, anonymous_file, write_all

# The walk is the same code in both modes: the tests marked both_modes also run through
# qqfilter serve (its preloaded libraries, its memory, settings per connection).

ENV = envelope(b"alice@example.com", b"bob@example.org")
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 300
HEAD = b'Subject: test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'


def exe_part(name: bytes = b"report.pdf") -> bytes:
    """A base64 attachment whose content is a Windows executable (refused by content)."""
    return (
        b'Content-Type: application/octet-stream; name="' + name + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PE)
    )


def refused_for_the_executable(out) -> None:
    assert_clean_failure(out, 31)
    assert out.field("reason").endswith("DOS/Windows executable (MZ)"), out.field("reason")


# -- headers of any length ---------------------------------------------------------------


RECEIVED = b"Received: from relay.example.net (HELO relay) (192.0.2.7)\n  by mx with SMTP; date\n"


@pytest.mark.both_modes
def test_a_header_block_longer_than_64_kb_is_read_to_its_end(qq):
    message = RECEIVED * 800 + mime(TEXT_PART, exe_part())
    assert len(RECEIVED * 800) > 65536
    refused_for_the_executable(qq.submit(message, ENV))


def test_a_part_header_block_longer_than_64_kb_is_read_to_its_end(qq):
    out = qq.submit(mime(TEXT_PART, RECEIVED * 800 + exe_part(b"setup.exe")), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "setup.exe": blocked file name')


def test_every_copy_of_content_type_and_disposition_is_kept_in_order():
    data = mime(
        b"Content-Type: application/pdf; name=a.pdf\nX-Other: 1\nContent-Type: text/plain\n"
        b"Content-Disposition: attachment;\n filename=a.pdf\nContent-Disposition: inline;"
        b" filename=b.exe\n\n%PDF-1.4\n"
    )
    (part,) = walk_of(data)
    assert part.types == ("application/pdf; name=a.pdf", "text/plain")
    assert part.dispositions == ("attachment; filename=a.pdf", "inline; filename=b.exe")
    assert (part.content_type, part.disposition, part.name) == (
        "application/pdf",
        "attachment",
        "a.pdf",
    )


def test_kept_header_fields_past_the_limit_make_the_message_uncheckable(qq):
    fields = b"Content-Disposition: attachment; filename=report.pdf\n" * 2000
    out = qq.submit(mime(TEXT_PART, fields + b"\nhello\n"), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith(
        "message structure too complex to check: header fields longer than 65536 bytes at part 2"
    )


# -- delimiters matched exactly; a doubtful close keeps walking ----------------------------


def test_a_close_followed_by_junk_does_not_close(qq):
    message = HEAD + b"--b\n" + TEXT_PART + b"--b--junk\n--b\n" + exe_part() + b"--b--\n"
    refused_for_the_executable(qq.submit(message, ENV))


def test_a_delimiter_followed_by_junk_does_not_split_a_part(qq):
    """``--_._-!`` is no delimiter line: mail programs keep it in the base64 (as junk)."""
    head = HEAD.replace(b'boundary="b"', b'boundary="_._"')
    body = exe_part().replace(b"\n\n", b"\n\n--_._-!\n", 1)
    message = head + b"--_._\n" + TEXT_PART + b"--_._\n" + body + b"--_._--\n"
    out = qq.submit(message, ENV)
    refused_for_the_executable(out)
    assert out.field("detail").startswith("part 2 application/octet-stream base64")


def test_delimiter_lines_after_the_close_still_start_parts(qq):
    message = HEAD + b"--b\n" + TEXT_PART + b"--b--\nepilogue\n--b\n" + exe_part() + b"--b--\n"
    refused_for_the_executable(qq.submit(message, ENV))


def test_a_part_that_only_a_lenient_reader_splits_off_is_looked_at_too(qq):
    """ripmime takes ``--b-x`` for a delimiter of "b" and saves the part after it: the walk
    reads the exact way and that way too."""
    message = HEAD + b"--b\n" + TEXT_PART + b"--b-x\n" + exe_part() + b"--b--\n"
    out = qq.submit(message, ENV)
    refused_for_the_executable(out)
    assert out.field("detail").startswith("part ~1 application/octet-stream base64")


@pytest.mark.parametrize("before", [1, 2, 200])
def test_lenient_lines_in_a_row(before):
    """The part after the last of several lines a lenient reader splits at (the first ones
    start empty parts), in Python and, past COMPILE_AFTER, in the boundary's own pattern."""
    lines = b"--bX\n--b-y\n" * before
    data = HEAD + b"--b\n" + TEXT_PART + lines + exe_part() + b"--b--\n"
    parts = walk_of(data)
    assert [(p.path, p.name, p.head[:2]) for p in parts] == [
        ("1", "", b"Se"),
        ("~1", "report.pdf", b"MZ"),
    ]


def test_a_lenient_reading_costs_nothing_for_clean_mail(qq):
    text = b"Content-Type: text/plain\n\n--bob wrote:\n> hello\n--b-x\n--b--x\n"
    message = HEAD + b"--b\n" + text + b"--b--\n"
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert [p.path for p in walk_of(message)] == ["1", "~1"]


@pytest.mark.parametrize("padding", [b" ", b"\t \t", b" \r"])
def test_transport_padding_after_a_delimiter(qq, padding):
    message = HEAD + b"--b" + padding + b"\n" + TEXT_PART + b"--b" + padding + b"\n"
    message += exe_part() + b"--b--" + padding + b"\n"
    refused_for_the_executable(qq.submit(message, ENV))


# -- mbox From lines, white space, an empty boundary ---------------------------------------

FROM_LINE = b"From alice@example.com Mon Nov 24 10:00:00 2026\n"


@pytest.mark.parametrize(
    "where", ["top of the message", "inside the headers", "top of a forwarded message"]
)
def test_mbox_from_lines_are_skipped(qq, where):
    message = mime(TEXT_PART, exe_part())
    if where == "top of the message":
        message = FROM_LINE + message
    elif where == "inside the headers":
        message = message.replace(b"Subject:", FROM_LINE + b"Subject:", 1)
    else:
        inner = FROM_LINE + mime(exe_part(), boundary=b"=_inner")
        message = mime(TEXT_PART, forwarded(inner))
    refused_for_the_executable(qq.submit(message, ENV))


@pytest.mark.parametrize("where", ["message", "part"])
def test_a_line_of_white_space_before_the_first_header_is_skipped(qq, where):
    if where == "message":
        message = b" \t\n" + mime(TEXT_PART, exe_part())
    else:
        message = mime(TEXT_PART, b"   \n" + exe_part())
    refused_for_the_executable(qq.submit(message, ENV))


def test_an_empty_boundary_is_read_as_the_stdlib_reads_it(qq):
    head = HEAD.replace(b'boundary="b"', b'boundary=""')
    message = head + b"preamble\n--\n" + TEXT_PART + b"--\n" + exe_part() + b"----\n"
    parsed = BytesParser().parsebytes(message)
    assert [p.get_content_type() for p in parsed.walk()][-1] == "application/octet-stream"
    refused_for_the_executable(qq.submit(message, ENV))


def test_an_empty_boundary_with_no_delimiter_is_one_part(qq):
    head = HEAD.replace(b'boundary="b"', b'boundary=""')
    message = head.replace(b"\n\n", b"\nContent-Transfer-Encoding: base64\n\n", 1)
    refused_for_the_executable(qq.submit(message + base64.encodebytes(PE), ENV))


# -- messages and text in base64 or quoted-printable ---------------------------------------


def encoded(data: bytes, ctype: bytes, encoding: bytes) -> bytes:
    body = base64.encodebytes(data) if encoding == b"base64" else binascii.b2a_qp(data)
    return b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: " + encoding + b"\n\n" + body


@pytest.mark.parametrize(
    ("ctype", "encoding"),
    [
        (b"message/rfc822", b"base64"),
        (b"message/rfc822", b"quoted-printable"),
        (b"message/global", b"base64"),
        (b"message/news", b"quoted-printable"),
    ],
)
def test_an_encoded_forwarded_message_is_walked(qq, ctype, encoding):
    inner = mime(TEXT_PART, exe_part(), subject=b"inner", boundary=b"=_inner")
    out = qq.submit(mime(TEXT_PART, encoded(inner, ctype, encoding)), ENV)
    refused_for_the_executable(out)
    assert out.field("detail").startswith("part 2.2 application/octet-stream base64")


@pytest.mark.parametrize("encoding", [b"7bit", b"base64"])
def test_a_forwarded_message_is_judged_by_its_file_name_too(qq, encoding):
    """A mail program may save an attached message as a file, by the name it declares."""
    inner = b"Subject: hi\n\nvar shell = 1;\n"
    fields = b'; name="invoice.js"\nContent-Disposition: attachment; filename="invoice.js"'
    forward = encoded(inner, b"message/rfc822" + fields, encoding)
    out = qq.submit(mime(TEXT_PART, forward), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "invoice.js": blocked file name')
    clean = mime(
        TEXT_PART, encoded(inner, b"message/rfc822" + fields.replace(b".js", b".eml"), encoding)
    )
    assert qq.submit(clean, ENV).returncode == 0


@pytest.mark.both_modes
def test_a_clean_encoded_forward_passes_byte_identical(qq):
    inner = mime(TEXT_PART, subject=b"inner", boundary=b"=_inner")
    message = mime(TEXT_PART, encoded(inner, b"message/rfc822", b"base64"))
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == message


@pytest.mark.both_modes
def test_encoded_messages_count_against_the_depth_and_part_limits(qq):
    inner = mime(*[TEXT_PART] * 10, subject=b"inner", boundary=b"=_inner")
    message = mime(TEXT_PART, encoded(inner, b"message/rfc822", b"base64"))
    out = qq.submit(message, ENV, env={"QQF_MIMEPARTS": "5"})
    assert_clean_failure(out, 31)
    assert out.field("reason") == "message structure too complex to check: more than 5 parts"
    for _ in range(3):
        message = mime(TEXT_PART, encoded(message, b"message/rfc822", b"base64"))
    out = qq.submit(message, ENV, env={"QQF_MIMEDEPTH": "4"})
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith("message structure too complex to check: MIME nesting")
    assert qq.submit(message, ENV).returncode == 0


def uuencoded(data: bytes, name: bytes) -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    return b"See the file below.\nbegin 644 " + name + b"\n" + lines + b"`\nend\n"


def nested(depth: int, inner: bytes) -> bytes:
    for level in range(depth):
        boundary = b"d%d" % level
        inner = (
            b'Content-Type: multipart/mixed; boundary="'
            + boundary
            + b'"\n\n--'
            + boundary
            + b"\n"
            + inner
            + b"\n--"
            + boundary
            + b"--\n"
        )
    return inner


def test_depth_settings_have_a_ceiling(qq):
    """The walk recurses per level, archives nest generators: a depth beyond the ceiling is
    a configuration error (55) before any message is read, never a RecursionError (81)."""
    message = nested(1500, exe_part())
    for variable, value in (("QQF_MIMEDEPTH", "2000"), ("QQF_ARCHIVEDEPTH", "5000")):
        out = qq.submit(message, ENV, env={variable: value})
        assert_clean_failure(out, 55)
        assert "must be from" in out.field("reason")
    out = qq.submit(message, ENV, env={"QQF_MIMEDEPTH": "100"})
    assert_clean_failure(out, 31)
    assert "MIME nesting deeper than 100" in out.field("reason")
    out = qq.submit(nested(99, exe_part()), ENV, env={"QQF_MIMEDEPTH": "100"})
    refused_for_the_executable(out)


@pytest.mark.parametrize("encoding", [b"base64", b"quoted-printable"])
def test_uuencode_inside_an_encoded_text_part(qq, encoding):
    text = encoded(uuencoded(PE, b"notes.txt"), b"text/plain; charset=us-ascii", encoding)
    out = qq.submit(mime(TEXT_PART, text), ENV)
    refused_for_the_executable(out)
    assert out.field("reason").startswith('attachment "notes.txt": ')
    assert out.field("detail").startswith("part 2.uu1 application/octet-stream x-uuencode")


def test_encoded_text_that_only_mentions_begin_passes(qq):
    text = b"Let us begin 644 days from now.\nbegin here\n" * 50
    message = mime(TEXT_PART, encoded(text, b"text/plain", b"base64"))
    assert qq.submit(message, ENV).returncode == 0


# -- what the walk read better than the stdlib stays ---------------------------------------


@pytest.mark.parametrize("shape", ["unquoted Outlook boundary", "space after base64"])
def test_what_the_walk_already_read_better_stays(qq, shape):
    if shape == "unquoted Outlook boundary":
        message = mime(TEXT_PART, exe_part(), boundary=b"----=_NextPart_000_0001_01DA")
        message = message.replace(
            b'"----=_NextPart_000_0001_01DA"', b"----=_NextPart_000_0001_01DA"
        )
    else:
        message = mime(TEXT_PART, exe_part().replace(b"base64\n", b"base64 \n"))
    refused_for_the_executable(qq.submit(message, ENV))


def test_parts_of_an_encoded_message_carry_the_decoded_file():
    inner = mime(TEXT_PART, exe_part(), subject=b"inner", boundary=b"=_inner")
    data = mime(TEXT_PART, encoded(inner, b"message/rfc822", b"base64"))
    spool = spool_of(data)
    try:
        seen = []
        for part in Walk(spool):
            body = part.spool.read(part.start, part.end - part.start)
            seen.append((part.path, part.spool is spool, body[:8]))
        assert seen == [
            ("1", True, b"See the "),
            ("2.1", False, b"See the "),
            ("2.2", False, base64.encodebytes(PE)[:8]),
        ]
    finally:
        spool.close()


# -- linear time -------------------------------------------------------------------------

MB = 1 << 20


def _fill(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def _multipart(*parts: bytes) -> bytes:
    return HEAD + b"".join(b"--b\n" + p + b"\n" for p in parts) + b"--b--\n"


def _nested_base64(size: int) -> bytes:
    message = b"Subject: inner\n\n" + _fill(b"Some text of the innermost message.\n", size // 3)
    for _ in range(3):
        message = _multipart(TEXT_PART, encoded(message, b"message/rfc822", b"base64"))
    return message


SHAPES = {
    "near-miss delimiters": lambda size: _multipart(
        b"Content-Type: text/plain\n\n" + _fill(b"--bX\n--b--x\n--b-x\n--b x\n", size)
    ),
    "near-miss begin lines": lambda size: _multipart(
        b"Content-Type: text/plain\n\n" + _fill(b"begin x\nbegin 64\nbegin 644\n", size)
    ),
    "long body line": lambda size: _multipart(b"Content-Type: text/plain\n\n" + b"a" * size),
    "long header line": lambda size: _multipart(b"X-Long: " + b"a" * size + b"\n\nbody"),
    "100,000 empty parts a MB": lambda size: HEAD + _fill(b"--b      \n", size) + b"--b--\n",
    "base64 with junk": lambda size: _multipart(
        b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
        + _fill(b"Q!U!J!h!\n", size // 2),
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + _fill(b"Q!U!J!h!\n", size // 2),
    ),
    "folded header lines": lambda size: (
        b"Received: from a\n"
        + _fill(b"\tby mx.example.org with SMTP\n", size)
        + b"Content-Type: text/plain\n\nhi\n"
    ),
    "From lines in headers": lambda size: _fill(FROM_LINE + b"X-A: b\n", size) + b"\nhi\n",
    "encoded messages nested": _nested_base64,
    "begin lines in base64 text": lambda size: _multipart(
        encoded(_fill(b"begin x\nbegin 9\n", size * 3 // 4), b"text/plain", b"base64")
    ),
}
"""Adversarial shapes, each built at a given size: bench/mime_walk.py prints their figures."""


class CountingSpool(Spool):
    """A spool that counts the bytes read from it."""

    __slots__ = ("bytes_read",)

    def __init__(self, fd: int, size: int, received: int) -> None:
        super().__init__(fd, size, received)
        self.bytes_read = 0

    def read(self, start: int, length: int) -> bytes:
        data = super().read(start, length)
        self.bytes_read += len(data)
        return data


def spool_of(data: bytes, spool_class: type[Spool] = Spool) -> Spool:
    directory = os.environ.get("TMPDIR", "/tmp")
    fd = anonymous_file(directory)
    write_all(fd, data, directory)
    return spool_class(fd, len(data), len(data))


def walk_of(data: bytes) -> list:
    spool = spool_of(data)
    try:
        return list(Walk(spool))
    finally:
        spool.close()


def walk_cost(data: bytes, runs: int = 1) -> tuple[float, int]:
    """The least CPU time of ``runs`` walks of ``data`` (every part, no limit on their
    number), and the bytes one walk read from the message."""
    spool = spool_of(data, CountingSpool)
    assert isinstance(spool, CountingSpool)
    try:
        best = float("inf")
        for _ in range(runs):
            spool.bytes_read = 0
            started = time.process_time()
            walk = Walk(spool, max_parts=10**9)
            for _part in walk:
                pass
            best = min(best, time.process_time() - started)
            assert not walk.limits
        return best, spool.bytes_read
    finally:
        spool.close()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_walk_takes_time_linear_in_the_size(shape):
    small, large = SHAPES[shape](MB), SHAPES[shape](8 * MB)
    small_time, small_read = walk_cost(small, runs=3)
    large_time, large_read = walk_cost(large, runs=2)
    assert large_time <= 12 * small_time + 0.05, (small_time, large_time)
    for data, read in ((small, small_read), (large, large_read)):
        # the multipart's scan, the lenient reading's (after near misses), the part's own
        assert read <= 4 * len(data) + 2 * WINDOW, (len(data), read)
