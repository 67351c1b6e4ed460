"""The one Authentication-Results field (RFC 8601) the authentication checks share.

SPF, DKIM, ARC and DMARC each find a result about the same message, and a reader (a mail
client, a filter rule, DMARC reports) expects them in one field under one authserv-id. So a
check does not stamp the field itself: its Finding carries its ``results`` (method results,
``spf=pass smtp.mailfrom=example.org``, made with ``resinfo``), and policy renders the one
field from all of them, in the checks' order, where the first of them stood.

A field the message arrived with under our own authserv-id is a forgery (or our own, from
a loop): RFC 8601 section 5 has it removed, so a reader never takes a sender's
``dmarc=pass`` for ours. Each check with results asks for that removal (``forged``: edits,
which policy makes once however many checks ask).

Every value that came from the client or from DNS (a domain, a selector, a problem) goes
through ``value``: a MIME token stays as it is, anything else becomes a quoted-string with
its quotes and backslashes escaped, characters outside printable ASCII become ``?``, and it
is cut at MAX_VALUE; comments lose their parentheses. So no HELO name, sender, From field or
signature can end a line, start a field or break the syntax. headers.render folds the line.
"""

from __future__ import annotations

from qqfilter import control
from qqfilter.settings import QMAILHOME, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.message import Message
    from qqfilter.spool import Spool

NAME = "Authentication-Results"
MAX_VALUE = 255
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+"
"""A MIME token; compiled where it is used: ``re`` costs start-up (it imports enum) that
a message needing no authentication check must not pay."""


def authserv_id(settings: Settings, message: Message) -> str:
    """The receiving host's name: control/me, else TCPLOCALHOST, else the host name (also
    the receiver of SPF's Received-SPF field); worked out once per message (its facts)."""
    known = message.facts.get("authserv-id")
    if isinstance(known, str):
        return known
    name = control.first_line(settings[QMAILHOME], "me") or message.connection.local_host
    if not name:
        import socket

        name = socket.gethostname()
    message.facts["authserv-id"] = name
    return name


def field(server: str, results: tuple[str, ...]) -> tuple[str, str]:
    """The field for ``results`` (each a resinfo), as (name, value)."""
    return NAME, "; ".join((value(server), *results))


def forged(spool: Spool, server: str) -> tuple[tuple[int, int, bytes], ...]:
    """Edits removing the Authentication-Results fields in the message's header that claim
    to be ``server``'s (its authserv-id, compared without case, quotes or comments)."""
    from qqfilter.headers import fields

    ours = server.lower()
    found = []
    for name, start, value_at, end in fields(spool):
        if name.lower() != NAME.lower():
            continue
        value = spool.read(value_at, min(end - value_at, 1024)).decode("latin-1")
        if _authserv_id(value) == ours:
            found.append((start, end, b""))
    return tuple(found)


def _authserv_id(value: str) -> str:
    """The authserv-id a field's ``value`` starts with, lower case: comments dropped (one
    level is all a real one has), quotes taken off."""
    import re

    head = re.sub(r"\([^()]*\)", " ", value.split(";", 1)[0])
    words = head.split()
    return words[0].strip('"').lower() if words else ""


def resinfo(
    method: str, result: str, comment: str = "", properties: tuple[tuple[str, str], ...] = ()
) -> str:
    """One method result: ``dkim=pass (comment) header.d=example.org``; properties with an
    empty value are left out."""
    words = [f"{method}={result}"]
    if comment:
        words.append(f"({comment_text(comment)})")
    words += [f"{name}={value(text)}" for name, text in properties if text]
    return " ".join(words)


def printable(text: str) -> str:
    """``text`` cut at MAX_VALUE, anything outside printable ASCII as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:MAX_VALUE])


def comment_text(text: str) -> str:
    """``text`` fit for a comment: no parentheses or backslashes."""
    return "".join("?" if c in "()\\" else c for c in printable(text))


def quoted(text: str) -> str:
    """``text`` as a quoted-string."""
    return '"' + printable(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def value(text: str) -> str:
    """RFC 8601 ``value``: a MIME token, else a quoted-string."""
    import re

    if re.fullmatch(_TOKEN, text) and len(text) <= MAX_VALUE:
        return text
    return quoted(text)
