"""Files hidden in HTML and SVG pages (HTML smuggling), and the content kinds added with them.

``smuggling.wants`` and ``smuggling.blobs`` are driven directly, on pages written here: a
data: URI of an executable, the atob / new Blob / msSaveOrOpenBlob idiom in HTML and in SVG,
base64 split over joined strings, a zip, and clean pages whose inline images are images. The
scan must never raise and must stay linear in the page's size on adversarial input. At the
bottom, end-to-end tests through the real process, skipped until the check calls the module.
Every sample is built here in code. No malware.
"""

import base64
import io
import os
import random
import struct
import tempfile
import time
import zipfile
import zlib

import pytest
from clamav import TEXT_PART, mime
from conftest import assert_clean_failure, envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter.checks.mime import filetypes, smuggling
from qqfilter.checks.mime.kinds import BLOCKED_EXTENSIONS
from qqfilter.checks.mime.walk import HEAD

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
PE = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\xb8"
    + b"\x00" * 43
    + b"\x80\x00\x00\x00"
    + b"\x00" * 64
    + b"PE\x00\x00\x4c\x01\x03\x00"
    + bytes(range(256)) * 8
)
B64 = base64.b64encode(PE).decode()
BLOCKED = frozenset(BLOCKED_EXTENSIONS)
MB = 1 << 20


def png(width: int = 1, height: int = 1) -> bytes:
    """A real PNG image (RGBA, every pixel transparent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\x00" * 4 * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def scan(page: bytes | str, notes: list[str] | None = None) -> list[tuple[str, bytes]]:
    """``smuggling.blobs`` on ``page`` written to a file (the descriptor is not moved)."""
    data = page.encode() if isinstance(page, str) else page
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        found = list(smuggling.blobs(file.fileno(), notes))
        assert os.lseek(file.fileno(), 0, os.SEEK_CUR) == len(data)
    return found


def kinds(found: list[tuple[str, bytes]]) -> list[tuple[str, str | None]]:
    """Each result as the caller judges it: its label, and its head's kind of content."""
    out = []
    for label, head in found:
        kind = filetypes.content_kind(head, attachment=True) if head else None
        out.append((label, kind[0] if kind else None))
    return out


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- wants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"<html><body>hi</body></html>",
        b"<!DOCTYPE html>\n<html>",
        b"<!doctype HTML><title>x</title>",
        b"\xef\xbb\xbf  \r\n<HTML>",
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg">',
        b"<svg:svg xmlns:svg='http://www.w3.org/2000/svg'>",
        b"<script>var x = 1;</script>",
        b"<!-- a comment -->" + b" " * 500 + b"<html>",
        "\ufeff<html><body>".encode("utf-16-le"),
        "\ufeff<html><body>".encode("utf-16-be"),
        "<html><body>hello</body></html>".encode("utf-16-le"),
    ],
)
def test_html_and_svg_are_wanted(head):
    assert filetypes.page(head)


@pytest.mark.parametrize(
    "head",
    [
        b"Hello, this is plain text about html.\n",
        b"%PDF-1.4\n1 0 obj",
        PE,
        zip_of(("a.txt", b"<html>")),
        b"x" * 1100 + b"<html>",  # past the first KB (white space in front is skipped)
        b"",
    ],
)
def test_other_files_are_not(head):
    assert not filetypes.page(head)


# -- data: URIs -------------------------------------------------------------------------------


def test_a_data_uri_of_an_executable_is_found_under_its_download_name():
    page = (
        "<html><body><p>Your invoice</p>"
        f'<a href="data:application/octet-stream;base64,{B64}" download="invoice.exe">open</a>'
        "</body></html>"
    )
    found = scan(page)
    assert kinds(found) == [("invoice.exe", "windows")]
    assert found[0][1] == PE
    assert filetypes.name_problem(found[0][0], BLOCKED) == "blocked file name extension .exe"


def test_the_download_name_before_the_href_labels_it_too():
    page = f'<a download="setup.msi" href="data:;base64,{B64}">x</a>'
    assert kinds(scan(page)) == [("setup.msi", "windows")]


def test_a_data_uri_without_a_name_is_labelled_by_its_type():
    page = f"<html><iframe src='data:application/x-msdownload;base64,{B64}'></iframe></html>"
    assert kinds(scan(page)) == [("data: URI application/x-msdownload", "windows")]


