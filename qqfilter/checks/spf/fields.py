"""The Received-SPF field (RFC 7208 section 9.1) and the spf= result (RFC 8601).

Every value that came from the client or from DNS (HELO name, sender, explanation, problem)
is quoted where it is not a plain token, has its quotes and backslashes escaped, anything
outside printable ASCII replaced by ``?``, and is cut at 255 characters; comments lose their
parentheses (shared/authres, which the Authentication-Results field is made with). So no HELO
name or sender can end a line, start a field, or break the syntax. headers.render then folds
the lines.
"""

import re

from qqfilter.checks.spf.evaluation import Evaluation
from qqfilter.shared.authres import MAX_VALUE, comment_text, quoted, resinfo

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def received_spf(result: Evaluation, receiver: str) -> tuple[str, str]:
    """The Received-SPF field for ``result`` as (name, value)."""
    pairs = [("client-ip", result.client_ip)]
    pairs.append(("envelope-from", result.sender))
    if result.helo:
        pairs.append(("helo", result.helo))
    if result.problem and result.result in ("permerror", "temperror"):
        pairs.append(("problem", result.problem))
    if result.mechanism:
        pairs.append(("mechanism", result.mechanism))
    pairs.append(("receiver", receiver))
    pairs.append(("identity", result.identity))
    fields = "; ".join(f"{key}={_key_value(key, value)}" for key, value in pairs)
    comment = comment_text(f"{receiver}: {_explain(result)}")
    return "Received-SPF", f"{result.result} ({comment}) {fields}"


def spf_result(result: Evaluation) -> str:
    """The spf= result for the Authentication-Results field."""
    if result.identity == "helo":
        return resinfo("spf", result.result, properties=(("smtp.helo", result.helo),))
    return resinfo("spf", result.result, properties=(("smtp.mailfrom", result.domain),))


def _explain(result: Evaluation) -> str:
    """The human part, in the words RFC 7208's examples use."""
    who, ip = result.sender or f"postmaster@{result.helo}", result.client_ip
    return {
        "pass": f"domain of {who} designates {ip} as permitted sender",
        "fail": f"domain of {who} does not designate {ip} as permitted sender",
        "softfail": f"domain of transitioning {who} does not designate {ip} as permitted sender",
        "neutral": f"{ip} is neither permitted nor denied by domain of {who}",
        "none": f"{result.domain} does not designate permitted sender hosts",
        "permerror": f"permanent error in processing domain of {result.domain}",
        "temperror": f"temporary error in processing domain of {result.domain}",
    }[result.result]


def _key_value(key: str, value: str) -> str:
    """RFC 7208: dot-atom or quoted-string; addresses and mechanisms are always quoted."""
    if key in ("client-ip", "helo", "receiver", "identity") and _DOT_ATOM.fullmatch(value):
        return value[:MAX_VALUE]
    return quoted(value)
