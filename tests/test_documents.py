"""Documents that run code: Office macros, MSI packages, packed objects in OLE2 and RTF, PDF
/Launch, JavaScript and embedded files (qqfilter/checks/mime/office.py and pdf.py).

Every document is built here in code: a small writer of OLE2 compound files (with a mini
stream, as Office writes small streams), VBA projects with MS-OVBA compressed streams
(literal-only chunks, which are valid), OLE1 Package objects in RTF hex, and PDFs with their
cross-reference tables. olevba itself reads the VBA projects built here, so they are the shape
Office writes, not only the shape our reader accepts. No malware: the "executables" are
headers.

The end-to-end tests at the bottom run the real command; they are skipped until the check
calls these modules.
"""

import contextlib
import io
import itertools
import os
import struct
import time
import zipfile
import zlib

import pytest
from clamav import TEXT_PART, attachment, mime
from conftest import assert_clean_failure, envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter.checks.mime import filetypes, office, pdf
from qqfilter.checks.mime.kinds import BLOCKED_EXTENSIONS

PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48
PE += b"PE\x00\x00\x4c\x01\x03\x00" + b"\x00" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + b"\x00" * 100
BLOCKEXT = frozenset(BLOCKED_EXTENSIONS)


@contextlib.contextmanager
def descriptor(data: bytes):
    """A descriptor of a file holding ``data``, as the check hands one over."""
    fd = os.memfd_create("document")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def office_problem(data: bytes, macros: str = "autoexec"):
    assert filetypes.office_document(data[:4096])
    with descriptor(data) as fd:
        os.lseek(fd, 7, os.SEEK_SET)
        found = office.problem(fd, data[:4096], macros)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7, "the caller's offset moved"
    return found


def pdf_problem(data: bytes, pdfjs: str = "accept"):
    assert filetypes.pdf_document(data[:1024])
    with descriptor(data) as fd:
        os.lseek(fd, 7, os.SEEK_SET)
        found = pdf.problem(fd, data[:1024], pdfjs)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7, "the caller's offset moved"
    return found


def pdf_embedded(data: bytes) -> list[tuple[str, bytes]]:
    with descriptor(data) as fd:
        return list(pdf.embedded(fd))


# --- OLE2 compound files (MS-CFB, version 3: 512-byte sectors, 64-byte mini sectors) ---

