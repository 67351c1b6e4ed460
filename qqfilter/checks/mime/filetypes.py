"""What kind of file a part's first bytes are, and what kind its name says it is.

Content first: magic numbers for the executable formats and compiled HTML help (CHM, which
runs its scripts when opened, so it counts as a "script"; no library needed), then libmagic
(python-magic, imported on first use) for what has no fixed number at offset 0 (disk images,
batch files), then, for attachments only, Windows Registry files in any of the encodings
regedit reads (libmagic knows some of them only), and the marks of Windows script hosts (WSH
objects in JScript/VBScript, HTA, PowerShell download-and-run idioms), which libmagic calls
"text".
"""

import re
import sys

_MAGIC_NUMBERS = (
    (b"MZ", "windows", "DOS/Windows executable (MZ)"),
    (b"\x7fELF", "elf", "ELF executable"),
    (b"\xfe\xed\xfa\xce", "macho", "Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "macho", "Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "macho", "Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "macho", "Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "java", "Java class file or Mach-O universal binary"),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "shortcut", "Windows shortcut (LNK)"),
    (b"ITSF\x03\x00\x00\x00", "script", "compiled HTML help (CHM)"),
    (b"ITSF\x02\x00\x00\x00", "script", "compiled HTML help (CHM)"),  # older, same reader
)
_LIBMAGIC = (
    ("PE32", "windows"),
    ("MS-DOS executable", "windows"),
    ("ELF ", "elf"),
    ("Mach-O", "macho"),
    ("MS Windows shortcut", "shortcut"),
    ("DOS batch file", "script"),
    ("Windows Registry text", "script"),
    ("Windows Registry little-endian text", "script"),  # UTF-16LE with a BOM, regedit's own
    ("Windows Registry big-endian text", "script"),
    ("ISO 9660", "diskimage"),
    ("UDF filesystem", "diskimage"),
    ("FAT (", "diskimage"),  # a FAT file system image; a bare boot-sector mark is too weak
    ("Microsoft Disk Image", "diskimage"),
    ("Java archive", "java"),
    ("compiled Java class", "java"),
)
_SCRIPT_MARKS = re.compile(
    rb"<hta:application|wscript\.shell|wscript\.createobject|activexobject\s*\(|"
    rb"createobject\s*\(\s*\"(?:wscript|shell\.application|scripting\.filesystemobject)|"
    rb"invoke-expression|\biex\s*\(|-encodedcommand\b|downloadstring\s*\(|"
    rb"new-object\s+system\.net\.webclient|frombase64string\s*\("
)
_REGISTRY_HEADERS = ("windows registry editor", "regedit4")
_REGISTRY_31 = "regedit"
"""Windows 3.1's header: the whole first line (its HKEY_CLASSES_ROOT lines are imported too)."""
_REGISTRY_FORMS = (
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"", "utf-16-le"),
    (b"", "utf-16-be"),
    (b"", "latin-1"),
)
"""Where a .reg file's header may be: after a byte-order mark or not, in UTF-16 (what regedit
writes) or 8-bit text. libmagic names UTF-16LE with a BOM and plain text only. regedit reads
UTF-16LE after its BOM and 8-bit text otherwise (Wine's regedit, written against Windows'
behaviour: programs/regedit/regproc.c); the other forms are read too, since a gate loses
nothing by it. UTF-32 is not read by regedit, so it is not listed."""
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def content_kind(head: bytes, *, attachment: bool) -> tuple[str, str] | None:
    """(kind, description) when ``head`` is one of KINDS, else None.

    Message text that is not an attachment is only checked for executable magic numbers:
    libmagic and the script marks are for files a user would open.
    """
    for number, kind, description in _MAGIC_NUMBERS:
        if head.startswith(number):
            return kind, description
    if not head or not attachment:
        return None  # message text: only the magic numbers above make it a file
    description = _libmagic(head)
    for mark, kind in _LIBMAGIC:
        if mark in description:
            return kind, description.split(",")[0]
    if _registry_file(head):
        return "script", "Windows Registry file"
    if _SCRIPT_MARKS.search(head[:16384].lower()):
        return "script", "Windows script (WSH, HTA or PowerShell)"
    return None


