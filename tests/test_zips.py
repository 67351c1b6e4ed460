"""Zip archives read as unzip, 7-Zip and Windows read them, at a bounded cost.

The central directory is walked an entry at a time up to the member budget (a directory of
400,000 entries costs what 1,000 cost), the end record is found from the end (data in front
of a zip does not hide it), and every name a reader may show is judged: the directory's,
Info-ZIP's Unicode path, the local header's. The reader itself is checked against the
stdlib's zipfile on zips hypothesis makes, and must never raise on a broken one.
"""

import base64
import binascii
import io
import struct
import zipfile
import zlib

import pytest
from clamav import TEXT_PART, mime
from conftest import assert_clean_failure, envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter.checks.mime import zipread

# The walk is the same code in both modes: the tests marked both_modes also run through
# qqfilter serve (its preloaded libraries, its memory, settings per connection).

ENV = envelope(b"alice@example.com", b"bob@example.org")
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(range(256)) * 8
MB = 1024


def zip_of(*members: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def attachment(data: bytes, name: bytes, encoding: str = "base64") -> bytes:
    head = b'Content-Type: application/octet-stream; name="' + name + b'"\n'
    if encoding == "base64":
        return head + b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
    if encoding == "quoted-printable":
        body = binascii.b2a_qp(data, quotetabs=True, istext=False)
        return head + b"Content-Transfer-Encoding: quoted-printable\n\n" + body
    assert encoding == "x-uuencode"
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    return head + b"Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n" + lines + b"`\nend\n"


def huge_directory(entries: int, first: str = "readme.txt") -> bytes:
    """One stored local header, and a central directory listing it ``entries`` times (the
    first under the name ``first``): the red team's 400,000-entry zip."""
    data = b"hello\n"
    crc = zlib.crc32(data)
    name = first.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 6, 6, len(name), 0)
    local += name + data
    rows = []
    for i in range(entries):
        entry_name = name if i == 0 else b"f%07d.txt" % i
        rows.append(
            struct.pack(
                "<4s6H3L5H2L",
                *(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 6, 6, len(entry_name), 0, 0, 0, 0, 0, 0),
            )
            + entry_name
        )
    directory = b"".join(rows)
    count = min(entries, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(local), 0)
    return local + directory + end


def test_a_directory_of_400000_entries_costs_what_the_budget_costs(qq):
    bomb = huge_directory(400_000)
    out = qq.submit(mime(TEXT_PART, attachment(bomb, b"files.zip")), ENV, measure=True)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "mime: too many archive members"
    assert out.peak_kib < 64 * MB


def test_the_member_budget_does_not_hide_the_first_members(qq):
    bomb = huge_directory(400_000, first="run.exe")
    out = qq.submit(mime(TEXT_PART, attachment(bomb, b"files.zip")), ENV, measure=True)
    assert_clean_failure(out, 31)
    assert "archive member files.zip/run.exe" in out.field("reason")
    assert out.peak_kib < 64 * MB


def test_a_huge_directory_inside_a_zip_is_bounded_too(qq):
    inner = huge_directory(400_000)
    outer = zip_of(("inner.zip", inner))
    assert len(outer) < 2 << 20  # the red team's 381 KB message: the directory compresses
    out = qq.submit(mime(TEXT_PART, attachment(outer, b"files.zip")), ENV, measure=True)
    assert out.returncode == 0, out.stderr
    assert "too many archive members" in out.field("notes")
    assert out.peak_kib < 64 * MB


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable", "x-uuencode"])
@pytest.mark.parametrize(
    ("front", "name"),
    [
        (PDF, b"report.pdf"),  # a polyglot: a PDF reader and 7-Zip both open it
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 300, b"photo.jpg"),
        (b"#!/bin/sh\nexit 0\n" + b"\0" * 100, b"installer.sh.txt"),
    ],
)
def test_a_zip_with_data_in_front_is_opened(qq, front, name, encoding):
    archive = zip_of(("notes.txt", b"see the tool"), ("tool.exe", b"x"))
    polyglot = front + archive
    out = qq.submit(mime(TEXT_PART, attachment(polyglot, name, encoding)), ENV)
    assert_clean_failure(out, 31)
    assert "archive member" in out.field("reason")
    assert "tool.exe" in out.field("reason")


