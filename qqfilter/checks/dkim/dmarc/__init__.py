"""DMARC (RFC 7489) on inbound mail: QQF_DMARC = off | stamp | enforce.

For each domain in the From fields (what a mail client shows as the author; a message with
several is judged on each), the domain's policy is discovered (record.py) and the message
passes when SPF passed for an aligned MAIL FROM (or HELO, for a bounce) domain, or a DKIM
signature passed for an aligned d= domain; ``adkim``/``aspf`` choose strict or relaxed
alignment. SPF's result is the SPF check's, evaluated once per message (and here, when
QQF_SPF is 0); the signatures are the DKIM check's, verified once per message (and here,
when QQF_DKIM is off). The result goes into the one Authentication-Results field:
``dmarc=fail (p=reject dis=reject) header.from=example.com``.

``stamp`` only stamps. ``enforce`` acts on the disposition: the record's ``p`` (``sp`` for a
subdomain whose policy came from its organizational domain), sampled by ``pct`` (a message
outside the sample gets the next milder policy, 6.6.4):

| result / disposition | enforce                                               |
|----------------------|-------------------------------------------------------|
| fail, reject         | refused 554 5.7.1 (Reject::DATA::DMARC)               |
| fail, quarantine     | accepted with X-Qqfilter-DMARC: quarantine ...        |
| temperror            | tempfailed 451 4.7.0, unless the policy is p=none     |
| pass, none, permerror, fail with p=none | accepted                           |

A DNS failure is temperror, never a refusal (RFC 7489 section 6.6.3). Mail from relay
clients, authenticated senders and local programs is not judged.
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.checks.dkim import DKIMTIMEOUT, SHARED, authenticated, from_domains, head, verified
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, choice
from qqfilter.shared import authres
from qqfilter.shared.resolver import DNS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.checks.dkim.dmarc.record import Policy
    from qqfilter.checks.dkim.verify.signatures import Signature
    from qqfilter.checks.spf.evaluation import Evaluation
    from qqfilter.shared.lookups import Lookups

NAME = "dmarc"
ORDER = 44

DMARC = Setting(
    "dmarc",
    "QQF_DMARC",
    "off",
    choice("off", "stamp", "enforce"),
    "DMARC on inbound mail: off; stamp (Authentication-Results and the log only); enforce "
    "(p=reject refused 554, p=quarantine marked, DNS failures 451)",
)
SETTINGS = (DMARC, *SHARED)
PRELOAD = (
    "dns.resolver",
    "dkim",
    "email.utils",
    "publicsuffixlist",
    "qqfilter.shared.authres",
    "qqfilter.shared.lookups",
    "qqfilter.checks.dkim.dmarc.record",
    "qqfilter.checks.dkim.verify.signatures",
)

TAG = "Reject::DATA::DMARC"
MARK = "X-Qqfilter-DMARC"
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class Judgement:
    """DMARC's result for one From domain: ``result`` (pass, fail, none, temperror,
    permerror), the ``policy`` found (None if none), the ``disposition`` (none, quarantine,
    reject) and ``why`` (the words for the log and the client). A hand-written
    ``__slots__`` record."""

    __slots__ = ("disposition", "domain", "policy", "result", "why")

    def __init__(
        self, domain: str, result: str, policy: Policy | None, disposition: str, why: str
    ) -> None:
        self.domain = domain
        self.result = result
        self.policy = policy
        self.disposition = disposition
        self.why = why


def check(message: Message, settings: Settings) -> Finding | None:
    """Judge the message by its From domains' DMARC policies."""
    mode = settings[DMARC]
    if mode == "off":
        return None
    why = authenticated(message)
    if why:
        return Finding(NAME, Finding.CLEAN, f"skipped: {why}")
    domains = from_domains(head(message))
    edits = _stale(message, settings)
    if not domains:  # nothing to align with: SPF is not asked for DMARC's sake
        none = (authres.resinfo("dmarc", "none", "no From domain"),)
        return Finding(NAME, Finding.CLEAN, "none (no From domain)", results=none, edits=edits)
    results: list[str] = []
    spf = _spf(message, settings, results)
    judgements = _judge_all(domains, spf, verified(message, settings), settings)
    results += [_result(judgement) for judgement in judgements]
    note = "; ".join(_note(judgement) for judgement in judgements)
    if mode == "stamp":
        return Finding(NAME, Finding.CLEAN, note, results=tuple(results), edits=edits)
    return _enforce(judgements, note, tuple(results), edits)


def _stale(message: Message, settings: Settings) -> tuple[tuple[int, int, bytes], ...]:
    """Edits removing what the message arrived with in our name: Authentication-Results
    fields under our authserv-id, and X-Qqfilter-DMARC fields (only this check's count)."""
    from qqfilter.headers import fields

    ours = authres.forged(message.spool, authres.authserv_id(settings, message))
    marks = tuple(
        (start, end, b"")
        for name, start, _value_at, end in fields(message.spool)
        if name.lower() == MARK.lower()
    )
    return ours + marks


