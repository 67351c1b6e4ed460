"""Each DKIM signature of a message verified (RFC 6376), and its ARC chain (RFC 8617), with
dkimpy over the project's DNS.

dkimpy's ``verify`` answers True or False, and False also for a key it could not find or a
DNS timeout, which RFC 8601 keeps apart (fail, permerror, temperror). So each signature's
key is looked up here first, through shared/lookups under the unit's deadline, judged
(missing, revoked, unparsable), and only then handed to dkimpy, which hashes and verifies
with that record. What dkimpy still refuses is sorted by its exception: a signature that
does not parse or has expired is ``neutral``, a body that does not match ``fail``, an RSA key
under 1024 bits or an rsa-sha1 signature ``policy`` (RFC 8301). At most MAX_SIGNATURES are
verified: a message with hundreds would otherwise buy as many DNS questions.

dkimpy, PyNaCl (ed25519) and dnspython are imported here, when a message has a signature.
"""

from __future__ import annotations

import re

from qqfilter.shared import dnsimport
from qqfilter.shared.lookups import Lookups, Undecided

MAX_SIGNATURES = 10
MIN_BITS = 1024
_SELECTOR = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")
"""A selector: DNS labels (RFC 6376 section 3.1), as its key's name is made of them."""


class Signature:
    """One DKIM signature and its result: ``result`` (pass, fail, neutral, policy, permerror,
    temperror), ``problem`` (why not pass), ``domain`` (d=), ``selector`` (s=),
    ``algorithm`` (a=), ``stamp`` (the first 8 characters of b=, RFC 6008), ``identity``
    (i=), ``length`` (l=, -1 without), ``bits`` (the key's size, 0 when unknown).
    A hand-written ``__slots__`` record, as on the whole queue path."""

    __slots__ = (
        "algorithm",
        "bits",
        "domain",
        "identity",
        "length",
        "problem",
        "result",
        "selector",
        "stamp",
    )

    def __init__(
        self,
        result: str,
        *,
        problem: str = "",
        domain: str = "",
        selector: str = "",
        algorithm: str = "",
        stamp: str = "",
        identity: str = "",
        length: int = -1,
        bits: int = 0,
    ) -> None:
        self.result = result
        self.problem = problem
        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm
        self.stamp = stamp
        self.identity = identity
        self.length = length
        self.bits = bits


