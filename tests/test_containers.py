"""Archives and other containers besides zip: 7z, rar, cab, arj, lha, tar (and compressed),
gzip/bzip2/xz/zstd files, cpio, ISO 9660 and UDF, TNEF (winmail.dat) and BinHex.

Every container is made here, from files made here: with the real tools where Debian has
them (7zz, gcab, arj, bsdtar, genisoimage, gzip, bzip2, xz, zstd), and with small writers
below for what Debian cannot write (RAR 4 and 5, LHA, cpio's crc and big-endian forms, TNEF,
BinHex). For each format: an executable under a harmless name is refused (in base64, nested
in a zip and in another format), a clean one passes byte for byte; a bomb per family keeps
memory and time bounded.
"""

import base64
import binascii
import functools
import gzip
import io
import struct
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from clamav import TEXT_PART, mime
from conftest import assert_clean_failure, envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The walk is the same code in both modes: the tests marked both_modes also run through
# qqfilter serve (its preloaded libraries, its memory, settings per connection).

ENV = envelope(b"alice@example.com", b"bob@example.org")
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200
ELF = Path("/bin/true").read_bytes()[:4096]
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(range(256)) * 8
TEXT = b"The minutes of the meeting.\n" * 20
MB = 1024  # peak RSS is in KiB
NO_DISKIMAGE = {"QQF_BLOCKKINDS": "windows,elf,macho,shortcut,script,java"}
"""An ISO or UDF image is refused as a disk image by default: to see its members judged."""

Members = tuple[tuple[str, bytes], ...]


# Writers: real tools in a scratch directory.


def _tool(members: Members, *command: str, output: str = "out") -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, data in members:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        names = [name for name, _ in members]
        args = [part if part != "{names}" else "\0" for part in command]
        at = args.index("\0") if "\0" in args else len(args)
        args[at : at + 1] = names
        subprocess.run(args, cwd=root, check=True, capture_output=True)
        return (root / output).read_bytes()


def seven_zip(members: Members) -> bytes:
    return _tool(members, "7zz", "a", "-bd", "out.7z", "{names}", output="out.7z")


def cab(members: Members) -> bytes:
    return _tool(members, "gcab", "-c", "-z", "out", "{names}")


def arj(members: Members, method: str = "-m0") -> bytes:
    return _tool(members, "arj", "a", "-y", method, "out.arj", "{names}", output="out.arj")


def bsdtar(*options: str):
    def write(members: Members) -> bytes:
        return _tool(members, "bsdtar", *options, "-cf", "out", "{names}")

    return write


def compressor(*command: str, suffix: str):
    """gzip -N and friends on a single member: the file it writes beside the input."""

    def write(members: Members) -> bytes:
        ((name, _),) = members
        return _tool(members, *command, output=name + suffix)

    return write


def iso(*options: str):
    def write(members: Members) -> bytes:
        with tempfile.TemporaryDirectory() as scratch:
            tree = Path(scratch, "tree")
            tree.mkdir()
            for name, data in members:
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                (tree / name).write_bytes(data)
            out = Path(scratch, "out.iso")
            subprocess.run(
                ["genisoimage", "-quiet", *options, "-o", str(out), str(tree)],
                check=True,
                capture_output=True,
            )
            return out.read_bytes()

    return write


# Writers for what Debian cannot write.


def rar4(members: Members) -> bytes:
    """A RAR 4 archive of stored members (method 0x30), as WinRAR writes one with -m0."""

    def block(kind: int, flags: int, body: bytes) -> bytes:
        rest = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, b"\0" * 6)
    for name, data in members:
        raw = name.encode()
        header = struct.pack(
            "<LLBLLBBHL", len(data), len(data), 2, zlib.crc32(data), 0, 20, 0x30, len(raw), 0x20
        )
        out += block(0x74, 0x8000, header + raw) + data
    return out + block(0x7B, 0x4000, b"")


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def rar5(members: Members) -> bytes:
    """A RAR 5 archive of stored members."""

    def block(fields: bytes) -> bytes:
        sized = _vint(len(fields)) + fields
        return struct.pack("<L", zlib.crc32(sized)) + sized

    out = b"Rar!\x1a\x07\x01\x00" + block(_vint(1) + _vint(0) + _vint(0))
    for name, data in members:
        raw = name.encode()
        fields = _vint(2) + _vint(2) + _vint(len(data))  # file header, with a data area
        fields += _vint(0x04) + _vint(len(data)) + _vint(0x20)  # flags: CRC; size; attributes
        fields += struct.pack("<L", zlib.crc32(data)) + _vint(0) + _vint(0)  # stored, Windows
        fields += _vint(len(raw)) + raw
        out += block(fields) + data
    return out + block(_vint(5) + _vint(0) + _vint(0))


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def lha(members: Members) -> bytes:
    """An LHA archive of -lh0- (stored) members with level 0 headers."""
    out = b""
    for name, data in members:
        raw = name.encode()
        fields = b"-lh0-" + struct.pack(
            "<LLLBBB", len(data), len(data), 0x5A000000, 0x20, 0, len(raw)
        )
        fields += raw + struct.pack("<H", _crc16(data))
        out += bytes((len(fields), sum(fields) & 0xFF)) + fields + data
    return out + b"\0"