FREE, END, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def cfb(streams: dict[str, bytes], root_clsid: bytes = b"\0" * 16) -> bytes:
    """An OLE2 compound file holding ``streams`` ("Macros/VBA/dir": data): storages made
    from the paths, streams under 4096 bytes in the mini stream, as Office writes them."""
    root: dict = {}
    for path, data in streams.items():
        node = root
        *storages, name = path.split("/")
        for storage in storages:
            node = node.setdefault(storage, {})
        node[name] = data
    sectors: list[bytes] = []
    fat: list[int] = []

    def allocate(data: bytes) -> int:
        if not data:
            return END
        first = len(sectors)
        count = (len(data) + 511) // 512
        for i in range(count):
            sectors.append(data[i * 512 : (i + 1) * 512].ljust(512, b"\0"))
            fat.append(first + i + 1 if i < count - 1 else END)
        return first

    mini = bytearray()
    minifat: list[int] = []
    entries: list[list] = []  # [name, type, left, right, child, start, size, clsid]

    def place(data: bytes) -> tuple[int, int]:
        if len(data) >= 4096:
            return allocate(data), len(data)
        if not data:
            return END, 0
        first = len(minifat)
        count = (len(data) + 63) // 64
        mini.extend(data.ljust(count * 64, b"\0"))
        minifat.extend(first + i + 1 if i < count - 1 else END for i in range(count))
        return first, len(data)

    def add(name: str, node) -> int:
        index = len(entries)
        entries.append([name, 0, NOSTREAM, NOSTREAM, NOSTREAM, END, 0, b"\0" * 16])
        if isinstance(node, dict):
            entries[index][1] = 1
            children = [add(n, node[n]) for n in sorted(node, key=lambda n: (len(n), n.upper()))]
            for left, right in itertools.pairwise(children):
                entries[left][3] = right  # a chain of right siblings, in order
            entries[index][4] = children[0] if children else NOSTREAM
        else:
            entries[index][1] = 2
            entries[index][5], entries[index][6] = place(node)
        return index

    entries.append(["Root Entry", 5, NOSTREAM, NOSTREAM, NOSTREAM, END, 0, root_clsid])
    children = [add(n, root[n]) for n in sorted(root, key=lambda n: (len(n), n.upper()))]
    for left, right in itertools.pairwise(children):
        entries[left][3] = right
    entries[0][4] = children[0] if children else NOSTREAM
    entries[0][5] = allocate(bytes(mini)) if mini else END
    entries[0][6] = len(mini)
    minifat_start = allocate(b"".join(struct.pack("<I", n) for n in minifat)) if minifat else END
    minifat_count = (len(minifat) * 4 + 511) // 512
    while len(entries) % 4:
        entries.append(["", 0, NOSTREAM, NOSTREAM, NOSTREAM, 0, 0, b"\0" * 16])
    directory = b""
    for name, kind, left, right, child, start, size, clsid in entries:
        encoded = (name.encode("utf-16-le") + b"\0\0") if name else b""
        directory += struct.pack(
            "<64sHBBIII16sI8s8sII",
            encoded,
            len(encoded),
            kind,
            1,
            left,
            right,
            child,
            clsid,
            0,
            b"",
            b"",
            start,
            size,
        ) + struct.pack("<I", 0)
    directory_start = allocate(directory)
    fat_count = 1
    while len(sectors) + fat_count > fat_count * 128:
        fat_count += 1
    fat_start = len(sectors)
    fat.extend([FATSECT] * fat_count)
    table = b"".join(struct.pack("<I", n) for n in fat).ljust(fat_count * 512, b"\xff")
    for i in range(fat_count):
        sectors.append(table[i * 512 : (i + 1) * 512])
    difat = [fat_start + i for i in range(fat_count)] + [FREE] * (109 - fat_count)
    header = filetypes.OLE2_MAGIC + b"\0" * 16
    header += struct.pack("<HHHHH6x", 0x3E, 3, 0xFFFE, 9, 6)
    header += struct.pack(
        "<9I", 0, fat_count, directory_start, 0, 4096, minifat_start, minifat_count, END, 0
    )
    header += struct.pack("<109I", *difat)
    return header + b"".join(sectors)


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA compression, literal tokens only (valid, if not small): one chunk."""
    assert len(data) <= 3584, "one literal chunk holds 3584 bytes"
    body = b"".join(b"\0" + data[i : i + 8] for i in range(0, len(data), 8))
    return b"\x01" + struct.pack("<H", 0xB000 | (len(body) - 1)) + body


def record(ident: int, data: bytes) -> bytes:
    return struct.pack("<HI", ident, len(data)) + data


def vba_project(modules: dict[str, str], under: str = "") -> dict[str, bytes]:
    """The streams of a VBA project (MS-OVBA 2.2): PROJECT, VBA/_VBA_PROJECT, VBA/dir and
    one stream per module, its source compressed at offset 0."""
    info = (
        record(0x0001, struct.pack("<I", 1))  # SYSKIND: win32
        + record(0x0002, struct.pack("<I", 0x409))
        + record(0x0014, struct.pack("<I", 0x409))
        + record(0x0003, struct.pack("<H", 1252))
        + record(0x0004, b"VBAProject")
        + record(0x0005, b"")
        + record(0x0040, b"")
        + record(0x0006, b"")
        + record(0x003D, b"")
        + record(0x0007, struct.pack("<I", 0))
        + record(0x0008, struct.pack("<I", 0))
        + struct.pack("<HIIH", 0x0009, 4, 1, 0)  # PROJECTVERSION: its size field says 4
        + record(0x000C, b"")
        + record(0x003C, b"")
    )
    parts = record(0x000F, struct.pack("<H", len(modules))) + record(0x0013, b"\xff\xff")
    for name in modules:
        parts += (
            record(0x0019, name.encode())
            + record(0x0047, name.encode("utf-16-le"))
            + record(0x001A, name.encode())
            + record(0x0032, name.encode("utf-16-le"))
            + record(0x001C, b"")
            + record(0x0048, b"")
            + record(0x0031, struct.pack("<I", 0))
            + record(0x001E, struct.pack("<I", 0))
            + record(0x002C, b"\xff\xff")
            + record(0x0021, b"")
            + record(0x002B, b"")
        )
    directory = info + parts + record(0x0010, b"")
    prefix = under + "/" if under else ""
    project = b'ID="{00000000-0000-0000-0000-000000000000}"\r\n'
    project += b"".join(b"Module=" + n.encode() + b"\r\n" for n in modules)
    project += b'Name="VBAProject"\r\nHelpContextID="0"\r\nVersionCompatible32="393222000"\r\n'
    streams = {
        prefix + "PROJECT": project,
        prefix + "VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",
        prefix + "VBA/dir": ovba_compress(directory),
    }
    for name, source in modules.items():
        code = f'Attribute VB_Name = "{name}"\r\n{source}'.encode()
        streams[prefix + "VBA/" + name] = ovba_compress(code)
    return streams


WORD = {"WordDocument": b"\xec\xa5\xc1\x00" + b"\0" * 5000, "1Table": b"\0" * 600}
AUTOOPEN = 'Sub AutoOpen()\r\n  Shell "calc.exe"\r\nEnd Sub\r\n'
DOCUMENT_OPEN = 'Private Sub Document_Open()\r\n  MsgBox "hello"\r\nEnd Sub\r\n'
BUTTON = 'Sub CommandButton1_Click()\r\n  MsgBox "hello"\r\nEnd Sub\r\n'
EMPTY = "Option Explicit\r\n"


def doc(modules: dict[str, str] | None = None, **extra: bytes) -> bytes:
    streams = dict(WORD)
    if modules is not None:
        streams.update(vba_project(modules, "Macros"))
    streams.update(extra)
    return cfb(streams)


def package(name: str, data: bytes, temp: str | None = None) -> bytes:
    """An OLE Package (Packager) structure: label, source path, temporary path, data."""
    temp = temp or "C:\\Users\\x\\AppData\\Local\\Temp\\" + name
    return (
        b"\x02\x00"
        + name.encode()
        + b"\0"
        + b"C:\\Users\\x\\Desktop\\"
        + name.encode()
        + b"\0"
        + b"\x00\x00\x03\x00"
        + struct.pack("<I", len(temp) + 1)
        + temp.encode()
        + b"\0"
        + struct.pack("<I", len(data))
        + data
    )


def ole10native(name: str, data: bytes) -> bytes:
    body = package(name, data)
    return struct.pack("<I", len(body)) + body


# --- OLE2 tests ---


def test_the_vba_projects_built_here_are_what_olevba_reads():
    from oletools import olevba

    parser = olevba.VBA_Parser("report.doc", data=doc({"Module1": AUTOOPEN}))
    assert parser.detect_vba_macros()
    codes = [code for _, _, _, code in parser.extract_macros()]
    assert any("Sub AutoOpen()" in code for code in codes)
    assert any(kind == "AutoExec" for kind, _, _ in parser.analyze_macros())


def test_a_document_without_macros_passes():
    assert office_problem(doc()) is None
    assert office_problem(doc(), "any") is None


@pytest.mark.parametrize(
    ("source", "keyword"),
    [(AUTOOPEN, "AutoOpen"), (DOCUMENT_OPEN, "Document_Open")],
)
def test_a_macro_that_runs_on_open_is_refused(source, keyword):
    reason = f"Office document with a macro that runs on open ({keyword})"
    assert office_problem(doc({"ThisDocument": source})) == ("macro", reason)
    assert office_problem(doc({"ThisDocument": source}), "any")[0] == "macro"
    assert office_problem(doc({"ThisDocument": source}), "off") is None


def test_a_macro_the_user_starts_passes_autoexec_not_any():
    data = doc({"Module1": BUTTON})
    assert office_problem(data) is None
    assert office_problem(data, "any") == (
        "macro",
        "Office document with a VBA macro (module Module1)",
    )


def test_an_empty_vba_project_is_not_a_macro():
    assert office_problem(doc({"ThisDocument": EMPTY}), "any") is None


def test_a_vba_project_alone_is_judged_as_ooxml_hands_it_over():
    """A .docm's word/vbaProject.bin: the project at the root of its own OLE2 file."""
    data = cfb(vba_project({"ThisDocument": DOCUMENT_OPEN}))
    assert office_problem(data) == (
        "macro",
        "Office document with a macro that runs on open (Document_Open)",
    )


