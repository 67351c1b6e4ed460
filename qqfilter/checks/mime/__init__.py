"""Attachments (the check ``mime``): executables and scripts refused by content and by name,
in any wrapping, archive or document.

One streaming MIME walk; for each leaf part, in order of cost: s/qmail's WarLord signature
(BADMIMETYPE), every file name a client may use, the decoded head's kind of content,
WarLord's loader fragments (BADLOADERTYPE, a scan of the whole base64 body); then, told from
the head, what needs the whole decoded file: an HTML or SVG page's smuggled files, a
document that runs code (Office macros, packed executables, PDF actions and embedded files),
and a container's members (zip, 7z, rar, cab, tar, ISO, TNEF, ...: names, kinds, documents,
encryption, containers inside). The first failure refuses the message, category
"attachment" (31, or 34 with QQF_CODES=sqmail); the reason names the part and the file.
A MIME structure past the limits cannot be checked, and is refused as such; what archive
budgets stopped is noted in the log line.

Its helpers: walk.py (the streaming MIME walk), names.py (file names), filetypes.py (what a
file's bytes and name say it is), kinds.py (the default lists), warlord.py (s/qmail's
tests), archives.py (the archive layer) with its readers (zipread.py, containers.py, arj.py,
tnef.py, binhex.py, udf.py), office.py and pdf.py (documents), smuggling.py (pages). Each is
imported when a part needs it: filetypes tells which from the head.
"""

from __future__ import annotations

import os

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.checks.mime.kinds import BLOCKED_EXTENSIONS, KINDS
from qqfilter.message import Message
from qqfilter.settings import (
    QMAILHOME,
    SPOOLDIR,
    Setting,
    Settings,
    bounded,
    byte_count,
    choice,
    count,
    flags,
    subset,
    words,
)