@pytest.mark.parametrize(
    "uri",
    [
        "data&colon;application/octet-stream;base64,{b64}",  # an HTML entity for the colon
        "DATA:Application/Octet-Stream;BASE64,{b64}",  # the scheme in any case
        "data:application/octet-stream; base64 ,{wrapped}",  # line breaks in the payload
        "data:application/octet-stream;base64,{percent}",  # percent-encoded base64
    ],
)
def test_data_uris_in_the_spellings_browsers_accept(uri):
    wrapped = "\n".join(chunks(B64, 76))
    percent = B64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    page = f'<html><a href="{uri.format(b64=B64, wrapped=wrapped, percent=percent)}">x</a>'
    assert [kind for _, kind in kinds(scan(page))] == ["windows"]


def test_a_text_data_uri_is_decoded_and_read_on():
    """A page inside a data: URI (percent-encoded): its text is the head, and what it holds
    is found too (as it stands: a script whose quotes are percent-encoded is not decoded)."""
    inner = f"<script>var b = '{B64}'; atob(b)</script>"
    encoded = "".join(f"%{c:02X}" if c in b"<>% " else chr(c) for c in inner.encode())
    found = scan(f'<html><iframe src="data:text/html,{encoded}"></iframe></html>')
    assert found[0][0] == "data: URI text/html"
    assert found[0][1].startswith(b"<script>var b = '")
    assert [kind for _, kind in kinds(found)] == [None, "windows"]


def test_a_zip_in_a_data_uri_is_given_whole_for_the_caller_to_open():
    archive = zip_of(("readme.txt", b"hello"), ("invoice.pdf.exe", PE))
    page = (
        '<html><a href="data:application/zip;base64,'
        + base64.b64encode(archive).decode()
        + '" download="documents.zip">download</a></html>'
    )
    ((label, head),) = scan(page)
    assert label == "documents.zip"
    assert head == archive  # smaller than walk.HEAD: the whole archive
    assert b"invoice.pdf.exe" in head


def test_clean_html_with_inline_images_gives_images():
    image = base64.b64encode(png(16, 16)).decode()
    page = (
        "<!DOCTYPE html><html><head><style>"
        f".logo {{ background: url(data:image/png;base64,{image}) no-repeat; }}"
        "</style></head><body>"
        + "".join(f'<img src="data:image/png;base64,{image}" alt="icon {i}">' for i in range(5))
        + "<p>Newsletter text, with a <a href='https://example.com/report.pdf' "
        "download='report.pdf'>report</a>.</p></body></html>"
    )
    found = scan(page)
    assert len(found) == 6
    assert {label for label, _ in found} == {"data: URI image/png"}
    for _, head in found:
        assert head.startswith(b"\x89PNG")
        assert filetypes.content_kind(head, attachment=True) is None
    # a download name in a page that builds no file is not looked at
    assert all(label != "report.pdf" for label, _ in found)


# -- base64 in scripts --------------------------------------------------------------------------

SMUGGLER = """
<html><head><title>Document</title></head><body>
<p>Loading your document...</p>
<script>
  var b64 = "{b64}";
  function go() {{
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var blob = new Blob([bytes], {{type: "application/octet-stream"}});
    if (window.navigator.msSaveOrOpenBlob) {{
      window.navigator.msSaveOrOpenBlob(blob, "Invoice_2026.iso");
    }} else {{
      var a = document.createElement("a");
      a.href = window.URL.createObjectURL(blob);
      a.download = "Invoice_2026.iso";
      document.body.appendChild(a);
      a.click();
    }}
  }}
  go();
</script></body></html>
"""


def test_the_atob_blob_save_idiom():
    page = SMUGGLER.format(b64=B64)
    found = kinds(scan(page))
    assert (f"base64 string at byte {page.index(B64) - 1}", "windows") in found
    assert ("Invoice_2026.iso", None) in found  # its name, for the caller to judge
    assert len(found) == 2  # the name once, though the page gives it twice
    assert filetypes.name_problem("Invoice_2026.iso", BLOCKED) == "blocked file name extension .iso"


def test_an_svg_with_a_script_that_builds_the_file():
    pieces = " +\n    ".join(f'"{piece}"' for piece in chunks(B64, 120))
    page = f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">
  <rect width="100" height="100" fill="white"/>
  <script type="text/javascript"><![CDATA[
    var data = {pieces};
    var blob = new Blob([Uint8Array.from(atob(data), c => c.charCodeAt(0))]);
    var link = document.createElementNS("http://www.w3.org/1999/xhtml", "a");
    link.setAttribute("download", "scan.js");
    link.href = URL.createObjectURL(blob);
    link.click();
  ]]></script>