def _enforce(
    judgements: list[Judgement],
    note: str,
    results: tuple[str, ...],
    edits: tuple[tuple[int, int, bytes], ...],
) -> Finding:
    for judgement in judgements:
        if judgement.disposition == "reject":
            return Finding(
                NAME,
                Finding.REFUSE,
                f"DMARC policy of {judgement.domain} rejects this message: {judgement.why}",
                tag=TAG,
                status="5.7.1",
                detail=note,
                results=results,
            )
    for judgement in judgements:
        policy = judgement.policy
        if judgement.result == "temperror" and (
            policy is None or _wanted(policy, judgement.domain) != "none"
        ):
            return Finding(
                NAME,
                Finding.UNKNOWN,
                f"DMARC of {judgement.domain}: cannot check now, try again later",
                status="4.7.0",
                detail=f"{note}: {judgement.why}",
                results=results,
            )
    marked = [j for j in judgements if j.disposition == "quarantine"]
    headers = tuple((MARK, f"quarantine (policy of {j.domain}: {j.why})") for j in marked[:1])
    return Finding(NAME, Finding.CLEAN, note, headers=headers, results=results, edits=edits)


def _spf(message: Message, settings: Settings, results: list[str]) -> Evaluation:
    """SPF's result (the SPF check's; evaluated here when QQF_SPF is 0, and then its spf=
    result joins ``results``)."""
    from qqfilter.checks import spf

    stamped = settings[spf.LEVEL] > 0
    remote_ip = message.connection.remote_ip or ""
    result = spf.evaluated(message, settings, remote_ip, authres.authserv_id(settings, message))
    if not stamped:
        from qqfilter.checks.spf.fields import spf_result

        results.append(spf_result(result))
    return result


def _judge_all(
    domains: list[str], spf: Evaluation, signatures: list[Signature], settings: Settings
) -> list[Judgement]:
    from qqfilter.shared.lookups import Lookups, Undecided

    try:
        lookups = Lookups(settings[DNS], settings[DKIMTIMEOUT])
    except Undecided as exc:
        return [Judgement(domain, "temperror", None, "none", str(exc)) for domain in domains]
    return [_judge(domain, spf, signatures, lookups) for domain in domains]


def _judge(
    domain: str, spf: Evaluation, signatures: list[Signature], lookups: Lookups
) -> Judgement:
    from qqfilter.checks.dkim.dmarc import record
    from qqfilter.shared.lookups import Undecided

    try:
        policy = record.discover(domain, lookups)
    except Undecided as exc:
        return Judgement(domain, "temperror", None, "none", str(exc))
    except record.Unusable as exc:
        return Judgement(domain, "permerror", None, "none", str(exc))
    if policy is None:
        return Judgement(domain, "none", None, "none", "no DMARC record")
    for signature in signatures:
        if signature.result == "pass" and record.aligned(signature.domain, domain, policy.adkim):
            return Judgement(domain, "pass", policy, "none", f"DKIM d={signature.domain}")
    if spf.result == "pass" and record.aligned(spf.domain, domain, policy.aspf):
        return Judgement(domain, "pass", policy, "none", f"SPF {spf.domain}")
    unsure = [s.domain for s in signatures if s.result == "temperror"]
    if spf.result == "temperror":
        unsure.append(spf.domain)
    for other in unsure:
        if record.aligned(other, domain, "r"):
            return Judgement(domain, "temperror", policy, "none", f"{other}: DNS failed")
    wanted = _wanted(policy, domain)
    import random

    disposition = wanted if random.randrange(100) < policy.pct else MILDER[wanted]
    return Judgement(domain, "fail", policy, disposition, "no aligned SPF or DKIM pass")


def _note(judgement: Judgement) -> str:
    """The judgement for the log line: ``fail example.org (p=reject dis=reject)``, and why
    for an error."""
    error = judgement.result in ("temperror", "permerror")
    why = f": {judgement.why}" if error else ""
    return f"{judgement.result} {judgement.domain}{_policy_words(judgement)}{why}"


def _wanted(policy: Policy, domain: str) -> str:
    """The policy for mail from ``domain``: ``p``, or ``sp`` when the record was found at
    the organizational domain of a subdomain."""
    return policy.p if policy.domain == domain else policy.sp


def _policy_words(judgement: Judgement) -> str:
    """`` (p=reject dis=reject)`` for a judgement with a policy."""
    policy = judgement.policy
    if policy is None:
        return ""
    words = [f"p={policy.p}"]
    if policy.sp != policy.p:
        words.append(f"sp={policy.sp}")
    if policy.pct != 100:
        words.append(f"pct={policy.pct}")
    if judgement.result == "fail":
        words.append(f"dis={judgement.disposition}")
    return f" ({' '.join(words)})"


def _result(judgement: Judgement) -> str:
    """The dmarc= result for the Authentication-Results field."""
    comment = _policy_words(judgement)[2:-1]
    if judgement.result in ("temperror", "permerror"):
        comment = f"{comment}; {judgement.why}" if comment else judgement.why
    return authres.resinfo("dmarc", judgement.result, comment, (("header.from", judgement.domain),))