NAME = "mime"
ORDER = 30
BLOCKEXT = Setting(
    "blockext",
    "QQF_BLOCKEXT",
    frozenset(BLOCKED_EXTENSIONS),
    words,
    "attachment file name extensions to refuse (also in archives); none = no name check",
)
BLOCKKINDS = Setting(
    "blockkinds",
    "QQF_BLOCKKINDS",
    frozenset(KINDS),
    subset(*KINDS, "none"),
    "content kinds to refuse in any encoding or archive: " + ", ".join(KINDS),
)
MIMESKIP = Setting(
    "mimeskip",
    "QQF_MIMESKIP",
    frozenset[str](),
    subset("relayclient", "local"),
    "skip the attachment checks (logged) for: relayclient, local (no TCPREMOTEIP)",
    alias="QQF_ATTACHSKIP",
    formerly="attachskip",
)
BADMIMETYPE = Setting(
    "badmimetype",
    "BADMIMETYPE",
    "",
    flags,
    "s/qmail WarLord: set (even empty) turns control/badmimetypes on; ! also refuses white "
    "space in base64, + skips RELAYCLIENT, - is off",
    empty_means_set=True,
    empty_as="on",  # BADMIMETYPE="", as in s/qmail's own rules line: on, no flags
)
BADLOADERTYPE = Setting(
    "badloadertype",
    "BADLOADERTYPE",
    "",
    flags,
    "s/qmail WarLord: the loader character (e.g. M) for control/badloadertypes; "
    "+ skips RELAYCLIENT, - or empty is off",
    empty_means_set=True,  # BADLOADERTYPE="": no character to look for, off (as in s/qmail)
)
MAX_MIMEDEPTH = 100
"""The walk recurses once per level: the setting's ceiling keeps it far from Python's."""
MIMEDEPTH = Setting(
    "mimedepth",
    "QQF_MIMEDEPTH",
    30,
    bounded(1, MAX_MIMEDEPTH),
    "refuse messages whose MIME nesting is deeper than this (they cannot be checked)",
)
MIMEPARTS = Setting(
    "mimeparts",
    "QQF_MIMEPARTS",
    1000,
    count,
    "refuse messages with more MIME parts than this (they cannot be checked)",
)
MAX_ARCHIVEDEPTH = 10
"""Archives in archives are read by nested generators, one per level: a ceiling, as above."""
ARCHIVEDEPTH = Setting(
    "archivedepth",
    "QQF_ARCHIVEDEPTH",
    2,
    bounded(0, MAX_ARCHIVEDEPTH),
    "archives (zip, 7z, rar, cab, tar, ISO, TNEF, ...) looked into, nested up to this "
    "depth; 0 = do not open archives",
)
ARCHIVEMEMBERS = Setting(
    "archivemembers",
    "QQF_ARCHIVEMEMBERS",
    1000,
    count,
    "archive members looked at per message; past it, the rest is noted, not checked",
)
ARCHIVEMAXSIZE = Setting(
    "archivemaxsize",
    "QQF_ARCHIVEMAXSIZE",
    50_000_000,
    byte_count,
    "archives and documents larger than this (decoded) are not opened (noted)",
)
ARCHIVEEXPAND = Setting(
    "archiveexpand",
    "QQF_ARCHIVEEXPAND",
    100_000_000,
    byte_count,
    "bytes decompressed from archives per message, at most (zip bombs stop here)",
)
ENCRYPTED = Setting(
    "encrypted",
    "QQF_ENCRYPTED",
    "accept",
    choice("accept", "refuse"),
    "password-protected archives: accept (judged by their member names) or refuse",
)
MACROS = Setting(
    "macros",
    "QQF_MACROS",
    "autoexec",
    choice("off", "autoexec", "any"),
    "Office documents with VBA macros: autoexec refuses macros that run on open "
    "(AutoOpen, Document_Open, Workbook_Open, ...), any refuses every macro, off looks not",
)
PDFJS = Setting(
    "pdfjs",
    "QQF_PDFJS",
    "accept",
    choice("accept", "refuse"),
    "PDFs with JavaScript: accept or refuse (a /Launch action or an embedded executable "
    "is always refused)",
)
SETTINGS = (
    BLOCKEXT,
    BLOCKKINDS,
    MIMESKIP,
    BADMIMETYPE,
    BADLOADERTYPE,
    MIMEDEPTH,
    MIMEPARTS,
    ARCHIVEDEPTH,
    ARCHIVEMEMBERS,
    ARCHIVEMAXSIZE,
    ARCHIVEEXPAND,
    ENCRYPTED,
    MACROS,
    PDFJS,
)
PRELOAD = (
    "libarchive",
    "magic",
    "olefile",
    "qqfilter.checks.mime.archives",
    "qqfilter.checks.mime.arj",
    "qqfilter.checks.mime.binhex",
    "qqfilter.checks.mime.containers",
    "qqfilter.checks.mime.filetypes",
    "qqfilter.checks.mime.names",
    "qqfilter.checks.mime.office",
    "qqfilter.checks.mime.pdf",
    "qqfilter.checks.mime.smuggling",
    "qqfilter.checks.mime.tnef",
    "qqfilter.checks.mime.udf",
    "qqfilter.checks.mime.walk",
    "qqfilter.checks.mime.warlord",
    "qqfilter.checks.mime.zipread",
)
STATUS = "5.7.1"

TYPE_CHECKING = False
if TYPE_CHECKING:  # the helpers are imported when a message is walked, not at start-up
    from qqfilter.checks.mime.walk import Part
    from qqfilter.checks.mime.warlord import Rules


