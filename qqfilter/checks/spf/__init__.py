"""SPF: evaluate, stamp Received-SPF and Authentication-Results, refuse by s/qmail's level.

| level | refused (554)                          | tempfailed (451)          |
|-------|----------------------------------------|---------------------------|
| 0     | off: nothing is evaluated or stamped   |                           |
| 1     | nothing: headers only                  |                           |
| 2     | nothing                                | temperror, permerror      |
| 3     | fail                                   | temperror, permerror      |
| 4     | fail, softfail                         | temperror, permerror      |
| 5     | fail, softfail, neutral                | temperror, permerror      |
| 6     | fail, softfail, neutral, none, permerror | temperror               |

Level 2's "451 on DNS or syntax errors" covers permerror (a syntax error in the record) until
level 6 refuses it, as shared/DESIGN.md describes s/qmail. Mail from RELAYCLIENT clients and
mail injected locally (no TCPREMOTEIP) is not evaluated, and the log line says so.

Its helpers: evaluation.py (pyspf over our resolver, under one deadline), fields.py (the
Received-SPF field and the spf= result). The resolver (QQF_DNS), the reading of qmail-smtpd's
Received line and the one Authentication-Results field are shared building blocks
(qqfilter.shared). The result is evaluated once per message (``evaluated``): DMARC aligns
with it, and evaluates it through here when SPF itself is off.
"""

from __future__ import annotations

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, seconds
from qqfilter.shared import authres
from qqfilter.shared.resolver import DNS

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported when a message is evaluated, not at start-up
    from qqfilter.checks.spf.evaluation import Evaluation

NAME = "spf"
ORDER = 40


def _level(value: object) -> int:
    spelled = str(value)
    if isinstance(value, bool) or spelled not in ("0", "1", "2", "3", "4", "5", "6"):
        raise ValueError("must be a level from 0 to 6")
    return int(spelled)


LEVEL = Setting(
    "spf",
    "SPF",
    0,
    _level,
    "SPF level (s/qmail): 0 off, 1 stamp headers only, 2 also 451 on DNS/record errors, "
    "3 reject fail, 4 also softfail, 5 also neutral, 6 also none and permerror",
    alias="SPFBEHAVIOR",
    empty_means_set=True,
    empty_as="0",  # SPF="" (or SPFBEHAVIOR=""): s/qmail's scan_ulong reads 0, off
)
SPFTIMEOUT = Setting(
    "spftimeout",
    "QQF_SPFTIMEOUT",
    20.0,
    seconds,
    "seconds all DNS lookups of one message's SPF check may take; then it is temperror",
)
SETTINGS = (LEVEL, DNS, SPFTIMEOUT)
PRELOAD = (
    "dns.resolver",
    "spf",
    "qqfilter.shared.resolver",
    "qqfilter.shared.received",
    "qqfilter.shared.authres",
    "qqfilter.checks.spf.evaluation",
    "qqfilter.checks.spf.fields",
)

TAG = "Reject::SPF::Fail"
REFUSED_FROM = {"fail": 3, "softfail": 4, "neutral": 5, "none": 6, "permerror": 6}
"""The level from which each result is refused."""
DEFERRED_FROM = {"temperror": 2, "permerror": 2}
"""The level from which each result is tempfailed (when not refused)."""


def check(message: Message, settings: Settings) -> Finding | None:
    """Evaluate SPF for a message that came in over SMTP, at level 1 or more."""
    level = settings[LEVEL]
    if not level:
        return None
    connection = message.connection
    if connection.relayclient:
        return Finding(NAME, Finding.CLEAN, "skipped: RELAYCLIENT")
    if not connection.remote_ip:
        return Finding(NAME, Finding.CLEAN, "skipped: local injection")
    receiver = authres.authserv_id(settings, message)
    result = evaluated(message, settings, connection.remote_ip, receiver)
    from qqfilter.checks.spf.fields import received_spf, spf_result

    headers = (received_spf(result, receiver),)
    results = (spf_result(result),)
    forged = authres.forged(message.spool, receiver)
    if level >= REFUSED_FROM.get(result.result, 99):
        return Finding(
            NAME,
            Finding.REFUSE,
            f"SPF {result.result}: {result.explanation or _words(result)}",
            tag=TAG,
            status="5.7.23",
            detail=_detail(result),
            headers=headers,
            results=results,
        )
    if level >= DEFERRED_FROM.get(result.result, 99):
        return Finding(
            NAME,
            Finding.UNKNOWN,
            f"SPF {result.result}: cannot check the sender now, try again later",
            status="4.7.24",
            detail=_detail(result),
            headers=headers,
            results=results,
        )
    return Finding(
        NAME, Finding.CLEAN, _detail(result), headers=headers, results=results, edits=forged
    )


def evaluated(message: Message, settings: Settings, remote_ip: str, receiver: str) -> Evaluation:
    """SPF's result for ``message`` from the client at ``remote_ip`` (evaluated once per
    message, kept in its facts)."""
    result = message.facts.get(NAME)
    if result is None:
        result = message.facts[NAME] = _evaluate(message, remote_ip, settings, receiver)
    return result  # type: ignore[return-value]


def _evaluate(message: Message, remote_ip: str, settings: Settings, receiver: str) -> Evaluation:
    from qqfilter.checks.spf import evaluation
    from qqfilter.shared.received import helo_from_message
    from qqfilter.shared.resolver import make_resolver

    helo = message.connection.helo
    if helo is None:
        helo = helo_from_message(message.spool, remote_ip) or ""
    sender = message.envelope.sender.decode("utf-8", "replace")
    home = settings[QMAILHOME]
    local_rules = control.first_line(home, "spflocalrules") or ""
    explanation = control.first_line(home, "spfexplain") or ""
    try:
        resolver = make_resolver(settings[DNS])
    except OSError as exc:
        return evaluation.Evaluation(
            "temperror",
            client_ip=remote_ip,
            sender=sender,
            helo=helo,
            identity="mailfrom" if sender else "helo",
            domain=sender.rpartition("@")[2] or helo,
            problem=str(exc),
        )
    return evaluation.evaluate(
        remote_ip,
        sender,
        helo,
        receiver,
        resolver=resolver,
        timeout=settings[SPFTIMEOUT],
        local_rules=local_rules,
        explanation=explanation,
    )


def _words(result: Evaluation) -> str:
    """Our words for a refusal when neither the domain nor control/spfexplain gave any."""
    domain, ip = result.domain, result.client_ip
    return {
        "fail": f"{domain} does not allow mail from {ip}",
        "softfail": f"{domain} discourages mail from {ip}",
        "neutral": f"{domain} neither permits nor denies mail from {ip}",
        "none": f"{domain or 'the sender'} publishes no SPF record",
        "permerror": f"the SPF record of {domain} is invalid: {result.problem}",
    }[result.result]


def _detail(result: Evaluation) -> str:
    """The result for the log line: ``pass``, or ``temperror (DNS timeout ...)``."""
    identity = " (helo)" if result.identity == "helo" else ""
    problem = f": {result.problem}" if result.problem else ""
    return f"{result.result}{identity}{problem}"
