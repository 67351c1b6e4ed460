"""DKIM signing of outbound mail (QQF_DKIMSIGN=relayclient): mail from a relay client, an
authenticated sender (SMTP AUTH) or a local program is signed with the From domain's keys.

The keys are qmail-dkim's (keys.py): a domain's own, else the ``%`` default for a domain of
ours. A message without a From domain, or whose domain has no key, is accepted unsigned and
the log says why. Each key makes one DKIM-Signature (an RSA and an Ed25519 selector: two),
relaxed/relaxed, over the header fields RFC 6376 section 5.4.1 recommends that are present,
with From, Subject and To signed once more than they occur (oversigned: nobody can add one
without breaking the signature). The signature covers the message as it came in: this unit
runs last, and the fields other checks add are not signed; a Subject another check rewrites
(QQF_SPAMSUBJECT on outbound mail) would break it, so skip spam tagging for relay clients.

The signature's field is unfolded here and folded again by headers.render: relaxed header
canonicalization (RFC 6376 section 3.4.2) makes the two foldings the same to a verifier.
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.checks.dkim import authenticated, from_domains, head
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, choice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.checks.dkim.sign import keys

NAME = "dkimsign"
ORDER = 95

DKIMSIGN = Setting(
    "dkimsign",
    "QQF_DKIMSIGN",
    "off",
    choice("off", "relayclient"),
    "DKIM-sign outbound mail: off, or relayclient (mail from RELAYCLIENT, SMTP AUTH users and "
    "local programs, with the From domain's key in control/domainkeys)",
    server_only=True,  # a resident peer of another user would sign with keys it cannot read
)
SETTINGS = (DKIMSIGN,)
PRELOAD = (
    "dkim",
    "email.utils",
    "qqfilter.checks.dkim.sign.keys",
)

SIGNED = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
    b"resent-cc", b"resent-message-id", b"in-reply-to", b"references", b"list-id",
    b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post", b"list-owner",
    b"list-archive",
)  # fmt: skip
"""RFC 6376 section 5.4.1's fields (dkimpy's DKIM.SHOULD), signed as often as they occur."""
OVERSIGNED = (b"from", b"subject", b"to")
"""Signed once more than they occur."""


def check(message: Message, settings: Settings) -> Finding | None:
    """Sign a message from one of ours with its From domain's keys."""
    if settings[DKIMSIGN] == "off":
        return None
    why = authenticated(message)
    if not why:
        return None
    domains = from_domains(head(message))
    if not domains:
        return Finding(NAME, Finding.CLEAN, "not signed: no From domain")
    from qqfilter.checks.dkim.sign import keys

    domain = domains[0]
    found = keys.keys_for(settings[QMAILHOME], domain)
    if not found:
        return Finding(NAME, Finding.CLEAN, f"not signed: no key for {domain}")
    data = message.spool.read(0, message.spool.size)
    headers = tuple(_signature(data, domain, key) for key in found)
    words = ", ".join(f"{key.selector} {key.algorithm}" for key in found)
    return Finding(NAME, Finding.CLEAN, f"signed {domain} ({words})", headers=headers)


def _signature(data: bytes, domain: str, key: keys.Key) -> tuple[str, str]:
    """The DKIM-Signature field for ``data`` by ``key``, as (name, unfolded value)."""
    from qqfilter.shared import dnsimport

    dnsimport.prepare()
    import dkim

    signer = dkim.DKIM(data, signature_algorithm=key.algorithm.encode("ascii"), linesep=b"\n")
    present = [name.lower() for name, _ in signer.headers]
    include = [name for name in present if name in SIGNED] + list(OVERSIGNED)
    try:
        field = signer.sign(
            key.selector.encode("ascii"),
            domain.encode("ascii"),
            key.private,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
    except dkim.DKIMException as exc:
        from qqfilter.exitcodes import CONFIG_ERROR, QueueError

        raise QueueError(
            CONFIG_ERROR, f"DKIM key {domain}/{key.selector} cannot sign: {exc}"
        ) from None
    name, _, value = field.decode("ascii").partition(":")
    return name, " ".join(value.split())
