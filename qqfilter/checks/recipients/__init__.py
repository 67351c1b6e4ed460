"""Recipients: refuse mail for mailboxes that do not exist here, while the sender is still
connected, so that qmail never bounces it to a forged sender (backscatter).

QQF_RCPTCHECK=any refuses when any recipient that qqfilter can judge has no mailbox; =all
only when none of the recipients has one (those it cannot judge count as having one).
Bounces (the empty sender) with more recipients than QQF_BOUNCERCPTS are refused whatever
the check says: a delivery status notification goes to one address. The mailbox lookup,
qmail's own delivery logic read back, is in mailboxes.py; vpopmail's users, where a domain
delivers through vdelivermail, in vpopmail.py. Domains it could not judge for a reason the
administrator can act on (vpopmail keeping its users in SQL) are named in the log.
"""

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, byte_count, choice, text

NAME = "recipients"
ORDER = 20
RCPTCHECK = Setting(
    "rcptcheck",
    "QQF_RCPTCHECK",
    "off",
    choice("off", "any", "all"),
    "refuse mail for local mailboxes that do not exist: any (one unknown recipient is "
    "enough) or all (only when every recipient is unknown); off",
)
RCPTLIST = Setting(
    "rcptlist",
    "QQF_RCPTLIST",
    "",
    text,
    "a file of valid addresses (and @domain for whole domains) for domains whose "
    "mailboxes live elsewhere; the domains in it are judged by it alone",
    server_only=True,
)
BOUNCERCPTS = Setting(
    "bouncercpts",
    "QQF_BOUNCERCPTS",
    1,
    byte_count,
    "refuse bounces (empty sender) to more recipients than this; 0 = no limit",
)
SETTINGS = (RCPTCHECK, RCPTLIST, BOUNCERCPTS)
PRELOAD = (
    "cdblib",
    "qqfilter.checks.recipients.mailboxes",
    "qqfilter.checks.recipients.vpopmail",
)

TAG = "Reject::RCPT::Failed_Rcptto"
REASON = "no mailbox here by that name"


def check(message: Message, settings: Settings) -> Finding | None:
    """Judge each envelope recipient against qmail's own delivery data."""
    recipients = message.envelope.recipients
    bounce = not message.envelope.sender
    limit = settings[BOUNCERCPTS]
    if bounce and limit and len(recipients) > limit:
        return Finding(
            NAME,
            Finding.REFUSE,
            f"a bounce goes to one recipient, not {len(recipients)}",
            tag="Reject::RCPT::Toomany_Rcptto",
            status="5.5.3",
        )
    rule = settings[RCPTCHECK]
    if rule == "off":
        return None
    from qqfilter.checks.recipients import mailboxes

    with mailboxes.Mailboxes(settings[QMAILHOME], settings[RCPTLIST]) as known:
        answers = [
            (address, known.judge(address.decode("utf-8", "surrogateescape")))
            for address in recipients
        ]
        aside = f"not judged: {'; '.join(known.notes)}" if known.notes else ""
    unknown = [a for a, answer in answers if answer == mailboxes.NO_MAILBOX]
    if not unknown:
        return Finding(NAME, Finding.CLEAN, aside) if aside else None
    if rule == "all" and len(unknown) < len(answers):
        names = ", ".join(f"<{a.decode('utf-8', 'replace')}>" for a in unknown)
        note = f"unknown, not refused (all): {names}"
        return Finding(NAME, Finding.CLEAN, f"{note}; {aside}" if aside else note)
    names = ", ".join(f"<{a.decode('utf-8', 'replace')}>" for a in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return Finding(
        NAME,
        Finding.REFUSE,
        REASON,
        tag=TAG,
        status="5.1.1",
        detail=f"{len(unknown)} of {len(answers)} recipients unknown: {names}{more}"
        + (f"; {aside}" if aside else ""),
    )