def test_a_self_extractor_member_inside_a_zip_is_opened(qq):
    inner = PDF + zip_of(("payload.scr", b"x"))
    outer = zip_of(("bundle.zip", inner))
    out = qq.submit(mime(TEXT_PART, attachment(outer, b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "bundle.zip/payload.scr" in out.field("reason")


def test_a_truncated_zip_shows_its_first_members(qq):
    archive = zip_of(("tool.exe", PE), ("notes.txt", b"x" * 5000))
    cut = archive[: archive.index(b"PK\x01\x02")]  # no directory, no end record
    out = qq.submit(mime(TEXT_PART, attachment(cut, b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "files.zip/tool.exe" in out.field("reason")


def _renamed_local(archive: bytes, old: bytes, new: bytes) -> bytes:
    """The archive with ``old`` renamed to ``new`` in its local header only."""
    assert len(old) == len(new)
    at = archive.index(b"PK\x03\x04")
    return archive[:at] + archive[at:].replace(old, new, 1)


@pytest.mark.both_modes
def test_the_local_header_name_is_judged_too(qq):
    archive = _renamed_local(zip_of(("invoice.txt", b"x")), b"invoice.txt", b"invoice.exe")
    with zipfile.ZipFile(io.BytesIO(archive)) as check:
        assert check.namelist() == ["invoice.txt"]  # the directory's name is harmless
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "invoice.exe" in out.field("reason")


def test_the_unicode_path_field_is_judged_too(qq):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("invoice.txt")
        unicode_name = b"invoice.exe"
        field = b"\x01" + struct.pack("<L", zlib.crc32(b"invoice.txt")) + unicode_name
        info.extra = struct.pack("<2H", 0x7075, len(field)) + field
        archive.writestr(info, b"x")
    out = qq.submit(mime(TEXT_PART, attachment(buffer.getvalue(), b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "invoice.exe" in out.field("reason")


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_every_stdlib_compression_is_decompressed(qq, method):
    archive = zip_of(("notes.txt", b"hello"), ("report.pdf", PE), method=method)
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "report.pdf: DOS/Windows executable" in out.field("reason")


def test_a_method_not_read_here_is_noted_and_judged_by_name(qq):
    archive = bytearray(zip_of(("report.pdf", PE), method=zipfile.ZIP_STORED))
    for signature in (b"PK\x03\x04", b"PK\x01\x02"):  # say: implode (PKZIP 1's)
        at = archive.index(signature)
        method_at = at + (8 if signature == b"PK\x03\x04" else 10)
        struct.pack_into("<H", archive, method_at, 6)
    out = qq.submit(mime(TEXT_PART, attachment(bytes(archive), b"files.zip")), ENV)
    assert out.returncode == 0, out.stderr
    assert "compression implode is not read" in out.field("notes")


# The reader on its own: agreement with zipfile, and no exception on a broken zip.

MEMBERS = st.lists(
    st.tuples(
        st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=20),
        st.binary(max_size=300),
        st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda member: member[0],
)


def _zip(members, front: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    buffer.write(front)
    with zipfile.ZipFile(buffer, "a" if front else "w") as archive:
        for name, data, method in members:
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def _read_all(data: bytes, limit: int = 1 << 20) -> list[tuple[str, bytes]]:
    stream = io.BytesIO(data)
    return [
        (entry.names[0], b"".join(zipread.decompressed(stream, entry, limit)))
        for entry in zipread.entries(stream, len(data))
    ]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(MEMBERS, st.binary(max_size=200))
def test_the_reader_agrees_with_zipfile(members, front):
    data = _zip(members, front)
    with zipfile.ZipFile(io.BytesIO(data)) as reference:
        expected = [(info.filename, reference.read(info)) for info in reference.infolist()]
    assert _read_all(data) == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(MEMBERS, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_the_reader_never_raises_on_a_broken_zip(members, damage):
    data = bytearray(_zip(members))
    for at, value in damage:
        data[at % len(data)] = value
    try:
        read = _read_all(bytes(data), limit=4096)
    except (zipread.NotZip, ValueError):
        return
    assert all(len(content) <= 4096 for _, content in read)


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 200), st.integers(0, 50))
def test_the_directory_is_read_as_far_as_asked(entries, wanted):
    data = huge_directory(entries)
    stream = io.BytesIO(data)
    got = []
    for entry in zipread.entries(stream, len(data)):
        if len(got) == wanted:
            break
        got.append(entry)
    assert len(got) == min(entries, wanted)


def test_zip64_end_records_are_read():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # > 65,535 entries: a zip64 end record
        archive.writestr("first.exe", b"x")
        for i in range(70_000):
            archive.writestr(f"{i}", b"")
    data = buffer.getvalue()
    assert b"PK\x06\x06" in data[-200:]
    stream = io.BytesIO(PDF + data)
    first = next(zipread.entries(stream, len(PDF) + len(data)))
    assert first.names == ("first.exe",)
    assert b"".join(zipread.decompressed(stream, first, 10)) == b"x"


def encrypted_zip(*members: tuple[str, bytes]) -> bytes:
    """A zip whose members say they are encrypted (flag bit 0, in the local headers and the
    directory): zipfile cannot write a real one, and the flag is all a reader goes by."""
    archive = bytearray(zip_of(*members, method=zipfile.ZIP_STORED))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = archive.find(signature)
        while at >= 0:
            archive[at + flags_at] |= 1
            at = archive.find(signature, at + 4)
    return bytes(archive)


def test_encrypted_archives_are_judged_by_name_by_default(qq):
    out = qq.submit(mime(TEXT_PART, attachment(encrypted_zip(("a.pdf", PE)), b"f.zip")), ENV)
    assert out.returncode == 0, out.stderr
    out = qq.submit(mime(TEXT_PART, attachment(encrypted_zip(("a.exe", b"x")), b"f.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "a.exe: blocked file name" in out.field("reason")


@pytest.mark.both_modes
def test_encrypted_archives_are_refused_when_so_set(qq):
    message = mime(TEXT_PART, attachment(encrypted_zip(("a.pdf", PE)), b"f.zip"))
    out = qq.submit(message, ENV, env={"QQF_ENCRYPTED": "refuse", "QQF_CODES": "sqmail"})
    assert_clean_failure(out, 34)
    assert out.field("reason") == 'attachment "f.zip": encrypted archive (f.zip/a.pdf)'
    assert out.field("tag") == "Reject::DATA::Encrypted_Archive"
    clean = mime(TEXT_PART, attachment(zip_of(("a.pdf", PDF)), b"f.zip"))
    out = qq.submit(clean, ENV, env={"QQF_ENCRYPTED": "refuse"})
    assert out.returncode == 0, out.stderr


def seven_zip(method: str, *members: tuple[str, bytes]) -> bytes:
    """A zip 7-Zip writes with ``method`` (Deflate64, XZ, PPMd: what zipfile cannot)."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, data in members:
            (root / name).write_bytes(data)
        command = ["7zz", "a", "-tzip", f"-mm={method}", "out.zip", *(n for n, _ in members)]
        subprocess.run(command, cwd=root, check=True, capture_output=True)
        return (root / "out.zip").read_bytes()


@pytest.mark.both_modes
@pytest.mark.parametrize("method", ["Deflate64", "XZ", "PPMd"])
def test_zip_methods_7zip_writes_are_decompressed(qq, method):
    archive = seven_zip(method, ("notes.txt", b"hello world " * 2000), ("report.pdf", PE * 20))
    with zipfile.ZipFile(io.BytesIO(archive)) as check:  # not stored: the method is used
        assert all(info.compress_type > 8 for info in check.infolist())
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.zip")), ENV)
    assert_clean_failure(out, 31)
    assert "report.pdf: DOS/Windows executable" in out.field("reason")


@pytest.mark.both_modes
@pytest.mark.parametrize("method", ["Deflate64", "PPMd"])
def test_a_bomb_in_a_7zip_method_costs_bounded_memory(qq, method):
    zeros = b"\0" * (64 << 20)
    archive = seven_zip(method, ("zeros.bin", zeros), ("inner.zip", zip_of(("a.txt", b"a"))))
    assert len(archive) < 1 << 20
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"bomb.zip")), ENV, measure=True)
    assert out.returncode == 0, out.stderr
    assert out.peak_kib < 64 * MB
