"""Attachments: executables and scripts refused by content and by name, in any wrapping.

One streaming MIME walk; for each leaf part, in order of cost: s/qmail's WarLord signature
(BADMIMETYPE), the declared file name, the decoded head's kind of content, WarLord's loader
fragments (BADLOADERTYPE, a scan of the whole base64 body), and for zip archives the same name
and content tests on every member. The first failure refuses the message, category
"attachment" (31, or 34 with QQF_CODES=sqmail); the reason names the part and the file.
A MIME structure past the limits cannot be checked, and is refused as such; what archive
budgets stopped is noted in the log line.
"""

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Settings

STATUS = "5.7.1"


def check(message: Message, settings: Settings) -> Finding | None:
    """Walk the message and judge each part (and each archive member)."""
    connection = message.connection
    if "relayclient" in settings.attachskip and connection.relayclient:
        return Finding("mime", Finding.CLEAN, "skipped: RELAYCLIENT")
    if "local" in settings.attachskip and not connection.remote_ip:
        return Finding("mime", Finding.CLEAN, "skipped: local injection")
    rules = _warlord_rules(settings, connection.relayclient)
    blockkinds = settings.blockkinds - {"none"}
    if not (settings.blockext or blockkinds or rules):
        return None
    from qqfilter.mime import Source, Walk

    source = Source(message.spool.fd, message.size)
    walk = Walk(source, max_depth=settings.mimedepth, max_parts=settings.mimeparts)
    notes: list[str] = []
    for part in walk:
        found = _judge_part(source, part, settings, blockkinds, rules, notes)
        if found:
            return found
    if walk.limits:
        return _refuse(
            "message structure too complex to check: " + "; ".join(walk.limits),
            "; ".join(walk.limits),
        )
    return Finding("mime", Finding.CLEAN, "; ".join(notes)) if notes else None


def _judge_part(source, part, settings: Settings, blockkinds, rules, notes) -> Finding | None:
    from qqfilter import filetypes

    label = f'"{part.name}"' if part.name else f"part {part.path}"
    detail = f"part {part.path} {part.content_type} {part.encoding or '7bit'}"
    why = rules.bad_mime(source, part) if rules else ""
    if why:
        return _refuse(f"attachment {label}: {why}", detail, "Bad_MIME")
    if part.name and settings.blockext:
        why = filetypes.name_problem(part.name, settings.blockext)
        if why:
            return _refuse(f"attachment {label}: {why}", detail)
    if blockkinds:
        kind = filetypes.content_kind(part.head, attachment=part.is_attachment)
        if kind and kind[0] in blockkinds:
            return _refuse(f"attachment {label}: {kind[1]}", f"{detail}: {kind[0]}")
    why = rules.bad_loader(source, part) if rules else ""
    if why:
        return _refuse(f"attachment {label}: {why}", detail, "Bad_Loader")
    if settings.archivedepth and part.head.startswith(filetypes.ZIP_MAGIC):
        return _judge_archive(source, part, settings, blockkinds, label, detail, notes)
    return None


def _judge_archive(source, part, settings, blockkinds, label, detail, notes) -> Finding | None:
    from qqfilter import archives, filetypes

    size = part.end - part.start
    if part.encoding == "base64":
        size = size * 3 // 4
    if size > settings.archivemaxsize:
        notes.append(f"{label}: archive larger than {settings.archivemaxsize} bytes not opened")
        return None
    budget = archives.Budget(
        depth=settings.archivedepth,
        members=settings.archivemembers,
        expanded=settings.archiveexpand,
    )
    for member in archives.members(source, part, settings.spooldir, budget):
        why = filetypes.name_problem(member.name, settings.blockext) if settings.blockext else ""
        if not why and blockkinds and member.head:
            kind = filetypes.content_kind(member.head, attachment=True)
            if kind and kind[0] in blockkinds:
                why = kind[1]
        if why:
            return _refuse(f"attachment {label}: archive member {member.name}: {why}", detail)
        if member.name.endswith("META-INF/MANIFEST.MF") and "java" in blockkinds:
            return _refuse(f"attachment {label}: Java archive", detail)
    notes.extend(budget.exceeded)
    return None


def _refuse(reason: str, detail: str, tag: str = "MIME_Attach") -> Finding:
    return Finding(
        "mime",
        Finding.REFUSE,
        reason,
        category="attachment",
        tag=f"Reject::DATA::{tag}",
        status=STATUS,
        detail=detail,
    )


def _warlord_rules(settings: Settings, relayclient: bool):
    """The WarLord rules for this connection, or None when both tests are off."""
    if not (settings.badmimetype or settings.badloadertype):
        return None
    from qqfilter import warlord

    mime_on, white_space = warlord.parse_badmimetype(settings.badmimetype, relayclient)
    loader_char = warlord.parse_badloadertype(settings.badloadertype, relayclient)
    if not (mime_on or loader_char):
        return None
    home = settings.qmailhome
    mime_types = (
        warlord.entries(control.lines(home, "badmimetypes"), warlord.SIGNATURE)
        if mime_on
        else frozenset()
    )
    fragments = (
        warlord.entries(control.lines(home, "badloadertypes"), warlord.FRAGMENT)
        if loader_char
        else frozenset()
    )
    return warlord.Rules(mime_types, white_space, loader_char, fragments)