def cpio_crc(members: Members) -> bytes:
    """SVR4 cpio with checksums (070702), as GNU cpio -H crc writes it."""
    out = b""
    for number, (name, data) in enumerate((*members, ("TRAILER!!!", b"")), 1):
        raw = name.encode() + b"\0"
        mode = 0o100644 if data or name != "TRAILER!!!" else 0
        fields = (number, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), sum(data))
        header = b"070702" + b"".join(b"%08X" % field for field in fields) + raw
        out += header + b"\0" * (-len(header) % 4) + data + b"\0" * (-len(data) % 4)
    return out + b"\0" * (-len(out) % 512)


def cpio_binary(order: str):
    """Old binary cpio (octal 070707 as a 16-bit word) in either byte order."""

    def write(members: Members) -> bytes:
        out = b""
        for name, data in (*members, ("TRAILER!!!", b"")):
            raw = name.encode() + b"\0"
            size = len(data)
            header = struct.pack(
                order + "13H",
                *(0o070707, 0, 1, 0o100644, 0, 0, 1, 0, 0, 0, len(raw), size >> 16, size & 0xFFFF),
            )
            out += header + raw + b"\0" * (len(raw) % 2) + data + b"\0" * (size % 2)
        return out

    return write


def _tnef_object(level: int, name: int, kind: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHL", level, name, kind, len(data)) + data + struct.pack("<H", checksum)


def _mapi_string(tag: int, text: str) -> bytes:
    raw = text.encode("cp1252") + b"\0"
    return struct.pack("<HHLL", 0x001E, tag, 1, len(raw)) + raw + b"\0" * (-len(raw) % 4)


def tnef(members: Members, embedded: bytes = b"") -> bytes:
    """winmail.dat: each member an attachment with an 8.3 title, its data and its long name
    (PR_ATTACH_LONG_FILENAME); ``embedded``, a TNEF stream, as an attached message."""
    out = b"\x78\x9f\x3e\x22\x01\x00"
    out += _tnef_object(1, 0x9006, 0x0008, b"\x00\x00\x01\x00")  # attTnefVersion
    out += _tnef_object(1, 0x9007, 0x0006, struct.pack("<LL", 1252, 0))  # attOemCodepage
    for name, data in members:
        out += _tnef_object(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff" + b"\0" * 8)
        out += _tnef_object(2, 0x8010, 0x0001, name.upper()[:12].encode() + b"\0")
        out += _tnef_object(2, 0x800F, 0x0006, data)
        properties = struct.pack("<L", 1) + _mapi_string(0x3707, name)
        out += _tnef_object(2, 0x9005, 0x0006, properties)
    if embedded:
        iid = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
        value = iid + embedded
        data_object = struct.pack("<HHLL", 0x000D, 0x3701, 1, len(value)) + value
        data_object += b"\0" * (-len(value) % 4)
        properties = struct.pack("<L", 2) + _mapi_string(0x3001, "Forwarded message") + data_object
        out += _tnef_object(2, 0x9002, 0x0006, b"\x05\x00\xff\xff\xff\xff" + b"\0" * 8)
        out += _tnef_object(2, 0x9005, 0x0006, properties)
    return out


def udf_only(members: Members) -> bytes:
    """A UDF-only image: a bridge image whose ISO 9660 descriptors (the sectors from 16 on
    whose bytes 1-5 are CD001, the terminator too) are zeroed, so only the UDF tree is left."""
    image = bytearray(iso("-udf")(members))
    sector = 16
    while image[sector * 2048 + 1 : sector * 2048 + 6] == b"CD001":
        image[sector * 2048 : (sector + 1) * 2048] = bytes(2048)
        sector += 1
    return bytes(image)


def _udf_retag(image: bytearray, at: int) -> None:
    """The descriptor tag at ``at`` made valid again: its CRC, then its checksum."""
    (crc_length,) = struct.unpack_from("<H", image, at + 10)
    crc = binascii.crc_hqx(bytes(image[at + 16 : at + 16 + crc_length]), 0)
    struct.pack_into("<H", image, at + 8, crc)
    image[at + 4] = (sum(image[at : at + 4]) + sum(image[at + 5 : at + 16])) & 0xFF


def _udf_tags(image: bytes, identifier: int):
    """Where the descriptors of ``identifier`` are (4-byte aligned, as FIDs are)."""
    mark = struct.pack("<H", identifier)
    at = image.find(mark)
    while at >= 0:
        checksum = (sum(image[at : at + 4]) + sum(image[at + 5 : at + 16])) & 0xFF
        if at % 4 == 0 and len(image) - at >= 16 and checksum == image[at + 4]:
            yield at
        at = image.find(mark, at + 1)


def _udf_identifier(image: bytes, name: str) -> int:
    """Where the File Identifier Descriptor naming ``name`` starts."""
    for at in _udf_tags(image, 257):
        use, length = struct.unpack_from("<H", image, at + 36)[0], image[at + 19]
        if image[at + 38 + use : at + 38 + use + length] == b"\x08" + name.encode():
            return at
    raise AssertionError(f"no UDF identifier {name}")


_HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_FROM_BASE64 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", _HQX
)


def _rle(data: bytes) -> bytes:
    out = bytearray()
    at = 0
    while at < len(data):
        byte = data[at]
        run = 1
        while at + run < len(data) and data[at + run] == byte and run < 255:
            run += 1
        literal = b"\x90\x00" if byte == 0x90 else bytes((byte,))
        if run >= 3:
            out += literal + b"\x90" + bytes((run,))
        else:
            out += literal * run
        at += run
    return bytes(out)


def binhex(members: Members, resource: bytes = b"") -> bytes:
    """BinHex 4.0 of one file: its data fork (and a resource fork), with their CRCs."""
    ((name, data),) = members

    def crc(block: bytes) -> bytes:
        return struct.pack(">H", binascii.crc_hqx(block + b"\0\0", 0))

    raw = name.encode("mac-roman")
    header = bytes((len(raw),)) + raw + b"\0" + b"TEXTMSWD" + b"\0\0"
    header += struct.pack(">LL", len(data), len(resource))
    stream = header + crc(header) + data + crc(data) + resource + crc(resource)
    text = base64.b64encode(_rle(stream)).rstrip(b"=").translate(_FROM_BASE64)
    lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return b"(This file must be converted with BinHex 4.0)\n\n:" + lines + b":\n"


FORMATS = {
    "7z": seven_zip,
    "rar4": rar4,
    "rar5": rar5,
    "cab": cab,
    "arj": arj,
    "lha": lha,
    "tar": bsdtar(),
    "tar.gz": bsdtar("-z"),
    "tar.bz2": bsdtar("-j"),
    "tar.xz": bsdtar("-J"),
    "tar.zst": bsdtar("--zstd"),
    "cpio-odc": bsdtar("--format", "odc"),
    "cpio-newc": bsdtar("--format", "newc"),
    "cpio-crc": cpio_crc,
    "cpio-bin-le": cpio_binary("<"),
    "cpio-bin-be": cpio_binary(">"),
    "iso9660": iso("-J", "-R"),
    "udf": iso("-udf", "-J"),  # a UDF bridge image: its UDF tree is read (udf.py)
    "udf-only": udf_only,
    "tnef": tnef,
    "binhex": binhex,
}
SINGLE = {
    "gz": compressor("gzip", "-N", "-k", suffix=".gz"),
    "bz2": compressor("bzip2", "-k", suffix=".bz2"),
    "xz": compressor("xz", "-k", suffix=".xz"),
    "zst": compressor("zstd", "-q", "-k", suffix=".zst"),
}
ONE_MEMBER = ("binhex",)  # a BinHex file is one file (and a resource fork)


@functools.cache
def made(fmt: str, members: Members) -> bytes:
    if fmt in SINGLE:
        return SINGLE[fmt](members[:1])
    if fmt in ONE_MEMBER:
        return FORMATS[fmt](members[:1])
    return FORMATS[fmt](members)


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def attachment(data: bytes, name: bytes, encoding: str = "base64") -> bytes:
    head = b'Content-Type: application/octet-stream; name="' + name + b'"\n'
    if encoding == "base64":
        return head + b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
    assert encoding == "quoted-printable"
    body = binascii.b2a_qp(data, quotetabs=True, istext=False)
    return head + b"Content-Transfer-Encoding: quoted-printable\n\n" + body


def _env(fmt: str) -> dict[str, str] | None:
    return NO_DISKIMAGE if fmt in ("iso9660", "udf", "udf-only") else None


def _member(fmt: str, name: str = "report.pdf") -> str:
    """The name the format shows for the member ``name`` (ISO 9660 keeps Joliet's)."""
    if fmt in ("bz2", "xz", "zst"):
        return "(data)"  # these streams hold no file name
    return name


EVERY = [*FORMATS, *SINGLE]


@pytest.mark.both_modes
@pytest.mark.parametrize("fmt", EVERY)
@pytest.mark.one_shot  # the format matrix: the same readers in both modes
def test_an_executable_under_a_harmless_name_is_refused(qq, fmt):
    archive = made(fmt, (("report.pdf", PE), ("notes.txt", TEXT)))
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.dat")), ENV, env=_env(fmt))
    assert_clean_failure(out, 31)
    reason = out.field("reason")
    assert f"archive member files.dat/{_member(fmt)}: DOS/Windows executable" in reason


@pytest.mark.parametrize("fmt", EVERY)
@pytest.mark.one_shot  # the format matrix: the same readers in both modes
def test_a_clean_container_passes_byte_for_byte(qq, fmt):
    archive = made(fmt, (("report.pdf", PDF), ("notes.txt", TEXT)))
    message = mime(TEXT_PART, attachment(archive, b"files.dat"))
    out = qq.submit(message, ENV, env=_env(fmt))
    assert out.returncode == 0, out.stderr
    assert out.message.endswith(message)
    assert out.field("notes") is None  # read whole: nothing stopped, nothing unread


@pytest.mark.one_shot  # the same reading as above, resident or not
@pytest.mark.parametrize("fmt", EVERY)
def test_an_executable_in_a_container_in_a_zip_is_refused(qq, fmt):
    inner = made(fmt, (("report.pdf", ELF),))
    outer = zip_of(("readme.txt", TEXT), ("inner.bin", inner))
    out = qq.submit(mime(TEXT_PART, attachment(outer, b"files.zip")), ENV, env=_env(fmt))
    assert_clean_failure(out, 31)
    assert f"files.zip/inner.bin/{_member(fmt)}: ELF executable" in out.field("reason")


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("7z", "rar5"),
        ("rar4", "tnef"),
        ("tar.gz", "7z"),
        ("cab", "lha"),
        ("tnef", "tar.xz"),
        ("binhex", "cab"),
        ("cpio-newc", "binhex"),
        ("lha", "cpio-bin-be"),
        ("arj", "gz"),
        ("iso9660", "rar4"),
    ],
)
@pytest.mark.one_shot  # the format matrix: the same readers in both modes
def test_an_executable_two_formats_deep_is_refused(qq, outer, inner):
    nested = made(inner, (("report.pdf", PE),))
    archive = made(outer, (("inner.bin", nested),))
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.dat")), ENV, env=_env(outer))
    assert_clean_failure(out, 31)
    assert f"files.dat/inner.bin/{_member(inner)}: DOS/Windows executable" in out.field("reason")