def test_a_macro_the_dir_stream_does_not_name_is_found_by_its_source():
    streams = dict(WORD)
    streams.update(vba_project({"Module1": AUTOOPEN}, "Macros"))
    streams["Macros/VBA/dir"] = ovba_compress(record(0x0010, b""))
    assert office_problem(cfb(streams))[1].endswith("(AutoOpen)")


def test_a_windows_installer_package_is_refused_however_named():
    clsid = struct.pack("<IHH", 0x000C1084, 0, 0) + bytes([0xC0, 0, 0, 0, 0, 0, 0, 0x46])
    msi = cfb({"\u4840\u3b3f\u4577": b"\0" * 5000}, root_clsid=clsid)
    assert office_problem(msi, "off") == ("windows", "Windows Installer package (MSI)")


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("invoice.exe", b"hello", "extension"),
        ("readme.txt", PE, "windows"),
        ("notes.txt", ELF, "elf"),
        ("run.js", b"var x = 1;", "extension"),
    ],
)
def test_a_packaged_executable_in_an_ole2_document_is_refused(name, data, kind):
    found = office_problem(
        doc(**{"ObjectPool/_1600000000/\x01Ole10Native": ole10native(name, data)})
    )
    assert found is not None
    assert found[0] == kind
    assert found[1].startswith(f'embedded object "{name}": ')