def check(message: Message, settings: Settings) -> Finding | None:
    """Walk the message and judge each part (and each archive member)."""
    connection = message.connection
    skip = settings[MIMESKIP]
    if "relayclient" in skip and connection.relayclient:
        return Finding(NAME, Finding.CLEAN, "skipped: RELAYCLIENT")
    if "local" in skip and not connection.remote_ip:
        return Finding(NAME, Finding.CLEAN, "skipped: local injection")
    notes: list[str] = []
    rules = _warlord_rules(settings, connection.relayclient, notes)
    blockkinds = settings[BLOCKKINDS] - {"none"}
    if not (settings[BLOCKEXT] or blockkinds or rules):
        return Finding(NAME, Finding.CLEAN, "; ".join(notes)) if notes else None
    from qqfilter.checks.mime.walk import Walk

    spool = message.spool
    walk = Walk(
        spool,
        max_depth=settings[MIMEDEPTH],
        max_parts=settings[MIMEPARTS],
        directory=settings[SPOOLDIR],
    )
    for part in walk:
        found = _judge_part(part, settings, blockkinds, rules, notes)
        if found:
            return found
    if walk.limits:
        return _refuse(
            "message structure too complex to check: " + "; ".join(walk.limits),
            "; ".join(walk.limits),
        )
    return Finding(NAME, Finding.CLEAN, "; ".join(notes)) if notes else None


def _judge_part(
    part: Part,
    settings: Settings,
    blockkinds: frozenset[str],
    rules: Rules | None,
    notes: list[str],
) -> Finding | None:
    from qqfilter.checks.mime import filetypes

    label = f'"{part.name}"' if part.name else f"part {part.path}"
    detail = f"part {part.path} {part.content_type} {part.encoding or '7bit'}"
    why = rules.bad_mime(part.spool, part) if rules else ""
    if why:
        return _refuse(f"attachment {label}: {why}", detail, "Bad_MIME")
    blockext = settings[BLOCKEXT]
    for name in part.names if blockext else ():  # refused when any name a client may use is
        why = filetypes.name_problem(name, blockext)
        if why:
            return _refuse(f'attachment "{name.strip()}": {why}', detail)
    if blockkinds:
        kind = filetypes.content_kind(part.head, attachment=part.is_attachment)
        if kind and kind[0] in blockkinds:
            return _refuse(f"attachment {label}: {kind[1]}", f"{detail}: {kind[0]}")
    why = rules.bad_loader(part.spool, part) if rules else ""
    if why:
        return _refuse(f"attachment {label}: {why}", detail, "Bad_Loader")
    if filetypes.page(part.head):
        page = _judge_page(part, settings, blockkinds, label, detail, notes)
        if page:
            return page
    if _wants_whole(part.head):
        found = _judge_whole_part(part, settings, blockkinds, label, notes)
        if found:
            return _refuse(f"attachment {label}: {found[1]}", f"{detail}: {found[0]}")
    if settings[ARCHIVEDEPTH]:
        return _judge_container(part, settings, blockkinds, label, detail, notes)
    return None


def _wants_whole(head: bytes) -> bool:
    """Is this a document judged by its whole file (office.py: OLE2 and RTF; pdf.py)?"""
    from qqfilter.checks.mime import filetypes

    return filetypes.office_document(head) or filetypes.pdf_document(head)


def _judge_whole_part(
    part: Part, settings: Settings, blockkinds: frozenset[str], label: str, notes: list[str]
) -> tuple[str, str] | None:
    """The part decoded into a nameless file and judged whole (a document that runs code)."""
    from qqfilter.checks.mime import archives

    if _too_large(part, settings, label, "document", notes):
        return None
    fd = archives.decode_part(part, settings[SPOOLDIR])
    try:
        return _judge_whole(fd, part.head, settings, blockkinds)
    finally:
        os.close(fd)