@pytest.mark.one_shot  # the decoding is the walk's, the same in both modes
@pytest.mark.parametrize("fmt", EVERY)
def test_a_container_in_quoted_printable_is_opened(qq, fmt):
    archive = made(fmt, (("report.pdf", PE),))
    message = mime(TEXT_PART, attachment(archive, b"files.dat", "quoted-printable"))
    out = qq.submit(message, ENV, env=_env(fmt))
    assert_clean_failure(out, 31)
    assert f"files.dat/{_member(fmt)}: DOS/Windows executable" in out.field("reason")


def test_a_blocked_name_inside_is_refused_by_name(qq):
    archive = made("rar5", (("setup.exe", TEXT),))
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.rar")), ENV)
    assert_clean_failure(out, 31)
    assert "files.rar/setup.exe: blocked file name extension .exe" in out.field("reason")


@pytest.mark.both_modes
def test_every_tnef_name_is_judged(qq):
    """Outlook shows the long name (MAPI), a TNEF decoder may use the 8.3 title."""
    archive = tnef((("notes.txt", TEXT),)).replace(b"NOTES.TXT", b"NOTES.EXE")
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"winmail.dat")), ENV)
    assert_clean_failure(out, 31)
    assert "winmail.dat/NOTES.EXE: blocked file name extension .exe" in out.field("reason")


