"""Recipients: refuse mail for mailboxes that do not exist here, while the sender is still
connected, so that qmail never bounces it to a forged sender (backscatter).

QQF_RCPTCHECK=any refuses when any recipient that qqfilter can judge has no mailbox; =all
only when none of the recipients has one (those it cannot judge count as having one).
Bounces (the empty sender) with more recipients than QQF_BOUNCERCPTS are refused whatever
the check says: a delivery status notification goes to one address.
"""

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Settings

TAG = "Reject::RCPT::Failed_Rcptto"
REASON = "no mailbox here by that name"


def check(message: Message, settings: Settings) -> Finding | None:
    """Judge each envelope recipient against qmail's own delivery data."""
    recipients = message.envelope.recipients
    bounce = not message.envelope.sender
    if bounce and settings.bouncercpts and len(recipients) > settings.bouncercpts:
        return Finding(
            "recipients",
            Finding.REFUSE,
            f"a bounce goes to one recipient, not {len(recipients)}",
            tag="Reject::RCPT::Toomany_Rcptto",
            status="5.5.3",
        )
    if settings.rcptcheck == "off":
        return None
    from qqfilter import mailboxes

    known = mailboxes.Mailboxes(settings.qmailhome, settings.rcptlist)
    answers = [
        (address, known.judge(address.decode("utf-8", "surrogateescape"))) for address in recipients
    ]
    unknown = [a for a, answer in answers if answer == mailboxes.UNKNOWN]
    if not unknown:
        return None
    if settings.rcptcheck == "all" and len(unknown) < len(answers):
        names = ", ".join(f"<{a.decode('utf-8', 'replace')}>" for a in unknown)
        return Finding("recipients", Finding.CLEAN, f"unknown, not refused (all): {names}")
    names = ", ".join(f"<{a.decode('utf-8', 'replace')}>" for a in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return Finding(
        "recipients",
        Finding.REFUSE,
        REASON,
        tag=TAG,
        status="5.1.1",
        detail=f"{len(unknown)} of {len(answers)} recipients unknown: {names}{more}",
    )