def _registry_file(head: bytes) -> bool:
    """Does ``head`` start as a file regedit imports (its header, in any of _REGISTRY_FORMS)?"""
    start = head[:1024]  # room for the spaces and tabs regedit skips before the header
    for bom, codec in _REGISTRY_FORMS:
        if start.startswith(bom):
            text = start[len(bom) :].decode(codec, "ignore").lstrip(" \t").lower()
            if text.startswith(_REGISTRY_HEADERS):
                return True
            if text.split("\n", 1)[0].rstrip("\r") == _REGISTRY_31 and "\n" in text:
                return True
    return False


def _libmagic(head: bytes) -> str:
    if "magic" not in sys.modules:
        _find_libmagic()
    import magic

    try:
        return magic.from_buffer(head)
    except Exception:  # libmagic's own failure on odd input: no description, no crash
        return ""


LIBMAGIC_SONAME = "libmagic.so.1"
"""libmagic's name on Linux (Debian's libmagic1): loaded by that name, no search needed."""


def _find_libmagic() -> None:
    """Have python-magic load libmagic by LIBMAGIC_SONAME. Its own loader first asks
    ``ctypes.util.find_library``, which runs ldconfig (about 15-25 ms, paid by every one-shot
    run that asks libmagic): a stand-in for ``magic.loader`` tries the soname first and hands
    over to the real loader when that fails (another system, another name)."""
    import ctypes

    def load_lib() -> ctypes.CDLL:
        try:
            return ctypes.CDLL(LIBMAGIC_SONAME)
        except OSError:
            del sys.modules["magic.loader"]  # the real one, with its search
            import magic.loader

            return magic.loader.load_lib()

    stand_in = type(sys)("magic.loader")
    stand_in.load_lib = load_lib  # type: ignore[attr-defined]
    sys.modules["magic.loader"] = stand_in


def name_problem(name: str, blocked: frozenset[str]) -> str:
    """Why the file name ``name`` is refused ("" if it is not): a blocked extension, also
    behind trailing dots or spaces (Windows drops them), or right-to-left marks that make
    ``invoice\\u202efdp.exe`` look like ``invoiceexe.pdf``."""
    if _BIDI.search(name):
        return "file name holds text-direction marks"
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(" .").lower()
    if "." not in base:
        return ""
    extension = base.rsplit(".", 1)[1]
    if extension in blocked:
        return f"blocked file name extension .{extension}"
    return ""


# Files judged whole (documents) or read for what they carry (pages): told here, from the
# head, so that the modules that read them (office.py, pdf.py, smuggling.py) are imported
# only for the messages that have such a file.

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
RTF_MAGIC = b"{\\rt"  # Word opens {\rt as RTF, as rtfobj knows
_MARKUP = re.compile(
    rb"<(?:!doctype\s++html|html|svg|script|head|body|meta|iframe|title|style|div|form|img|a)"
    rb"[\s>/:]"
)


def office_document(head: bytes) -> bool:
    """An OLE2 compound file or RTF (office.py reads them whole)."""
    return head.startswith(OLE2_MAGIC) or head.startswith(RTF_MAGIC)


def pdf_document(head: bytes) -> bool:
    """A PDF: ``%PDF-`` within the first 1024 bytes, as readers accept junk before it."""
    return b"%PDF-" in head[:1024]


def page(head: bytes) -> bool:
    """An HTML or SVG page (smuggling.py reads what it carries). Leniently: ``<html``,
    ``<!doctype html``, ``<svg``, ``<script`` (or ``<head``, ``<body``, ``<meta``,
    ``<iframe``, ...) in its first KB, in any case, after a byte-order mark and white space;
    also in UTF-16, with or without a byte-order mark."""
    codec, skip = utf16_form(head)
    if codec:
        text = head[skip : skip + 2048].decode(codec, "replace").encode("latin-1", "replace")
    else:
        text = head.removeprefix(b"\xef\xbb\xbf")
    return bool(_MARKUP.search(text.lstrip()[:1024].lower()))


def utf16_form(head: bytes) -> tuple[str, int]:
    """("utf-16-le" or "utf-16-be", byte-order mark length) when ``head`` is UTF-16 text
    (by its mark, or by the zero bytes of ASCII text in it), else ("", 0)."""
    if head.startswith(b"\xff\xfe"):
        return "utf-16-le", 2
    if head.startswith(b"\xfe\xff"):
        return "utf-16-be", 2
    sample = head[:512]
    if len(sample) >= 8:
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) * 10 >= len(odd) * 9 and even.count(0) * 10 < len(even):
            return "utf-16-le", 0
        if even.count(0) * 10 >= len(even) * 9 and odd.count(0) * 10 < len(odd):
            return "utf-16-be", 0
    return "", 0
