"""Office documents that run code: VBA and Excel 4 macros, Windows Installer packages dressed
as documents, and executables packed into OLE objects (OLE2 files and RTF).

A pure function the attachment check calls on a part (or an archive member, such as an
OOXML document's ``vbaProject.bin``) whose first bytes ``filetypes.office_document`` calls
OLE2 or RTF (told there, so this module is imported only then): ``problem`` gets a
descriptor of the whole decoded file and returns ``(kind, reason)`` or None. The shape follows
from the queue path's rules: nothing here runs unless the head says OLE2 or RTF, so the
libraries load only then (olefile ~15 ms; olevba ~180 ms only when a VBA storage is there);
the file is read through ``os.pread`` (olefile gets a file object over it, so the caller's
offset does not move and a large file is not read whole), and every hostile shape is bounded
by this module's own limits, not by the libraries': olevba's MS-OVBA decompressor and rtfobj's
RTF parser are pure-Python loops without an output bound (a 1 MB module stream can ask for
~680 MB; rtfobj is quadratic on text), so the VBA source is decompressed here with a cap, the
``dir`` stream is read here, and olevba contributes its AutoExec keyword detection; RTF
objects are found by a linear scan of a memory map, and their OLE1/Package structures are read
here, leniently, from a bounded prefix.

Any exception inside becomes None: a file this module cannot read is left to the other tests
(names, content kinds, the virus scanner), never a crash of the check.
"""

from __future__ import annotations

import os
import re
import struct

from qqfilter.checks.mime.filetypes import OLE2_MAGIC, RTF_MAGIC
from qqfilter.checks.mime.kinds import BLOCKED_EXTENSIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

MAX_FILE = 50_000_000
"""Files larger than this are not looked into (None): no document mail carries is that big."""
MAX_STREAM = 16_000_000
"""OLE streams larger than this are not read (olefile reads a stream whole)."""
MAX_SOURCE = 1_000_000
"""Decompressed VBA source kept per module; the AutoExec names are near the top anyway."""
MAX_SOURCE_TOTAL = 4_000_000
MAX_MODULES = 200
MAX_NATIVE = 64
"""Ole10Native (Packager) streams looked at per OLE2 file."""
MAX_OBJECTS = 100_000
"""RTF \\objdata groups looked at per file; each also costs OBJECT_TOKENS of the budget, so
decoys in front of the object that matters cost time, not the look at it."""
OBJECT_TOKENS = 8
MAX_OBJECT = 2_000_000
"""Bytes of one RTF object decoded from its hex (enough for an embedded document)."""
MAX_TOKENS = 2_000_000
"""RTF tokens walked inside \\objdata groups per file (each a Python step: ~1 s at most)."""
HEAD = 40_960
"""Bytes of a packed file judged by content, as for any part."""

MSI_CLSIDS = frozenset(
    (
        "000C1084-0000-0000-C000-000000000046",  # Windows Installer package (.msi)
        "000C1086-0000-0000-C000-000000000046",  # patch (.msp)
        "000C1082-0000-0000-C000-000000000046",  # transform (.mst)
    )
)
_OPEN_EVENTS = re.compile(r"_(?:Painted|Painting|GotFocus|Layout|Resize)$", re.I)
"""olevba's ActiveX event names that fire as the document opens (InkPicture1_Painted,
Frame1_Layout, ...). Its other event names (_Click, _Change, _MouseMove, ...) wait for the
user, so "autoexec" does not count them."""


def problem(
    fd: int,
    head: bytes,
    macros: str,
    blockext: frozenset[str] = frozenset(BLOCKED_EXTENSIONS),
) -> tuple[str, str] | None:
    """(kind, reason) when the document runs code, else None.

    kind: "macro" (VBA or Excel 4 macros, per ``macros``: "off", "autoexec", "any"),
    "windows" (a Windows Installer package), or, for a packed object, the kind
    filetypes.content_kind gives its content ("windows", "elf", "script", ...) or
    "extension" when its file name has an extension in ``blockext``.
    ``fd`` is not closed and its offset does not move.
    """
    try:
        size = os.fstat(fd).st_size
        if size > MAX_FILE:
            return None
        if head.startswith(OLE2_MAGIC):
            return _ole2(_PreadFile(fd, size), macros, blockext)
        if head.startswith(RTF_MAGIC) and size:
            return _rtf(fd, size, macros, blockext)
    except Exception:  # hostile or broken files: the other tests judge them
        return None
    return None