def test_a_packaged_document_passes():
    native = ole10native("report.pdf", b"%PDF-1.4\n")
    assert office_problem(doc(**{"ObjectPool/_1/\x01Ole10Native": native})) is None


def _workbook(macro_sheet: bool, auto_open: bool) -> bytes:
    def rec(kind: int, body: bytes) -> bytes:
        return struct.pack("<HH", kind, len(body)) + body

    data = rec(0x0809, b"\x00\x06\x05\x00" + b"\0" * 12)
    data += rec(0x0085, struct.pack("<IBB", 0, 0, 1 if macro_sheet else 0) + b"\x06\x00Macro1")
    if auto_open:
        data += rec(0x0018, struct.pack("<HBBHHHBBBB", 0x20, 0, 1, 0, 0, 0, 0, 0, 0, 0) + b"\0\x01")
    return data + rec(0x000A, b"")


@pytest.mark.parametrize(
    ("macro_sheet", "auto_open", "macros", "found"),
    [
        (True, True, "autoexec", True),
        (True, False, "autoexec", False),
        (True, False, "any", True),
        (False, False, "any", False),
        (True, True, "off", False),
    ],
)
def test_excel4_macro_sheets(macro_sheet, auto_open, macros, found):
    data = cfb({"Workbook": _workbook(macro_sheet, auto_open)})
    result = office_problem(data, macros)
    assert (result is not None) == found
    if result:
        assert result[0] == "macro"


def test_the_bounded_decompressor_agrees_with_olevba_on_copy_tokens():
    from oletools import olevba

    # "abc" as literals, then a copy token: offset 3, length 12 (overlapping, repeating)
    token = ((3 - 1) << 12) | (12 - 3)  # 4 offset bits at this point, 12 length bits
    body = bytes([0b1000]) + b"abc" + struct.pack("<H", token)
    data = b"\x01" + struct.pack("<H", 0xB000 | (len(body) - 1)) + body
    assert office._decompress(data, 0, 1000) == olevba.decompress_stream(data) == b"abc" * 5
    assert office._decompress(data, 0, 7) == b"abcabca"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=300))
def test_the_decompressor_agrees_with_olevba_where_both_read(body):
    from oletools import olevba

    data = b"\x01" + struct.pack("<H", 0xB000 | (len(body) - 1)) + body
    try:
        ours = office._decompress(data, 0, 1 << 20)
    except (ValueError, IndexError):
        return
    try:
        theirs = olevba.decompress_stream(data)
    except Exception:
        return
    assert ours == theirs