def test_an_attached_message_in_tnef_is_looked_into(qq):
    inner = tnef((("report.pdf", PE),))
    archive = tnef((("notes.txt", TEXT),), embedded=inner)
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"winmail.dat")), ENV)
    assert_clean_failure(out, 31)
    reason = out.field("reason")
    assert "winmail.dat/Forwarded message/report.pdf: DOS/Windows executable" in reason


def test_a_binhex_resource_fork_is_a_member(qq):
    archive = binhex((("notes.txt", TEXT),), resource=PE)
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"notes.hqx")), ENV)
    assert_clean_failure(out, 31)
    assert "notes.hqx/notes.txt (resource fork): DOS/Windows" in out.field("reason")


def test_binhex_inline_in_a_text_part_is_opened(qq):
    body = b"Content-Type: text/plain\n\nHere is the file:\n\n" + binhex((("report.pdf", PE),))
    out = qq.submit(mime(TEXT_PART, body), ENV)
    assert_clean_failure(out, 31)
    assert "report.pdf: DOS/Windows executable" in out.field("reason")


@pytest.mark.parametrize("method", ["-m1", "-m2", "-m3"])
def test_arj_members_in_its_lzh_methods_are_decompressed(qq, method):
    """arj's default method (1) and 2-3 are LHA's -lh7- coding: read through libarchive."""
    archive = arj((("notes.txt", TEXT * 200), ("report.pdf", PE * 20)), method=method)
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.arj")), ENV)
    assert_clean_failure(out, 31)
    assert "files.arj/report.pdf: DOS/Windows executable" in out.field("reason")
    clean = arj((("notes.txt", TEXT * 200), ("report.pdf", PDF)), method=method)
    message = mime(TEXT_PART, attachment(clean, b"files.arj"))
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") is None
    assert out.message.endswith(message)