</svg>"""
    assert filetypes.page(page.encode()[:1024])
    found = kinds(scan(page))
    assert [kind for _, kind in found] == ["windows", None]
    assert found[1][0] == "scan.js"


@pytest.mark.parametrize(
    "literal",
    [
        'var s = "{b64}";',
        "var s = '{b64}';",
        "var s = `{wrapped}`;",  # a template literal, lines and all
        'var s = "{cont}";',  # lines continued with a backslash
        "var s = {joined};",  # "..." + "..."
        "var s = {minified};",  # "..."+"..." with short pieces
        "var s = {leading};",  # a short piece in front of the long ones
        "var s = [{array}].join('');",  # an array of pieces
        'var s = "data:application/octet-stream;base64," + "{head}" +\n  "{tail}";',
    ],
)
def test_base64_in_a_script_in_the_shapes_kits_use(literal):
    text = literal.format(
        b64=B64,
        wrapped="\n".join(chunks(B64, 76)),
        cont="\\\n".join(chunks(B64, 76)),
        joined=" + ".join(f'"{piece}"' for piece in chunks(B64, 100)),
        minified="+".join(f'"{piece}"' for piece in chunks(B64, 20)),
        leading=f'"{B64[:5]}" + ' + " + ".join(f'"{piece}"' for piece in chunks(B64[5:], 200)),
        array=",".join(f"'{piece}'" for piece in chunks(B64, 64)),
        head=B64[:300],
        tail=B64[300:],
    )
    page = f"<html><script>{text}\nnew Blob([atob(s)]);</script></html>"
    found = scan(page)
    assert [kind for _, kind in kinds(found)] == ["windows"]
    assert found[0][1] == PE


def test_base64_in_a_hidden_element():
    wrapped = "\r\n".join(chunks(B64, 76))
    page = (
        f'<html><body><div id="p" style="display:none">{wrapped}</div><script>'
        "var b = new Blob([atob(document.getElementById('p').textContent)]);</script>"
    )
    assert [kind for _, kind in kinds(scan(page))] == ["windows"]


def test_a_utf16_page():
    uri = f"data:application/octet-stream;base64,{B64}"
    page = f'<html><a href="{uri}" download="r\u00e9sum\u00e9.exe">'
    for encoded in (
        page.encode("utf-16"),
        page.encode("utf-16-le"),
        ("\ufeff" + page).encode("utf-16-be"),
        ("\u4e2d\u6587 " + page).encode("utf-16-le"),  # characters past latin-1 read as junk
    ):
        assert filetypes.page(encoded[:1024])
        assert kinds(scan(encoded)) == [("r\u00e9sum\u00e9.exe", "windows")]


def test_short_strings_and_prose_are_not_files():
    page = (
        "<html><script>var token = 'c2VjcmV0LXRva2VuLWZvci10aGUtYXBp';"
        "var sri = 'sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC';"
        'var x = "a" + b + "c";</script><p>' + "All work and no play. " * 200 + "</p>"
        "<p>metadata: none; data-id=1</p></html>"
    )
    assert scan(page) == []


def test_names_wait_for_a_sign_that_the_page_builds_a_file():
    early = '<a download="tool.exe">x</a>'
    assert scan(early) == []
    assert scan(early + "<script>URL.createObjectURL(x)</script>") == [("tool.exe", b"")]
    assert scan("<script>a.download = fileName; new Blob([x]);</script>") == []  # a variable


# -- bounds, windows --------------------------------------------------------------------------


def test_results_stop_at_max_blobs_with_a_note():
    image = base64.b64encode(png()).decode()
    page = "".join(f'<img src="data:image/png;base64,{image}">' for _ in range(80))
    notes: list[str] = []
    found = scan(page, notes)
    assert len(found) == smuggling.MAX_BLOBS
    assert notes == [f"HTML page: more than {smuggling.MAX_BLOBS} files, the rest not looked at"]


def test_only_the_first_max_scan_bytes_are_read(monkeypatch):
    monkeypatch.setattr(smuggling, "MAX_SCAN", 4 * MB)
    early = f'<a href="data:;base64,{B64}">'
    late = f'<a href="data:;base64,{base64.b64encode(b"MZlate" + bytes(200)).decode()}">'
    page = early + " " * (5 * MB) + late
    notes: list[str] = []
    found = scan(page, notes)
    assert [head[:2] for _, head in found] == [b"MZ"]
    assert notes == [f"HTML page larger than {4 * MB} bytes: the rest not looked at"]


@pytest.mark.parametrize("offset", [-5000, -300, -40, -5, 0, 3])
def test_a_blob_cut_by_the_end_of_a_window_is_read_whole(offset):
    """A candidate straddling the first window's end is read again from its start."""
    uri = f'<a href="data:application/octet-stream;base64,{B64}" download="x.exe">'
    page = " " * (smuggling.WINDOW + offset) + uri + " tail"
    assert kinds(scan(page)) == [("x.exe", "windows")]
    chain = "var s = " + " + ".join(f'"{piece}"' for piece in chunks(B64, 50)) + "; atob(s);"
    page = "<script>" + " " * (smuggling.WINDOW + offset - 10) + chain
    assert [head[:2] for _, head in scan(page)] == [b"MZ"]