class _PreadFile:
    """A read-only file object over a descriptor, with its own position (os.pread): olefile
    seeks and reads sectors; the caller's descriptor is neither moved nor closed."""

    closed = False

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pos = fd, size, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        data = os.pread(self.fd, max(0, min(n, self.size - self.pos)), self.pos)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.pos, self.size)[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        pass


def _ole2(fp: Any, macros: str, blockext: frozenset[str]) -> tuple[str, str] | None:
    import olefile

    ole = olefile.OleFileIO(fp)
    try:
        clsid = (ole.root.clsid or "").upper() if ole.root else ""
        if clsid in MSI_CLSIDS:
            return "windows", "Windows Installer package (MSI)"
        streams = ole.listdir(streams=True, storages=False)
        looks = [lambda: _packages(ole, streams, blockext)]
        if macros != "off":
            looks += [lambda: _vba(ole, streams, macros), lambda: _xlm(ole, streams, macros)]
        for look in looks:
            try:
                found = look()
            except Exception:  # one broken part hides nothing from the next look
                continue
            if found:
                return found
        return None
    finally:
        ole.close()


def _read_stream(ole: Any, path: list[str], limit: int = MAX_STREAM) -> bytes:
    """The first ``limit`` bytes of a stream; nothing from one over MAX_STREAM (olefile
    reads a stream whole before the first byte can be had)."""
    if ole.get_size(path) > MAX_STREAM:
        return b""
    return bytes(ole.openstream(path).read(limit))


# Embedded objects: OLE Package (Packager) in Ole10Native streams, and RTF \objdata.


def _packages(
    ole: Any, streams: list[list[str]], blockext: frozenset[str]
) -> tuple[str, str] | None:
    natives = [path for path in streams if path[-1].lower() == "\x01ole10native"]
    for path in natives[:MAX_NATIVE]:
        try:
            data = _read_stream(ole, path, 4 + 4096 * 3 + HEAD)
        except Exception:  # a stream olefile cannot read: the next one may be the one
            continue
        found = _judge_package(data[4:], blockext)  # a 4-byte size, then the package
        if found:
            return found
    return None


def _judge_package(data: bytes, blockext: frozenset[str]) -> tuple[str, str] | None:
    """An OLE Package (MS-OLEDS Packager: label, source path, temporary path, data): any of
    its file names with a blocked extension, or data that is an executable or a script."""
    from qqfilter.checks.mime import filetypes

    names, payload = _parse_package(data)
    label = next((n for n in names if n), "(no name)")
    for name in names:
        why = filetypes.name_problem(name, blockext) if name else ""
        if why:
            return "extension", f'embedded object "{label}": {why}'
    kind = filetypes.content_kind(payload[:HEAD], attachment=True) if payload else None
    if kind:
        return kind[0], f'embedded object "{label}": {kind[1]}'
    return None


def _parse_package(data: bytes) -> tuple[list[str], bytes]:
    """(file names, content) of a Packager structure, read as far as it goes."""
    names: list[str] = []
    pos = 2  # the type, 2 = embedded
    for _ in range(2):  # the label (file name), the source path
        end = data.find(b"\0", pos, pos + 4096)
        if end < 0:
            return names, b""
        names.append(data[pos:end].decode("latin-1"))
        pos = end + 1
    pos += 8  # reserved and the type again (00 00 03 00), then the temporary path's length
    end = data.find(b"\0", pos, pos + 4096)
    if end < 0:
        return names, b""
    names.append(data[pos:end].decode("latin-1"))
    pos = end + 1
    if pos + 4 > len(data):
        return names, b""
    (size,) = struct.unpack_from("<I", data, pos)
    return names, data[pos + 4 : pos + 4 + size]


# VBA: the project's dir stream names the modules and where each one's source starts.


def _vba(ole: Any, streams: list[list[str]], macros: str) -> tuple[str, str] | None:
    dirs = [
        path
        for path in streams
        if len(path) >= 2 and path[-1].lower() == "dir" and path[-2].upper() == "VBA"
    ]
    if not dirs:
        return None
    total = 0
    for dir_path in dirs:
        storage = dir_path[:-1]
        for module, code in _modules(ole, storage, streams):
            total += len(code)
            text = code.decode("latin-1")
            if macros == "any" and _has_code(text):
                return "macro", f"Office document with a VBA macro (module {module})"
            if macros == "autoexec":
                keyword, on_open = _autoexec(text)
                if keyword:
                    when = "runs on open" if on_open else "runs by itself"
                    return "macro", f"Office document with a macro that {when} ({keyword})"
            if total > MAX_SOURCE_TOTAL:
                return None
    return None


def _modules(ole: Any, storage: list[str], streams: list[list[str]]) -> Iterator[tuple[str, bytes]]:
    """(module name, decompressed source) of each module of the VBA storage: by the dir
    stream's records, or, when those name none, any stream holding a compressed source."""
    raw = _read_stream(ole, [*storage, "dir"], 1_000_000)
    modules = _dir_modules(_decompress(raw, 0, 4_000_000)) if raw else []
    seen = 0
    for name, stream, offset in modules[:MAX_MODULES]:
        path = [*storage, stream]
        try:
            data = _read_stream(ole, path) if ole.exists(path) else b""
        except Exception:  # a stream olefile cannot read: the next one may be the one
            data = b""
        if not data:
            continue
        try:
            code = _decompress(data, offset, MAX_SOURCE)
        except (ValueError, IndexError):
            code = _found_source(data)
        seen += 1
        yield name, code
    if seen:
        return
    lower = [s.lower() for s in storage]
    for path in streams:  # a dir stream that names nothing: look at the streams themselves
        if len(path) == len(storage) + 1 and [p.lower() for p in path[:-1]] == lower:
            if path[-1].lower() in ("dir", "_vba_project") or path[-1].startswith("__SRP_"):
                continue
            try:
                code = _found_source(_read_stream(ole, path))
            except Exception:
                continue
            if code:
                yield path[-1], code


def _found_source(data: bytes) -> bytes:
    """A compressed source found by its first bytes ("Attribut" as a literal run), as
    olevba looks for code in streams the dir stream does not name."""
    at = data.find(b"\x00Attribut")
    while at >= 3:
        start = at - 3
        if data[start] == 1 and data[start + 2] & 0x70 == 0x30:
            try:
                return _decompress(data, start, MAX_SOURCE)
            except (ValueError, IndexError):
                pass
        at = data.find(b"\x00Attribut", at + 1)
    return b""


def _dir_modules(data: bytes) -> list[tuple[str, str, int]]:
    """(name, stream name, source offset) of each module, from a decompressed dir stream
    (MS-OVBA 2.3.4.2: records of id, size, data; PROJECTVERSION's size field lies)."""
    modules: list[tuple[str, str, int]] = []
    name = stream = ""
    offset = 0
    pos, end = 0, len(data)
    while pos + 6 <= end:
        ident, size = struct.unpack_from("<HI", data, pos)
        pos += 6
        if ident == 0x0009:  # PROJECTVERSION: reserved(4) = 4, then major (4) and minor (2)
            pos += 6
            continue
        value = data[pos : pos + size]
        pos += size
        if ident == 0x0019:  # MODULENAME
            name, stream, offset = value.decode("latin-1"), "", 0
        elif ident == 0x001A and not stream:  # MODULESTREAMNAME
            stream = value.decode("latin-1")
        elif ident == 0x0032 and value:  # its Unicode form, what the OLE directory holds
            stream = value.decode("utf-16-le", "replace")
        elif ident == 0x0031 and size >= 4:  # MODULEOFFSET
            (offset,) = struct.unpack_from("<I", value)
        elif ident == 0x002B:  # the module's terminator
            if stream or name:
                modules.append((name, stream or name, offset))
            name = stream = ""
            offset = 0
        elif ident == 0x0010:  # the dir stream's terminator
            break
    return modules


def _decompress(data: bytes, start: int, limit: int) -> bytes:
    """MS-OVBA 2.4.1 decompression of the container at ``start``, at most ``limit`` bytes out
    (olevba's has no bound: a 6-byte chunk may ask for 4 KB)."""
    if data[start] != 1:
        raise ValueError("not a compressed container")
    out = bytearray()
    pos, end = start + 1, len(data)
    while pos + 2 <= end and len(out) < limit:
        (header,) = struct.unpack_from("<H", data, pos)
        if header >> 12 & 7 != 3:
            break
        chunk_end = min(end, pos + (header & 0x0FFF) + 3)
        pos += 2
        chunk_start = len(out)
        if not header & 0x8000:  # a raw chunk: 4096 bytes as they are
            out += data[pos : pos + 4096]
            pos += 4096
            continue
        while pos < chunk_end and len(out) < limit:
            flags = data[pos]
            pos += 1
            for bit in range(8):
                if pos >= chunk_end:
                    break
                if not flags >> bit & 1:
                    out.append(data[pos])
                    pos += 1
                    continue
                if pos + 2 > chunk_end:
                    pos = chunk_end
                    break
                (token,) = struct.unpack_from("<H", data, pos)
                pos += 2
                bits = max((len(out) - chunk_start - 1).bit_length(), 4)
                length = (token & (0xFFFF >> bits)) + 3
                offset = (token >> (16 - bits)) + 1
                source = len(out) - offset
                if source < chunk_start:
                    raise ValueError("copy token before the chunk")
                piece = bytes(out[source : source + min(offset, length)])
                out += (piece * (length // len(piece) + 1))[:length]
        pos = max(pos, chunk_end)
    return bytes(out[:limit])


def _has_code(text: str) -> bool:
    """Is there more than the Attribute lines every module (even an empty one) has?"""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Attribute ", "Option ", "'")):
            return True
    return False


def _olevba() -> Any:
    """oletools.olevba, imported with its deprecation warnings silenced: stderr is the log,
    and a warnings setting (PYTHONWARNINGS, -W) must not add lines to it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from oletools import olevba
    return olevba


def _autoexec(text: str) -> tuple[str, bool]:
    """(keyword, runs when opened) of the first macro that runs without the user asking,
    by olevba's AutoExec detection; ("", False) when there is none."""
    olevba = _olevba()

    found = ""
    for keyword, description in olevba.detect_autoexec(text):
        if description in olevba.AUTOEXEC_KEYWORDS or _OPEN_EVENTS.search(keyword):
            on_open = "open" in description
            if on_open:
                return keyword, True
            found = found or keyword
    return found, False


# Excel 4 (XLM) macro sheets: a BOUNDSHEET record of type "macro sheet" in the Workbook.


def _xlm(ole: Any, streams: list[list[str]], macros: str) -> tuple[str, str] | None:
    book = next((p for p in streams if len(p) == 1 and p[0].lower() in ("workbook", "book")), None)
    if not book:
        return None
    data = _read_stream(ole, book, MAX_STREAM)
    sheets = auto_open = False
    pos, end = 0, min(len(data), 8_000_000)
    for _ in range(200_000):  # records of the globals substream, at most
        if pos + 4 > end:
            break
        kind, size = struct.unpack_from("<HH", data, pos)
        body = data[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if kind == 0x0085 and len(body) >= 6 and body[5] == 0x01:  # BOUNDSHEET, macro sheet
            sheets = True
        elif kind == 0x0018 and len(body) >= 16:  # NAME (Lbl): built-in 1 is Auto_Open
            builtin = body[0] & 0x20
            text = body[15 : 15 + body[3] * (2 if body[14] & 1 else 1)]
            if (builtin and text[:1] == b"\x01") or b"auto_open" in text.lower().replace(
                b"\0", b""
            ):
                auto_open = True
        elif kind == 0x000A:  # EOF of the globals
            break
    if sheets and auto_open:
        return "macro", "Office document with an Excel 4 macro that runs on open (Auto_Open)"
    if sheets and macros == "any":
        return "macro", "Office document with an Excel 4 (XLM) macro sheet"
    return None


# RTF: \objdata groups, decoded from hex as Word reads them (rtfobj's reading, linear).

_OBJDATA = re.compile(rb"\\objdata")
_TOKEN = re.compile(
    rb"[^{}\\]+|\{|\}|\\bin(-?\d{1,250}) ?|\\([a-zA-Z]{1,250})(?:-?\d{1,250})? ?|\\'..|\\.|\\",
    re.S,
)
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]+")


def _rtf(fd: int, size: int, macros: str, blockext: frozenset[str]) -> tuple[str, str] | None:
    import mmap

    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
        budget = [MAX_TOKENS]
        pos = 0
        for _ in range(MAX_OBJECTS):
            match = _OBJDATA.search(view, pos)
            if not match or budget[0] <= 0:
                return None
            budget[0] -= OBJECT_TOKENS
            data, pos = _objdata(view, match.end(), budget)
            try:
                found = _judge_object(data, macros, blockext)
            except Exception:  # a broken object hides nothing from the next one
                continue
            if found:
                return found
    return None


def _objdata(view: Any, pos: int, budget: list[int]) -> tuple[bytes, int]:
    """The bytes of the \\objdata group from ``pos`` (after the control word), and where the
    walk stopped. As rtfobj reads it: hex digits of the group's text and of nested plain
    groups; nested destinations ({\\* ...}, {\\objclass ...}) skipped; \\bin data taken as it
    is; \\'hh dropped, and with it a dangling hex digit (Word's quirk)."""
    from oletools.rtfobj import DESTINATION_CONTROL_WORDS

    hexdigits = bytearray()
    depth, skip_from = 0, -1  # skip_from: the depth of a nested destination being skipped
    after_brace = False
    size = len(view)
    while pos < size and budget[0] > 0 and len(hexdigits) < 2 * MAX_OBJECT:
        match = _TOKEN.match(view, pos)
        if not match:
            break
        budget[0] -= 1
        pos = match.end()
        token = match.group()
        first = token[:1]
        opened, after_brace = after_brace, False
        if first == b"{":
            depth += 1
            after_brace = True
            continue
        if first == b"}":
            if depth == 0:
                break
            if skip_from == depth:
                skip_from = -1
            depth -= 1
            continue
        if skip_from >= 0:
            continue
        if first != b"\\":
            hexdigits += _NOT_HEX.sub(b"", token)
        elif match.group(1) is not None:  # \binN: raw bytes
            count = max(0, int(match.group(1)))
            count = min(count, 2 * MAX_OBJECT)
            hexdigits += view[pos : pos + count].hex().encode()
            pos += count
        elif match.group(2) is not None:  # a control word: a destination opens there
            if match.group(2) in DESTINATION_CONTROL_WORDS:
                if depth == 0:
                    break  # a new destination at the group's own level ends \objdata
                skip_from = depth
        elif token == b"\\*" and opened and depth > 0:
            skip_from = depth
        elif token.startswith(b"\\'") and len(hexdigits) & 1:
            del hexdigits[-1]
    if len(hexdigits) & 1:
        del hexdigits[-1]
    return bytes.fromhex(hexdigits[: 2 * MAX_OBJECT].decode("ascii")), pos


def _judge_object(data: bytes, macros: str, blockext: frozenset[str]) -> tuple[str, str] | None:
    """An OLE1 object (MS-OLEDS 2.2): a Package's names and content, an executable, or an
    embedded OLE2 document judged as one (its macros, its packages)."""
    from qqfilter.checks.mime import filetypes

    class_name, payload = _parse_ole1(data)
    if class_name.lower() == b"package":
        return _judge_package(payload, blockext)
    if payload.startswith(OLE2_MAGIC):
        import io

        try:
            return _ole2(io.BytesIO(payload), macros, blockext)
        except Exception:  # a cut or broken document inside: as good as none
            return None
    kind = filetypes.content_kind(payload[:HEAD], attachment=True) if payload else None
    if kind and kind[0] in ("windows", "elf", "macho"):
        name = class_name.decode("latin-1") or "(no class)"
        return kind[0], f'embedded object "{name}": {kind[1]}'
    return None


def _parse_ole1(data: bytes) -> tuple[bytes, bytes]:
    """(class name, native data) of an OLE1 object; the data as far as it goes."""
    if len(data) < 12:
        return b"", b""
    _version, format_id = struct.unpack_from("<II", data)
    pos = 8
    strings = []
    for _ in range(3):  # class name, topic, item: length-prefixed
        if pos + 4 > len(data):
            return b"", b""
        (length,) = struct.unpack_from("<I", data, pos)
        strings.append(data[pos + 4 : pos + 4 + min(length, 4096)].rstrip(b"\0"))
        pos += 4 + length
    if format_id != 2 or pos + 4 > len(data):
        return strings[0], b""
    (size,) = struct.unpack_from("<I", data, pos)
    return strings[0], data[pos + 4 : pos + 4 + size]