def test_an_arj_member_in_method_4_is_judged_by_name_and_noted(qq):
    archive = arj((("report.pdf", PE * 20), ("run.exe", TEXT * 20)), method="-m4")
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.arj")), ENV)
    assert_clean_failure(out, 31)
    assert "files.arj/run.exe: blocked file name extension .exe" in out.field("reason")
    clean = arj((("report.pdf", PE * 20),), method="-m4")
    out = qq.submit(mime(TEXT_PART, attachment(clean, b"files.arj")), ENV)
    assert out.returncode == 0, out.stderr
    assert "ARJ compression method 4 is not read" in out.field("notes")


def test_encrypted_7z_headers_are_an_encrypted_member(qq):
    archive = _tool(
        (("report.pdf", PE),), "7zz", "a", "-phush", "-mhe=on", "o.7z", "{names}", output="o.7z"
    )
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.7z")), ENV)
    assert out.returncode == 0, out.stderr


def test_a_udf_only_image_is_read(qq):
    """No ISO 9660 tree (mkudffs, Windows' own tools): the UDF tree is walked, directories
    in directories too."""
    image = udf_only((("docs/2024/q1/report.pdf", PE), ("docs/notes.txt", TEXT)))
    out = qq.submit(mime(TEXT_PART, attachment(image, b"files.dat")), ENV, env=NO_DISKIMAGE)
    assert_clean_failure(out, 31)
    assert "files.dat/docs/2024/q1/report.pdf: DOS/Windows executable" in out.field("reason")