def test_a_decompression_bomb_stops_at_the_bound():
    # chunks of one literal and one copy token of 4095 bytes: 6 bytes ask for 4 KB
    token = 4095 - 3  # offset 1, length 4095 (12 length bits)
    chunk_body = b"\x02" + b"A" + struct.pack("<H", token)
    chunk = struct.pack("<H", 0xB000 | (len(chunk_body) - 1)) + chunk_body
    data = b"\x01" + chunk * 200_000  # 1.2 MB asking for 800 MB
    start = time.perf_counter()
    out = office._decompress(data, 0, office.MAX_SOURCE)
    assert len(out) == office.MAX_SOURCE
    assert time.perf_counter() - start < 2


# --- RTF ---


def ole1(class_name: bytes, data: bytes) -> bytes:
    """An OLE1 embedded object (MS-OLEDS 2.2): header, class name, topic, item, data."""

    def string(s: bytes) -> bytes:
        return struct.pack("<I", len(s) + 1) + s + b"\0" if s else struct.pack("<I", 0)

    return (
        struct.pack("<II", 0x0501, 2)
        + string(class_name)
        + string(b"")
        + string(b"")
        + struct.pack("<I", len(data))
        + data
    )


def rtf_object(objdata: bytes, *, wrap: int = 64) -> bytes:
    hexa = objdata.hex().encode()
    lines = b"\r\n".join(hexa[i : i + wrap] for i in range(0, len(hexa), wrap))
    return (
        b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\pard Hello.\\par"
        b"{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata \r\n" + lines + b"}}\\par}"
    )


def test_rtf_with_a_packaged_executable_is_refused():
    found = office_problem(rtf_object(ole1(b"Package", package("invoice.pdf.exe", PE))))
    assert found == (
        "extension",
        'embedded object "invoice.pdf.exe": blocked file name extension .exe',
    )
    found = office_problem(rtf_object(ole1(b"Package", package("readme.txt", PE))))
    assert found == ("windows", 'embedded object "readme.txt": DOS/Windows executable (MZ)')


def test_rtf_object_found_as_rtfobj_finds_it_through_word_quirks():
    from oletools import rtfobj

    hexa = ole1(b"Package", package("a.scr", b"x")).hex().encode()
    # junk Word skips: a bookmark destination, a \'hh that eats a dangling digit, \bin data
    middle = len(hexa) // 2
    quirky = (
        hexa[:40]
        + b"{\\*\\bkmkstart zz}"
        + hexa[40:middle]
        + b"7\\'41"
        + hexa[middle:-8]
        + b"\\bin4 "
        + bytes.fromhex(hexa[-8:].decode())
    )
    data = b"{\\rtf1{\\object\\objemb{\\*\\objdata " + quirky + b"}}}"
    parser = rtfobj.RtfObjParser(data)
    parser.parse()
    assert parser.objects and parser.objects[0].filename == "a.scr"
    assert office_problem(data)[1] == 'embedded object "a.scr": blocked file name extension .scr'


def test_rtf_with_an_embedded_macro_document_is_judged_as_one():
    inner = doc({"ThisDocument": DOCUMENT_OPEN})
    assert office_problem(rtf_object(ole1(b"Word.Document.8", inner)))[0] == "macro"


def test_rtf_with_a_packaged_document_and_plain_rtf_pass():
    assert office_problem(rtf_object(ole1(b"Package", package("report.pdf", b"%PDF-1.4")))) is None
    assert office_problem(b"{\\rtf1\\ansi Hello \\b world\\b0.\\par}") is None
    assert office_problem(b"{\\rt junk that Word still opens}") is None