class _Keys:
    """The TXT records of one message's key names, each asked once, as dkimpy's ``dnsfunc``
    wants them; DNS trouble is remembered (``trouble``) so a False from dkimpy can be told
    from one it made of a timeout."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups
        self.records: dict[str, list[str]] = {}
        self.trouble = ""

    def ask(self, name: str) -> list[str]:
        name = name.rstrip(".").lower()
        if name not in self.records:
            self.records[name] = self.lookups.ask(name, "TXT")
        return self.records[name]

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        import dkim

        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.ask(text)
        except Undecided as exc:
            self.trouble = str(exc)
            raise dkim.DnsTimeoutError(str(exc)) from None
        return records[0].encode("latin-1") if records else None


def verify(data: bytes, servers: tuple[str, ...], timeout: float) -> list[Signature]:
    """Every DKIM-Signature of the message ``data``, in order, verified."""
    try:
        lookups = Lookups(servers, timeout)
    except Undecided as exc:
        return [Signature("temperror", problem=str(exc))]
    dnsimport.prepare()
    import dkim

    checker = dkim.DKIM(data, minkey=MIN_BITS)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    keys = _Keys(lookups)
    return [_one(checker, index, keys) for index in range(min(count, MAX_SIGNATURES))]


def _one(checker, index: int, keys: _Keys) -> Signature:
    import dkim
    from dkim.util import InvalidTagValueList, parse_tag_value

    value = [v for name, v in checker.headers if name.lower() == b"dkim-signature"][index]
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as exc:
        return Signature("neutral", problem=f"signature does not parse: {exc}")
    described = _described(tags)

    def signature(result: str, problem: str = "", bits: int = 0) -> Signature:
        return Signature(result, problem=problem, bits=bits, **described)

    try:
        checker.verify_headerprep(index)
    except dkim.DKIMException as exc:
        return signature("neutral", _words(exc))
    except Exception as exc:  # dkimpy on a hostile signature: a result, never a traceback
        return signature("neutral", f"signature does not parse: {type(exc).__name__}")
    from qqfilter.checks.dkim import valid_domain

    if not valid_domain(described["domain"]) or not _SELECTOR.fullmatch(described["selector"]):
        return signature("permerror", "d= or s= is not a DNS name")
    name = f"{described['selector']}._domainkey.{described['domain']}"
    try:
        records = keys.ask(name)
    except Undecided as exc:
        return signature("temperror", str(exc))
    if not records:
        return signature("permerror", f"no key at {name}")
    record = records[0].encode("latin-1")
    try:
        key_tags = parse_tag_value(record)
    except InvalidTagValueList as exc:
        return signature("permerror", f"key record does not parse: {exc}")
    if not key_tags.get(b"p", b"").strip():
        return signature("permerror", f"key revoked at {name}")
    try:
        dkim.evaluate_pk(name, record)
    except dkim.DKIMException as exc:
        return signature("permerror", f"unusable key at {name}: {_words(exc)}")
    keys.trouble = ""
    try:
        good = checker.verify(index, dnsfunc=keys.dnsfunc)
    except dkim.KeyFormatError as exc:
        if "too small" in str(exc):
            return signature("policy", f"weak key: {checker.keysize} bits", checker.keysize)
        return signature("permerror", _words(exc))
    except dkim.ValidationError as exc:
        result = "fail" if "body hash mismatch" in str(exc) else "neutral"
        return signature(result, "body changed" if result == "fail" else _words(exc))
    except dkim.DKIMException as exc:
        return signature("permerror", _words(exc))
    except Exception as exc:  # dkimpy on hostile input: a result, never a traceback
        return signature("permerror", f"cannot verify: {type(exc).__name__}")
    bits = checker.keysize if described["algorithm"].startswith("rsa") else 0
    if keys.trouble:
        return signature("temperror", keys.trouble)
    if not good:
        return signature("fail", "signature does not match the headers", bits)
    if described["algorithm"] == "rsa-sha1":
        return signature("policy", "rsa-sha1 is not accepted: RFC 8301", bits)
    return signature("pass", bits=bits)


def _described(tags: dict[bytes, bytes]) -> dict:
    """The signature's names, as text (what the Authentication-Results field shows)."""

    def text(tag: bytes) -> str:
        return tags.get(tag, b"").decode("latin-1").strip()

    length = text(b"l")
    return {
        "domain": text(b"d").lower(),
        "selector": text(b"s"),
        "algorithm": text(b"a").lower(),
        "stamp": "".join(text(b"b").split())[:8],
        "identity": text(b"i"),
        "length": int(length) if length.isdigit() else -1,
    }


def _words(exc: Exception) -> str:
    """dkimpy's words for ``exc``, on one short line."""
    words = " ".join(str(exc).split()) or type(exc).__name__
    return words[:200]


def arc(data: bytes, servers: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """The ARC chain's result (pass, fail, none, temperror) and a comment (``i=2``, or what
    failed)."""
    try:
        lookups = Lookups(servers, timeout)
    except Undecided as exc:
        return "temperror", str(exc)
    dnsimport.prepare()
    import dkim

    keys = _Keys(lookups)
    try:
        result, instances, why = dkim.arc_verify(data, dnsfunc=keys.dnsfunc, minkey=MIN_BITS)
    except Exception as exc:  # a chain that does not parse is a failed chain
        return "fail", _words(exc)
    # None: an earlier hop's seal said the chain had failed, so it ends there
    outcome = result.decode("ascii", "replace") if isinstance(result, bytes) else "fail"
    if outcome == "fail" and keys.trouble:
        return "temperror", keys.trouble
    if outcome == "pass":
        return "pass", f"i={len(instances)}"
    return outcome, _words(Exception(why)) if why and outcome != "none" else ""