@pytest.mark.one_shot
def test_the_udf_name_of_a_bridge_image_is_judged(qq):
    """Windows shows a bridge image's UDF tree: its name is judged, not the ISO 9660 one."""
    image = bytearray(made("udf", (("notes.txt", TEXT),)))
    at = _udf_identifier(image, "notes.txt")
    name = at + 38 + struct.unpack_from("<H", image, at + 36)[0] + 1
    image[name : name + 9] = b"notes.exe"
    _udf_retag(image, at)
    out = qq.submit(mime(TEXT_PART, attachment(bytes(image), b"files.dat")), ENV, env=NO_DISKIMAGE)
    assert_clean_failure(out, 31)
    assert "files.dat/notes.exe: blocked file name extension .exe" in out.field("reason")


MKUDFFS = (
    ("-m", "hd"),  # UDF 2.01, a physical partition
    ("-m", "hd", "-r", "1.02", "-b", "512"),
    ("-m", "hd", "-b", "4096"),
    ("-m", "cdrw"),  # a sparable partition and its sparing table
    ("-m", "cdr"),  # a virtual partition (VAT) of UDF 2.01
    ("-m", "bdr", "-r", "2.50"),
    ("-m", "worm", "--strategy=4096"),
)


@pytest.mark.one_shot
def test_empty_udf_images_have_no_members(qq, tmp_path):
    from qqfilter.checks.mime import udf

    for number, options in enumerate(MKUDFFS):
        path = tmp_path / f"{number}.img"
        subprocess.run(["mkudffs", *options, str(path), "3000"], check=True, capture_output=True)
        with path.open("rb") as stream:
            assert list(udf.entries(stream, path.stat().st_size)) == [], options
    out = qq.submit(
        mime(TEXT_PART, attachment(path.read_bytes(), b"disc.bin")), ENV, env=NO_DISKIMAGE
    )
    assert out.returncode == 0, out.stderr
    assert out.field("notes") is None


def _udf_entry_of(image: bytes, name: str) -> int:
    """Where the File Entry the identifier ``name`` points to starts."""
    (block,) = struct.unpack_from("<L", image, _udf_identifier(image, name) + 24)
    for at in (*_udf_tags(image, 261), *_udf_tags(image, 266)):
        if at % 2048 == 0 and struct.unpack_from("<L", image, at + 12)[0] == block:
            return at
    raise AssertionError(f"no UDF file entry for {name}")


@pytest.mark.both_modes
def test_a_hostile_udf_image_is_bounded(qq):
    """A directory that names itself (a loop), a file declaring 2**62 bytes: the walk ends,
    the executable after them is found. A directory declaring a terabyte is noted."""
    image = bytearray(udf_only((("loop/a.txt", TEXT), ("big.bin", TEXT), ("z/report.pdf", PE))))
    loop, inner = _udf_identifier(image, "loop"), _udf_identifier(image, "a.txt")
    image[inner + 20 : inner + 36] = image[loop + 20 : loop + 36]
    _udf_retag(image, inner)
    big = _udf_entry_of(image, "big.bin")
    struct.pack_into("<Q", image, big + 56, 1 << 62)
    _udf_retag(image, big)
    out = _submit_image(qq, bytes(image))
    assert_clean_failure(out, 31)
    assert "files.dat/z/report.pdf: DOS/Windows executable" in out.field("reason")
    directory = _udf_entry_of(image, "z")
    struct.pack_into("<Q", image, directory + 56, 1 << 40)
    _udf_retag(image, directory)
    out = _submit_image(qq, bytes(image))
    assert out.returncode == 0, out.stderr
    assert "not a readable udf archive (a UDF directory of more than 16 MB)" in out.field("notes")


def _submit_image(qq, image: bytes):
    started = time.monotonic()
    message = mime(TEXT_PART, attachment(image, b"files.dat"))
    out = qq.submit(message, ENV, env=NO_DISKIMAGE, measure=True)
    assert time.monotonic() - started < 10
    assert out.peak_kib < 64 * MB, out.peak_kib
    return out


@functools.cache
def _small_udf() -> tuple[bytes, tuple[int, ...]]:
    """A small UDF-only image and where its descriptors are."""
    image = udf_only((("a/b/report.pdf", PE), ("notes.txt", TEXT)))
    found = (*range(1, 10), *range(256, 267))
    return image, tuple(sorted(at for tag in found for at in _udf_tags(image, tag)))


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 255), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_a_damaged_udf_image_raises_only_what_the_layer_notes(edits, retag):
    """Bytes of its descriptors changed (their tags made valid again, or not): the reader
    ends, raising nothing but what the archive layer notes."""
    from qqfilter.checks.mime import udf

    image, descriptors = _small_udf()
    damaged = bytearray(image)
    for which, offset, value in edits:
        at = descriptors[which % len(descriptors)]
        damaged[at + offset] = value
        if retag:
            _udf_retag(damaged, at)
    try:
        for entry in udf.entries(io.BytesIO(bytes(damaged)), len(damaged)):
            for _ in entry.read(1 << 20):
                pass
    except (ValueError, EOFError, OSError, struct.error):
        pass