def _judge_whole(
    fd: int, head: bytes, settings: Settings, blockkinds: frozenset[str]
) -> tuple[str, str] | None:
    """(kind, reason) when the whole file in ``fd`` runs code: Office macros (QQF_MACROS),
    executables packed into Office and RTF documents, a Windows Installer package, a PDF's
    /Launch action, its JavaScript (QQF_PDFJS), and the files a PDF carries, judged by name
    and content as attachments are."""
    from qqfilter.checks.mime import filetypes, office, pdf

    blockext = settings[BLOCKEXT]
    if filetypes.office_document(head):
        found = office.problem(fd, head, settings[MACROS], blockext)
        if found and (found[0] in ("macro", "extension") or found[0] in blockkinds):
            return found
    if filetypes.pdf_document(head):
        found = pdf.problem(fd, head, settings[PDFJS])
        if found:
            return found
        for name, data in pdf.embedded(fd):
            why = filetypes.name_problem(name, blockext) if blockext else ""
            if why:
                return "extension", f'embedded file "{name}": {why}'
            kind = filetypes.content_kind(data, attachment=True) if data else None
            if kind and kind[0] in blockkinds:
                return kind[0], f'embedded file "{name}": {kind[1]}'
    return None


def _judge_container(
    part: Part,
    settings: Settings,
    blockkinds: frozenset[str],
    label: str,
    detail: str,
    notes: list[str],
) -> Finding | None:
    """Open the part if it is a container (archives.py) and judge every member."""
    from qqfilter.checks.mime import archives

    found = archives.container(part)
    if not found or _too_large(part, settings, label, "archive", notes):
        return None
    fd = archives.decode_part(part, settings[SPOOLDIR])
    try:
        outer = part.name or f"({found})"
        return _judge_members(fd, outer, settings, blockkinds, label, detail, notes)
    finally:
        os.close(fd)


def _too_large(part: Part, settings: Settings, label: str, what: str, notes: list[str]) -> bool:
    """Is the part, decoded, over QQF_ARCHIVEMAXSIZE (noted: it is not looked into)?"""
    size = part.end - part.start
    if part.encoding in ("base64", "x-uuencode", "uuencode", "x-uue"):
        size = size * 3 // 4
    maxsize = settings[ARCHIVEMAXSIZE]
    if size <= maxsize:
        return False
    notes.append(f"{label}: {what} larger than {maxsize} bytes not opened")
    return True


def _judge_members(
    fd: int,
    outer: str,
    settings: Settings,
    blockkinds: frozenset[str],
    label: str,
    detail: str,
    notes: list[str],
) -> Finding | None:
    """Judge every member of the container in ``fd`` (and of the containers in it): each
    name a reader may show, encryption (QQF_ENCRYPTED), each head's kind, documents that
    run code, a Java manifest. What the budgets stopped goes into ``notes``."""
    from qqfilter.checks.mime import archives, filetypes

    budget = archives.Budget(
        depth=settings[ARCHIVEDEPTH],
        members=settings[ARCHIVEMEMBERS],
        expanded=settings[ARCHIVEEXPAND],
    )
    blockext = settings[BLOCKEXT]
    refuse_encrypted = settings[ENCRYPTED] == "refuse"
    for member in archives.members(fd, outer, budget, settings[SPOOLDIR], whole=_wants_whole):
        for name in member.names if blockext else ():  # any name a reader may show
            why = filetypes.name_problem(name, blockext)
            if why:
                return _refuse(f"attachment {label}: archive member {name}: {why}", detail)
        if member.encrypted and refuse_encrypted:
            return _refuse(
                f"attachment {label}: encrypted archive ({member.name})",
                detail,
                "Encrypted_Archive",
            )
        if blockkinds and member.head:
            kind = filetypes.content_kind(member.head, attachment=True)
            if kind and kind[0] in blockkinds:
                return _refuse(
                    f"attachment {label}: archive member {member.name}: {kind[1]}", detail
                )
        if member.file >= 0 and _wants_whole(member.head):
            whole = _judge_whole(member.file, member.head, settings, blockkinds)
            if whole:
                reason = f"attachment {label}: archive member {member.name}: {whole[1]}"
                return _refuse(reason, f"{detail}: {whole[0]}")
        if member.name.endswith("META-INF/MANIFEST.MF") and "java" in blockkinds:
            return _refuse(f"attachment {label}: Java archive", detail)
    notes.extend(budget.exceeded)
    return None


