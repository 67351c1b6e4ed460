"""DKIM and ARC verification of inbound mail (QQF_DKIM=verify): every signature's result and
the ARC chain's, in the one Authentication-Results field and in the log line's notes.

Mail from a relay client, an authenticated sender or a local program is not verified (the
log says so): it is ours, on its way out (QQF_DKIMSIGN signs it). This check never refuses
or tempfails by itself: a failed signature is only evidence (a mailing list changes a
message on its way); what the From domain asks for failures is DMARC's business (the
``dmarc`` unit, which uses the same verification, done once per message).

Each signature gets one result (RFC 8601 section 2.7.1) with its ``header.d``, ``header.s``,
``header.a`` and ``header.b`` (RFC 6008), and a comment where there is something to say: why
not pass, a key under 2048 bits, ``l=`` (a body length limit: content past it is not signed,
so the rest of the message may have been added by anyone). ARC (RFC 8617) is ``arc=pass
(i=N)``, ``fail (what)``, ``none``, or ``temperror``.
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.checks.dkim import DKIMTIMEOUT, SHARED, authenticated, has_arc, head, verified
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, choice
from qqfilter.shared import authres
from qqfilter.shared.resolver import DNS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.checks.dkim.verify.signatures import Signature

NAME = "dkim"
ORDER = 42

DKIM = Setting(
    "dkim",
    "QQF_DKIM",
    "off",
    choice("off", "verify"),
    "DKIM and ARC on inbound mail: off, or verify (results in Authentication-Results and "
    "the log; never refuses by itself, see QQF_DMARC)",
)
SETTINGS = (DKIM, *SHARED)
PRELOAD = (
    "dns.resolver",
    "dkim",
    "email.utils",
    "qqfilter.shared.authres",
    "qqfilter.shared.lookups",
    "qqfilter.shared.received",
    "qqfilter.checks.dkim.verify.signatures",
)
STRONG_BITS = 2048


def check(message: Message, settings: Settings) -> Finding | None:
    """Verify the signatures and the ARC chain of an inbound message."""
    if settings[DKIM] == "off":
        return None
    why = authenticated(message)
    if why:
        return Finding(NAME, Finding.CLEAN, f"skipped: {why}")
    signatures = verified(message, settings)
    results = [_result(s) for s in signatures] or [authres.resinfo("dkim", "none")]
    notes = [_note(signature) for signature in signatures] or ["none"]
    header = head(message)
    if has_arc(header):
        from qqfilter.checks.dkim.verify.signatures import arc

        data = message.spool.read(0, message.spool.size)
        outcome, comment = arc(data, settings[DNS], settings[DKIMTIMEOUT])
        results.append(authres.resinfo("arc", outcome, comment))
        notes.append(f"arc {outcome}" + (f" ({comment})" if comment else ""))
    forged = authres.forged(message.spool, authres.authserv_id(settings, message))
    return Finding(NAME, Finding.CLEAN, "; ".join(notes), results=tuple(results), edits=forged)


def _result(signature: Signature) -> str:
    """The dkim= result for the Authentication-Results field."""
    comments = []
    if signature.problem:
        comments.append(signature.problem)
    elif signature.bits and signature.bits < STRONG_BITS:
        comments.append(f"{signature.bits}-bit key")
    if signature.length >= 0:
        comments.append(f"l={signature.length}: only part of the body is signed")
    return authres.resinfo(
        "dkim",
        signature.result,
        "; ".join(comments),
        (
            ("header.d", signature.domain),
            ("header.s", signature.selector),
            ("header.a", signature.algorithm),
            ("header.b", signature.stamp),
        ),
    )


def _note(signature: Signature) -> str:
    """The signature's result for the log line: ``pass example.org``."""
    where = f" {signature.domain}" if signature.domain else ""
    why = f" ({signature.problem})" if signature.problem else ""
    length = f" l={signature.length}" if signature.length >= 0 else ""
    return f"{signature.result}{where}{length}{why}"