@pytest.mark.one_shot
def test_without_libarchive_the_container_is_noted(qq):
    archive = made("7z", (("report.pdf", PE),))
    out = qq.submit(
        mime(TEXT_PART, attachment(archive, b"files.7z")),
        ENV,
        env={"LIBARCHIVE": "/nonexistent/libarchive.so.13"},
    )
    assert out.returncode == 0, out.stderr
    assert "libarchive13" in out.field("notes")


# Bombs: huge declared sizes, many members, deep nesting. Memory and time stay bounded.


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _gzip_zeros(megabytes: int) -> bytes:
    """``megabytes`` of zeros as concatenated gzip members (made in milliseconds)."""
    return gzip.compress(b"\0" * (1 << 20), 1) * megabytes


def _submit_bomb(qq, archive: bytes, name: bytes):
    started = time.monotonic()
    out = qq.submit(mime(TEXT_PART, attachment(archive, name)), ENV, measure=True)
    assert time.monotonic() - started < 10
    assert out.peak_kib < 64 * MB, out.peak_kib
    return out


def test_a_member_after_gigabytes_of_zeros_is_reached_or_noted(qq):
    """A tar.gz whose first member is 100 MB of zeros (100 KB compressed), then an
    executable: reached. With 300 MB in front, skipping stops and says so."""
    for megabytes, refused in ((100, True), (300, False)):
        archive = gzip.compress(_tar_header("zeros.bin", megabytes << 20), 1)
        archive += _gzip_zeros(megabytes)
        archive += gzip.compress(_tar_header("report.pdf", len(PE)) + PE.ljust(512, b"\0"))
        archive += gzip.compress(b"\0" * 1024)
        out = _submit_bomb(qq, archive, b"files.tgz")
        if refused:
            assert_clean_failure(out, 31)
            assert "files.tgz/report.pdf" in out.field("reason")
        else:
            assert out.returncode == 0, out.stderr
            assert "decompressed to skip members" in out.field("notes")


def test_a_huge_declared_size_is_noted(qq):
    archive = _tar_header("huge.bin", 8 << 30) + PDF  # 8 GB declared, a few bytes there
    out = _submit_bomb(qq, gzip.compress(archive), b"files.tgz")
    assert out.returncode == 0, out.stderr
    assert "not a readable compressed archive" in out.field("notes")


@pytest.mark.both_modes
def test_a_gzip_of_a_gigabyte_costs_its_head(qq):
    out = _submit_bomb(qq, _gzip_zeros(1024), b"zeros.gz")
    assert out.returncode == 0, out.stderr


@functools.cache
def _many_members() -> bytes:
    empty = _tar_header("f0000000.txt", 0)
    at = empty.index(b"f0000000.txt")
    headers = []
    for i in range(20_000):  # the same header renamed, its checksum made anew
        header = bytearray(empty)
        header[at : at + 12] = b"f%07d.txt" % i
        header[148:156] = b" " * 8
        header[148:155] = b"%06o\0" % sum(header)
        headers.append(bytes(header))
    return gzip.compress(b"".join(headers) + b"\0" * 1024)


def test_many_members_stop_at_the_budget(qq):
    out = _submit_bomb(qq, _many_members(), b"files.tgz")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "mime: too many archive members"


def test_deep_nesting_stops_at_the_depth(qq):
    archive = made("tar.gz", (("report.pdf", PE),))
    for level in range(12):
        archive = made("7z" if level % 2 else "tar.gz", ((f"level{level}.bin", archive),))
    out = _submit_bomb(qq, archive, b"files.dat")
    assert out.returncode == 0, out.stderr
    assert "archives nested deeper than 2" in out.field("notes")


def test_a_tnef_of_many_attachments_is_bounded(qq):
    one = _tnef_object(2, 0x9002, 0x0006, b"\x01\x00" + b"\0" * 12)
    one += _tnef_object(2, 0x800F, 0x0006, b"x")
    archive = tnef(()) + one * 100_000
    out = _submit_bomb(qq, archive, b"winmail.dat")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "mime: too many archive members"