def test_hostile_rtf_is_bounded_in_time():
    cases = {
        "20 MB of text": b"{\\rtf1 " + b"hello world \\par\n" * 1_200_000 + b"}",
        "braces in objdata": b"{\\rtf1{\\*\\objdata " + b"{}" * 10_000_000 + b"}}",
        "\\' in objdata": b"{\\rtf1{\\*\\objdata " + b"0\\'00" * 4_000_000 + b"}}",
        "many objects": b"{\\rtf1" + b"{\\*\\objdata 0102}" * 1_000_000 + b"}",
        "one object behind decoys": b"{\\rtf1"
        + b"{\\*\\objdata 0102}" * 1000
        + rtf_object(ole1(b"Package", package("invoice.exe", PE)))
        + b"}",
    }
    for name, data in cases.items():
        start = time.perf_counter()
        found = office_problem(data)
        assert time.perf_counter() - start < 8, name
        assert (found is not None) == name.endswith("decoys"), name


# --- PDF ---


def pdf_file(*objects: bytes, junk: bytes = b"", trailer: bytes = b"/Root 1 0 R") -> bytes:
    """A PDF of ``objects`` (numbered from 1), with its cross-reference table."""
    out = junk + b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    return out


def stream(dictionary: bytes, data: bytes, flate: bool = True) -> bytes:
    if flate:
        data = zlib.compress(data)
        dictionary += b" /Filter /FlateDecode"
    return b"<< %s /Length %d >>\nstream\n" % (dictionary, len(data)) + data + b"\nendstream"


