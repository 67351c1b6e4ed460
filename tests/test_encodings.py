"""Zip archives in every transfer encoding, and Windows Registry files in UTF-16.

A zip is opened whatever way it was sent: base64, quoted-printable, uuencode (as a MIME
transfer encoding, or a ``begin 644`` block in a text body, itself plain, base64 or
quoted-printable); what zipfile reads is what the recipient's mail program would save. Every
sample is built here in code. No malware.
"""

import base64
import binascii
import io
import os
import random
import zipfile
from types import SimpleNamespace

import pytest
from clamav import TEXT_PART, mime
from conftest import assert_clean_failure, envelope

# The walk is the same code in both modes: the tests marked both_modes also run through
# qqfilter serve (its preloaded libraries, its memory, settings per connection).

ENV = envelope(b"alice@example.com", b"bob@example.org")
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200


def zip_of(*members: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def quoted_printable(data: bytes) -> bytes:
    """Binary data as a mail program sends it in quoted-printable: every line end encoded."""
    return binascii.b2a_qp(data, quotetabs=True, istext=False)


def uuencoded(data: bytes, name: bytes) -> bytes:
    """A ``begin 644 name`` ... ``end`` block."""
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    return b"begin 644 " + name + b"\n" + lines + b"`\nend\n"


def wrapped(data: bytes, wrapping: str) -> bytes:
    """The MIME part carrying ``data`` (a zip called docs.zip) in ``wrapping``."""
    head = b'Content-Type: application/zip; name="docs.zip"\nContent-Transfer-Encoding: '
    if wrapping == "base64":
        return head + b"base64\n\n" + base64.encodebytes(data)
    if wrapping == "quoted-printable":
        return head + b"quoted-printable\n\n" + quoted_printable(data)
    if wrapping in ("x-uuencode", "uuencode", "x-uue"):
        return head + wrapping.encode() + b"\n\n" + uuencoded(data, b"docs.zip")
    text = b"The files, as you asked.\n\n" + uuencoded(data, b"docs.zip") + b"\nRegards,\nAlice\n"
    if wrapping == "uuencoded in a text body":
        return b"Content-Type: text/plain; charset=us-ascii\n\n" + text
    if wrapping == "uuencoded in a base64 text body":
        encoded = b"base64\n\n" + base64.encodebytes(text)
    else:
        assert wrapping == "uuencoded in a quoted-printable text body"
        encoded = b"quoted-printable\n\n" + binascii.b2a_qp(text)
    return b"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: " + encoded


WRAPPINGS = [
    "base64",
    "quoted-printable",
    "x-uuencode",
    "uuencode",
    "x-uue",
    "uuencoded in a text body",
    "uuencoded in a base64 text body",
    "uuencoded in a quoted-printable text body",
]


@pytest.mark.both_modes
@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_an_executable_in_a_zip_is_refused_in_every_transfer_encoding(qq, wrapping):
    archive = zip_of(("report.pdf", b"%PDF-1.4\n"), ("setup.exe", PE))
    out = qq.submit(mime(TEXT_PART, wrapped(archive, wrapping)), ENV)
    assert_clean_failure(out, 31)
    assert out.field("check") == "mime"
    assert out.field("reason") == (
        'attachment "docs.zip": archive member docs.zip/setup.exe: blocked file name extension .exe'
    )


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_executable_content_under_a_harmless_member_name_is_refused(qq, wrapping):
    archive = zip_of(("invoice.pdf", PE))
    out = qq.submit(mime(TEXT_PART, wrapped(archive, wrapping)), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason") == (
        'attachment "docs.zip": archive member docs.zip/invoice.pdf: DOS/Windows executable (MZ)'
    )


@pytest.mark.parametrize("wrapping", ["quoted-printable", "x-uuencode", "uuencoded in a text body"])
def test_a_zip_larger_than_a_decoding_window_is_read_to_its_central_directory(qq, wrapping):
    """The member to find comes after a megabyte and a half of incompressible data: the zip
    is decoded in windows, and the central directory at its end must come out whole."""
    noise = random.Random(7).randbytes(1_500_000)
    archive = zip_of(("photos.raw", noise), ("run.exe", PE), method=zipfile.ZIP_STORED)
    out = qq.submit(mime(TEXT_PART, wrapped(archive, wrapping)), ENV)
    assert_clean_failure(out, 31)
    assert "archive member docs.zip/run.exe" in out.field("reason")


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_a_zip_of_documents_passes_in_every_transfer_encoding(qq, wrapping):
    archive = zip_of(("report.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 8), ("notes.txt", b"hi"))
    message = mime(TEXT_PART, wrapped(archive, wrapping))
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == message


def _spool_of(tmp_path, data: bytes):
    from qqfilter.spool import Spool

    path = tmp_path / "spool-file"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return Spool(fd, len(data), len(data))


@pytest.mark.parametrize("window", [1, 2, 3, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize("encoding", ["base64", "quoted-printable", "x-uuencode"])
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_decoding_in_windows_gives_the_bytes_whatever_the_window(
    tmp_path, monkeypatch, window, encoding, line_end
):
    """Every window size, down to one byte, cuts a quantum, an escape or a line somewhere."""
    from qqfilter.checks.mime import archives, walk

    data = random.Random(window).randbytes(5000) + b"\r\n\n=\r\n" + bytes(range(256))
    if encoding == "base64":
        body = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        body = quoted_printable(data)
    else:
        body = uuencoded(data, b"x.bin") + b"trailing text that is not data\n"
    body = body.replace(b"\n", line_end)
    spool = _spool_of(tmp_path, b"headers\n\n" + body)
    part = SimpleNamespace(spool=spool, encoding=encoding, start=9, end=9 + len(body))
    monkeypatch.setattr(walk, "WINDOW", window)  # the one decoder's window (walk.decoded)
    fd = archives.decode_part(part, str(tmp_path))
    try:
        assert os.read(fd, len(data) + 10) == data
    finally:
        os.close(fd)
        spool.close()


REG_TEXT = (
    "Windows Registry Editor Version 5.00\r\n\r\n"
    "[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Run]\r\n"
    '"Updater"="C:\\\\Users\\\\Public\\\\updater.cmd"\r\n'
)
REG_FORMS = {
    "UTF-16LE with BOM (regedit's own)": b"\xff\xfe" + REG_TEXT.encode("utf-16-le"),
    "UTF-16BE with BOM": b"\xfe\xff" + REG_TEXT.encode("utf-16-be"),
    "UTF-16LE without BOM": REG_TEXT.encode("utf-16-le"),
    "UTF-8 with BOM": b"\xef\xbb\xbf" + REG_TEXT.encode(),
    "plain text": REG_TEXT.encode(),
    "REGEDIT4": b"REGEDIT4\r\n\r\n[HKEY_CURRENT_USER\\Software\\X]\r\n",
}


@pytest.mark.both_modes
@pytest.mark.parametrize("form", list(REG_FORMS))
def test_a_registry_file_under_a_harmless_name_is_refused(qq, form):
    part = (
        b'Content-Type: text/plain; name="notes.txt"\n'
        b'Content-Disposition: attachment; filename="notes.txt"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(REG_FORMS[form])
    )
    out = qq.submit(mime(TEXT_PART, part), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "notes.txt": Windows Registry ')
    assert out.field("detail").endswith(": script")


def test_utf16_text_that_is_not_a_registry_file_passes(qq):
    text = "Notes for the meeting: the Windows registry editor is not needed.\r\n"
    for data in (b"\xff\xfe" + text.encode("utf-16-le"), b"\xfe\xff" + text.encode("utf-16-be")):
        part = (
            b'Content-Type: text/plain; charset=utf-16; name="notes.txt"\n'
            b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
        )
        out = qq.submit(mime(TEXT_PART, part), ENV)
        assert out.returncode == 0, out.stderr