def _judge_page(
    part: Part,
    settings: Settings,
    blockkinds: frozenset[str],
    label: str,
    detail: str,
    notes: list[str],
) -> Finding | None:
    """An HTML or SVG page: the files it carries for a browser to build (smuggling.py),
    judged as attachments are: by the name the page gives them, by their content's kind,
    and a zip's members as far as its first 40 KB show them."""
    from qqfilter.checks.mime import archives, filetypes, smuggling
    from qqfilter.spool import anonymous_file, write_all

    if _too_large(part, settings, label, "page", notes):
        return None
    blockext = settings[BLOCKEXT]
    directory = settings[SPOOLDIR]
    cut: list[str] = []
    fd = archives.decode_part(part, directory)
    try:
        for carried, head in smuggling.blobs(fd, cut):
            what = f"attachment {label}: a file carried in the page ({carried})"
            why = filetypes.name_problem(carried, blockext) if blockext else ""
            if why:
                return _refuse(f"{what}: {why}", detail)
            kind = filetypes.content_kind(head, attachment=True) if head else None
            if kind and kind[0] in blockkinds:
                return _refuse(f"{what}: {kind[1]}", f"{detail}: {kind[0]}")
            if not (head and settings[ARCHIVEDEPTH] and archives.sniff(head)):
                continue
            blob = anonymous_file(directory)  # its head: a zip's first members show in it
            try:
                write_all(blob, head, directory)
                os.lseek(blob, 0, os.SEEK_SET)
                found = _judge_members(blob, carried, settings, blockkinds, label, detail, notes)
            finally:
                os.close(blob)
            if found:
                return found
    finally:
        os.close(fd)
    notes.extend(f"{label}: {why}" for why in cut)
    return None


def _refuse(reason: str, detail: str, tag: str = "MIME_Attach") -> Finding:
    return Finding(
        NAME,
        Finding.REFUSE,
        reason,
        category="attachment",
        tag=f"Reject::DATA::{tag}",
        status=STATUS,
        detail=detail,
    )


def _warlord_rules(settings: Settings, relayclient: bool, notes: list[str]) -> Rules | None:
    """The WarLord rules for this connection, or None when both tests are off or have nothing
    to look for. A test that is on without its control file, or with a file that holds no
    entry, is noted (s/qmail is silent then: the test simply never refuses)."""
    badmimetype, badloadertype = settings[BADMIMETYPE], settings[BADLOADERTYPE]
    if not (badmimetype or badloadertype):
        return None
    from qqfilter.checks.mime import warlord

    mime_on, white_space = warlord.parse_badmimetype(badmimetype, relayclient)
    loader_char = warlord.parse_badloadertype(badloadertype, relayclient)
    if not (mime_on or loader_char):
        return None
    home = settings[QMAILHOME]
    mime_types = fragments = frozenset[bytes]()
    if mime_on:
        found = control.lines(home, "badmimetypes")
        mime_types = warlord.entries(found, warlord.SIGNATURE)
        if not mime_types:
            notes.append(warlord.unused(BADMIMETYPE.env, "badmimetypes", found, warlord.SIGNATURE))
    loaders: list[str] | None = None
    if loader_char:
        loaders = control.lines(home, "badloadertypes")
        fragments = warlord.entries(loaders, warlord.FRAGMENT)
    rules = warlord.Rules(mime_types, white_space, loader_char, fragments)
    if loader_char and rules.loader_pattern is None:
        notes.append(
            warlord.unused(
                BADLOADERTYPE.env, "badloadertypes", loaders, warlord.FRAGMENT, loader_char
            )
        )
    return rules if rules.mime_types or rules.white_space or rules.loader_pattern else None