PAGES = (
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    stream(b"", b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET"),
)


def catalog(extra: bytes = b"") -> bytes:
    return b"<< /Type /Catalog /Pages 2 0 R " + extra + b">>"


def test_a_plain_pdf_passes():
    data = pdf_file(catalog(), *PAGES)
    assert pdf_problem(data) is None
    assert pdf_problem(data, "refuse") is None
    assert pdf_embedded(data) == []


@pytest.mark.parametrize(
    "action",
    [
        b"/OpenAction << /S /Launch /F (cmd.exe) >>",
        b"/OpenAction << /S /L#61unch /F (cmd.exe) >>",
        b"/OpenAction << /S/#4C#61#75nch/F(cmd.exe)>>",
    ],
)
def test_a_launch_action_is_refused_in_any_spelling(action):
    assert pdf_problem(pdf_file(catalog(action), *PAGES)) == ("script", "PDF with a /Launch action")


def test_a_name_that_only_starts_like_launch_passes():
    data = pdf_file(catalog(b"/PageMode /LaunchPad /Lang (en) "), *PAGES)
    assert pdf_problem(data) is None


def test_javascript_is_refused_only_when_asked():
    data = pdf_file(catalog(b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >>"), *PAGES)
    assert pdf_problem(data) is None
    assert pdf_problem(data, "refuse") == ("script", "PDF with JavaScript")
    escaped = pdf_file(catalog(b"/OpenAction << /S /Java#53cript /J#53 3 0 R >>"), *PAGES)
    assert pdf_problem(escaped, "refuse") == ("script", "PDF with JavaScript")


def _object_stream(*objects: bytes, first_number: int) -> bytes:
    bodies, header, at = b"", b"", 0
    for i, body in enumerate(objects):
        header += b"%d %d " % (first_number + i, at)
        bodies += body + b"\n"
        at = len(bodies)
    content = header + b"\n" + bodies
    return stream(b"/Type /ObjStm /N %d /First %d" % (len(objects), len(header) + 1), content)


def test_a_launch_action_inside_an_object_stream_is_found():
    action = b"<< /S /Launch /Win << /F (cmd.exe) /P (/c calc) >> >>"
    data = pdf_file(catalog(b"/OpenAction 6 0 R "), *PAGES, _object_stream(action, first_number=6))
    assert b"Launch" not in data
    assert pdf_problem(data) == ("script", "PDF with a /Launch action")


def test_a_damaged_object_stream_hides_nothing_behind_it():
    broken = b"<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length 9 >>\nstream\n"
    broken += b"not zlib!\nendstream"
    launch = _object_stream(b"<< /S /Launch >>", first_number=6)
    data = pdf_file(catalog(), *PAGES, broken, launch)
    assert pdf_problem(data) == ("script", "PDF with a /Launch action")


def test_a_launch_action_across_a_window_boundary_is_found():
    padding = stream(b"", b"x" * (pdf.WINDOW - 200), flate=False)
    for shift in range(0, 120, 7):
        filler = stream(b"", b"y" * shift, flate=False)
        data = pdf_file(
            filler, padding, b"<< /Type /Catalog /OpenAction << /S /Launch /F (c.exe) >> >>"
        )
        at = data.index(b"/Launch")
        if at <= pdf.WINDOW <= at + 7:
            assert pdf_problem(data) == ("script", "PDF with a /Launch action")
            break
    else:
        pytest.fail("no shift put /Launch across the boundary")


def _embedded_pdf(name: bytes, content: bytes, *, in_object_stream: bool = False) -> bytes:
    filespec = b"<< /Type /Filespec /F (" + name + b") /UF <FEFF"
    filespec += name.decode().encode("utf-16-be").hex().encode() + b"> /EF << /F 6 0 R >> >>"
    annotation = b"/Annots [<< /Type /Annot /Subtype /FileAttachment /FS 5 0 R >>]"
    embedded = stream(b"/Type /EmbeddedFile /Subtype /application#2Foctet-stream", content)
    fifth = _object_stream(filespec, first_number=5) if in_object_stream else filespec
    page = PAGES[1].replace(b">>", annotation + b" >>")
    return pdf_file(catalog(), PAGES[0], page, PAGES[2], fifth, embedded)


def test_an_embedded_executable_is_yielded_with_its_name():
    data = _embedded_pdf(b"invoice.exe", PE)
    assert pdf_problem(data) is None
    found = pdf_embedded(data)
    assert found == [("invoice.exe", PE)]
    name, head = found[0]
    assert filetypes.name_problem(name, BLOCKEXT) == "blocked file name extension .exe"
    assert filetypes.content_kind(head, attachment=True) == (
        "windows",
        "DOS/Windows executable (MZ)",
    )


def test_an_embedded_file_named_in_an_object_stream():
    found = pdf_embedded(_embedded_pdf(b"notes.txt", ELF, in_object_stream=True))
    assert found == [("notes.txt", ELF)]


def test_an_embedded_document_is_yielded_too():
    big = b"%PDF-1.4 " + os.urandom(200_000)
    assert pdf_embedded(_embedded_pdf(b"report.pdf", big)) == [("report.pdf", big[: pdf.HEAD])]


def test_a_zlib_bomb_in_an_object_stream_is_bounded():
    inflater = zlib.compressobj(1)
    block = b"\0" * (1 << 20)
    bomb = b"".join(inflater.compress(block) for _ in range(100)) + inflater.flush()
    body = b"<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length %d >>\nstream\n" % len(
        bomb
    )
    launch = _object_stream(b"<< /S /Launch >>", first_number=6)  # after the bomb: still read
    data = pdf_file(catalog(), *PAGES, body + bomb + b"\nendstream", launch)
    start = time.perf_counter()
    assert pdf_problem(data, "refuse") == ("script", "PDF with a /Launch action")
    assert time.perf_counter() - start < 5


def test_junk_before_the_header_is_still_a_pdf():
    data = pdf_file(catalog(b"/OpenAction << /S /Launch >>"), *PAGES, junk=b"\x89junk" * 100)
    assert filetypes.pdf_document(data[:1024])
    assert pdf_problem(data) == ("script", "PDF with a /Launch action")
    assert not filetypes.pdf_document(b"\0" * 1100 + b"%PDF-1.4")


# --- properties: hostile bytes never raise out, and stay bounded in time ---

SAMPLES = [
    doc({"ThisDocument": DOCUMENT_OPEN}),
    cfb(vba_project({"Module1": AUTOOPEN})),
    doc(**{"ObjectPool/_1/\x01Ole10Native": ole10native("a.exe", PE)}),
    rtf_object(ole1(b"Package", package("invoice.exe", PE))),
]
PDF_SAMPLES = [
    _embedded_pdf(b"invoice.exe", PE, in_object_stream=True),
    pdf_file(
        catalog(b"/OpenAction 6 0 R "), *PAGES, _object_stream(b"<< /S /Launch >>", first_number=6)
    ),
]


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at % len(out)] = value
    return bytes(out[: max(1, len(out) - cut)])


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SAMPLES))),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=20),
    st.integers(0, 3000),
    st.sampled_from(["off", "autoexec", "any"]),
)
def test_office_never_raises_on_mutated_documents(which, edits, cut, macros):
    data = _mutate(SAMPLES[which], edits, cut)
    with descriptor(data) as fd:
        found = office.problem(fd, data[:4096], macros)
    assert found is None or (isinstance(found[0], str) and isinstance(found[1], str))


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([filetypes.OLE2_MAGIC, b"{\\rtf1", b"{\\rt"]), st.binary(max_size=5000))
def test_office_never_raises_on_arbitrary_bytes(magic, tail):
    data = magic + tail
    with descriptor(data) as fd:
        office.problem(fd, data[:4096], "any")


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(PDF_SAMPLES))),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=20),
    st.integers(0, 2000),
)
def test_pdf_never_raises_on_mutated_documents(which, edits, cut):
    data = _mutate(PDF_SAMPLES[which], edits, cut)
    with descriptor(data) as fd:
        pdf.problem(fd, data[:1024], "refuse")
        for name, head in pdf.embedded(fd):
            assert isinstance(name, str) and isinstance(head, bytes)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_pdf_never_raises_on_arbitrary_bytes(tail):
    data = b"%PDF-1.7\n" + tail
    with descriptor(data) as fd:
        pdf.problem(fd, data[:1024], "refuse")
        list(pdf.embedded(fd))