def test_a_tnef_of_many_small_objects_takes_linear_time(qq):
    """tnefparse copies the rest of the stream for each object: 300,000 objects would take
    minutes there."""
    archive = tnef((("report.pdf", PE),)) + _tnef_object(1, 0x8004, 0x0001, b"") * 300_000
    out = _submit_bomb(qq, archive, b"winmail.dat")
    assert_clean_failure(out, 31)


def test_a_tnef_declaring_gigabytes_is_noted(qq):
    archive = tnef((("report.pdf", TEXT),))
    archive += struct.pack("<BHHL", 2, 0x800F, 6, 0xFFFFFFF0) + b"x" * 100
    out = _submit_bomb(qq, archive, b"winmail.dat")
    assert out.returncode == 0, out.stderr
    assert "not a readable tnef archive" in out.field("notes")


def test_messages_attached_deep_in_tnef_are_bounded(qq):
    archive = tnef((("report.pdf", TEXT),))
    for _ in range(30):
        archive = tnef((), embedded=archive)
    out = _submit_bomb(qq, archive, b"winmail.dat")
    assert out.returncode == 0, out.stderr
    assert "attached messages nested deeper than" in out.field("notes")


def test_a_binhex_run_length_bomb_is_bounded(qq):
    """Runs of 255 bytes cost 2: a data fork of 300 MB, then an executable in the
    resource fork. Skipping stops at its bound and says so; a smaller one is reached."""
    for megabytes, refused in ((40, True), (300, False)):
        runs = (megabytes << 20) // 255
        fork = b"\0" + b"\x90\xff" * runs  # the RLE already: written as it is
        header = bytes((8,)) + b"zero.bin" + b"\0" + b"TEXTMSWD\0\0"
        header += struct.pack(">LL", 1 + 254 * runs, len(PE))
        stream = header + b"\0\0" + fork + b"\0\0" + PE.replace(b"\x90", b"\x90\x00") + b"\0\0"
        text = base64.b64encode(stream).rstrip(b"=").translate(_FROM_BASE64)
        lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
        archive = b"(This file must be converted with BinHex 4.0)\n:" + lines + b":\n"
        out = _submit_bomb(qq, archive, b"zero.hqx")
        if refused:
            assert_clean_failure(out, 31)
            assert "zero.bin (resource fork): DOS/Windows executable" in out.field("reason")
        else:
            assert out.returncode == 0, out.stderr
            assert "over 256 MB to skip" in out.field("notes")


def test_encrypted_7z_headers_are_refused_when_encrypted_archives_are(qq):
    archive = _tool(
        (("report.pdf", PDF),), "7zz", "a", "-phush", "-mhe=on", "o.7z", "{names}", output="o.7z"
    )
    message = mime(TEXT_PART, attachment(archive, b"files.7z"))
    out = qq.submit(message, ENV, env={"QQF_ENCRYPTED": "refuse"})
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "files.7z": encrypted archive')


@pytest.mark.parametrize("command", [("xz", "-k"), ("bzip2", "-k"), ("zstd", "-q")])
def test_a_compressed_file_is_judged_by_the_name_it_is_saved_under(qq, command):
    """bzip2, xz and zstd keep no name: a desktop saves ``x.exe.xz`` as ``x.exe``."""
    suffix = {"xz": ".xz", "bzip2": ".bz2", "zstd": ".zst"}[command[0]]
    data = compressor(*command, "{names}", suffix=suffix)((("notes.txt", b"plain text"),))
    out = qq.submit(mime(TEXT_PART, attachment(data, b"invoice.exe" + suffix.encode())), ENV)
    assert_clean_failure(out, 31)
    assert f"archive member invoice.exe{suffix}/invoice.exe" in out.field("reason")


@pytest.mark.both_modes
def test_an_arj_bomb_in_its_lzh_method_costs_bounded_memory(qq):
    archive = arj((("zeros.bin", b"\0" * (48 << 20)), ("report.pdf", PE)), method="-m1")
    assert len(archive) < 2 << 20
    out = qq.submit(mime(TEXT_PART, attachment(archive, b"files.arj")), ENV, measure=True)
    assert_clean_failure(out, 31)
    assert out.peak_kib < 64 * 1024