def test_a_blob_longer_than_a_window_is_passed_over_and_the_scan_goes_on():
    big = PE + os.urandom(3 * MB)
    first = f'<a href="data:application/octet-stream;base64,{base64.b64encode(big).decode()}">'
    second = f"<script>var s = '{B64}'; new Blob([atob(s)]);</script>"
    found = scan("<html>" + first + second)
    assert [len(head) for _, head in found] == [HEAD, len(PE)]
    assert [kind for _, kind in kinds(found)] == ["windows", "windows"]


def test_joined_pieces_longer_than_a_window_are_one_file():
    big = base64.b64encode(PE + os.urandom(3 * MB)).decode()
    page = "<script>var s = " + " +\n  ".join(f'"{piece}"' for piece in chunks(big, 100)) + ";"
    found = scan(page + f"</script><a href='data:;base64,{B64}'>")
    assert [(len(head), head[:2]) for _, head in found] == [(HEAD, b"MZ"), (len(PE), b"MZ")]


# -- never raises, stays linear ---------------------------------------------------------------

TOKENS = [
    b"data:",
    b"data:;base64,",
    b"data:text/html,",
    b"&colon;",
    b'"',
    b"'",
    b"`",
    b" + ",
    b"+",
    b",",
    b"\\\n",
    b"\n",
    B64[:100].encode(),
    B64.encode(),
    b"download=",
    b'download="x.exe"',
    b"new Blob(",
    b"atob(",
    b"msSaveOrOpenBlob(b, 'a.js')",
    b"<a ",
    b">",
    b"\xff\xfe",
    b"\x00",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS) | st.binary(max_size=40), max_size=60))
def test_blobs_never_raises_on_pages_made_of_its_own_tokens(parts):
    page = b"".join(parts)
    found = scan(page)
    assert len(found) <= smuggling.MAX_BLOBS
    assert all(isinstance(label, str) and len(head) <= HEAD for label, head in found)
    filetypes.page(page)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_blobs_never_raises_on_arbitrary_bytes(data):
    scan(data)
    filetypes.page(data)