# --- end to end: the attachment check calls office.py and pdf.py ---

ENV = envelope(b"alice@example.com", b"bob@example.org")


def docm(project: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
        archive.writestr("word/vbaProject.bin", project)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (
            doc({"ThisDocument": DOCUMENT_OPEN}),
            b"report.doc",
            "Office document with a macro that runs on open (Document_Open)",
        ),
        (
            docm(cfb(vba_project({"ThisDocument": AUTOOPEN}))),
            b"report.docm",
            "Office document with a macro that runs on open (AutoOpen)",
        ),
        (
            rtf_object(ole1(b"Package", package("invoice.exe", PE))),
            b"letter.rtf",
            'embedded object "invoice.exe": blocked file name extension .exe',
        ),
        (
            pdf_file(catalog(b"/OpenAction << /S /Launch /F (cmd.exe) >>"), *PAGES),
            b"invoice.pdf",
            "PDF with a /Launch action",
        ),
    ],
)
def test_end_to_end_documents_that_run_code_are_refused(qq, data, name, reason):
    out = qq.submit(mime(TEXT_PART, attachment(data, name)), ENV)
    assert_clean_failure(out, 31)
    assert out.field("check") == "mime"
    assert reason in out.field("reason")


def test_end_to_end_a_pdf_with_an_embedded_executable_is_refused(qq):
    out = qq.submit(mime(TEXT_PART, attachment(_embedded_pdf(b"setup.exe", PE), b"a.pdf")), ENV)
    assert_clean_failure(out, 31)
    assert "setup.exe" in out.field("reason")


def test_end_to_end_javascript_refused_only_with_pdfjs_refuse(qq):
    data = pdf_file(catalog(b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >>"), *PAGES)
    message = mime(TEXT_PART, attachment(data, b"form.pdf"))
    assert qq.submit(message, ENV).queued
    out = qq.submit(message, ENV, env={"QQF_PDFJS": "refuse"})
    assert_clean_failure(out, 31)
    assert "PDF with JavaScript" in out.field("reason")


def test_end_to_end_clean_documents_pass(qq):
    for data, name in [
        (doc(), b"plain.doc"),
        (doc({"Module1": BUTTON}), b"button.doc"),
        (pdf_file(catalog(), *PAGES), b"plain.pdf"),
    ]:
        out = qq.submit(mime(TEXT_PART, attachment(data, name)), ENV)
        assert out.queued, out.stderr


def test_end_to_end_macros_any_refuses_a_button_macro(qq):
    message = mime(TEXT_PART, attachment(doc({"Module1": BUTTON}), b"button.doc"))
    out = qq.submit(message, ENV, env={"QQF_MACROS": "any"})
    assert_clean_failure(out, 31)