ADVERSARIAL = {
    "data: repeated": lambda n: b"data:" * (n // 5),
    "data:;base64, then no end": lambda n: b'"data:;base64,' + b"A" * n,
    "a quote, then base64 without an end": lambda n: b'"' + b"A" * n,
    "base64 characters": lambda n: b"A" * n,
    "quotes": lambda n: b'"' * n,
    "short joined pieces": lambda n: b'"a"+' * (n // 4),
    "pieces of 16": lambda n: b'"AAAAAAAAAAAAAAAA" ' * (n // 19),
    "download= repeated": lambda n: b'download="' * (n // 10),
    "a name without an end": lambda n: b'download="' + b"x" * n,
    "white space after a quote": lambda n: b'"' + b" " * n,
    "glue": lambda n: b'"AAAAAAAAAAAAAAAAAAAA"' + b" + " * (n // 3),
    "ordinary html": lambda n: (
        b"<p class=\"x\">Hello, world. Some text with 'quotes'.</p>\n" * (n // 56)
    ),
}


def _cost(data: bytes) -> float:
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        best = float("inf")
        for _ in range(5):  # the best of five: other processes share the machine
            start = time.perf_counter()
            for _ in smuggling.blobs(file.fileno()):
                pass
            best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("shape", list(ADVERSARIAL))
def test_the_scan_is_linear_in_the_page_size(shape):
    make = ADVERSARIAL[shape]
    small_page, large_page = make(MB), make(8 * MB)
    for _ in range(3):  # a quadratic scan fails every time; a busy machine only sometimes
        small, large = _cost(small_page), _cost(large_page)
        if large < max(small, 0.01) * 12:
            break
    assert large < max(small, 0.01) * 12, (shape, small, large)


# -- content kinds ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 2])
def test_compiled_html_help_is_a_script(version):
    chm = b"ITSF" + struct.pack("<II", version, 0x60) + b"\x01\x00\x00\x00" + b"\x00" * 200
    assert filetypes.content_kind(chm, attachment=True) == ("script", "compiled HTML help (CHM)")
    assert filetypes.content_kind(chm, attachment=False) == ("script", "compiled HTML help (CHM)")
    assert filetypes.content_kind(b"ITSF" + b"\x09" + bytes(200), attachment=True) is None


REG = "Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER\\Software\\x]\r\n"


@pytest.mark.parametrize(
    "data",
    [
        "\ufeff".encode("utf-16-le") + REG.encode("utf-16-le"),  # what regedit writes
        REG.encode("utf-16-le"),
        ("\ufeff" + REG).encode("utf-16-be"),
        b"\xef\xbb\xbf" + REG.encode(),
        REG.encode(),
        b"REGEDIT4\r\n\r\n[HKEY_CURRENT_USER\\Software\\x]\r\n",
        b"  \tREGEDIT4\r\n[HKEY_CURRENT_USER\\x]\r\n",  # regedit skips spaces and tabs
        "\ufeff \t".encode("utf-16-le") + REG.encode("utf-16-le"),
        b"REGEDIT\r\nHKEY_CLASSES_ROOT\\exefile\\shell\\open\\command = x.exe\r\n",  # 3.1
        b"   REGEDIT\nHKEY_CLASSES_ROOT\\.txt = x\n",
    ],
)
def test_registry_files_in_every_form_regedit_reads(data):
    assert filetypes.content_kind(data, attachment=True)[0] == "script"


@pytest.mark.parametrize(
    "data",
    [
        b"REGEDIT is the registry editor.\nIt edits the registry.\n",
        b"Notes: regedit\n",
        b"\n\nREGEDIT4\r\n",  # not on the first line: regedit refuses it
    ],
)
def test_text_about_regedit_is_not_a_registry_file(data):
    assert filetypes.content_kind(data, attachment=True) is None


# -- end to end (the integrator unskips these once the check calls smuggling.py) ---------------


def html_part(page: bytes, name: bytes = b"invoice.html") -> bytes:
    return (
        b'Content-Type: text/html; charset=utf-8; name="' + name + b'"\n'
        b'Content-Disposition: attachment; filename="' + name + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(page)
    )


def test_an_html_attachment_smuggling_an_executable_is_refused(qq):
    page = f'<html><a href="data:application/octet-stream;base64,{B64}">open</a></html>'
    out = qq.submit(mime(TEXT_PART, html_part(page.encode())), ENV)
    assert_clean_failure(out, 31)
    assert out.field("check") == "mime"
    assert "DOS/Windows executable" in out.field("reason")


def test_an_html_attachment_with_the_atob_idiom_is_refused(qq):
    out = qq.submit(mime(TEXT_PART, html_part(SMUGGLER.format(b64=B64).encode())), ENV)
    assert_clean_failure(out, 31)
    assert out.field("reason").startswith('attachment "invoice.html": ')


def test_an_svg_attachment_smuggling_a_zipped_executable_is_refused(qq):
    noise = random.Random(7).randbytes(3000)  # a real payload is far over the 1,000 characters
    archive = base64.b64encode(zip_of(("invoice.pdf.exe", PE + noise))).decode()
    page = f'<svg xmlns="http://www.w3.org/2000/svg"><script>var z = "{archive}";</script></svg>'
    out = qq.submit(mime(TEXT_PART, html_part(page.encode(), b"scan.svg")), ENV)
    assert_clean_failure(out, 31)
    assert "invoice.pdf.exe" in out.field("reason")


def test_an_html_newsletter_with_inline_images_passes(qq):
    image = base64.b64encode(png(8, 8)).decode()
    page = f'<html><body><img src="data:image/png;base64,{image}"><p>News</p></body></html>'
    out = qq.submit(mime(TEXT_PART, html_part(page.encode(), b"news.html")), ENV)
    assert out.returncode == 0, out.stderr
