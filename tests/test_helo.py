"""The helo check (s/qmail's HELOCHECK, control/badhelo, the split horizon) through a real
DNS server (nsd on loopback, fixtures/zones/helo.test.zone)."""

import os
import re
import time

import pytest
from clamav import free_port
from conftest import assert_clean_failure, envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from qqfilter.checks.hygiene import helo as unit
from qqfilter.checks.hygiene.helo import wildmat

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

CLIENT = "192.0.2.1"
LOCAL = "192.0.2.53"  # TCPLOCALIP: this server's address
ME = "mx.example.org"
BODY = b"From: someone\nSubject: helo\n\nhello\n"
BADHELO = "bad.example\n"
BAD = "Reject::SNDR::Bad_Helo"
DNS = "Reject::SNDR::DNS_Helo"


def received(helo: bytes | None, host: bytes = b"unknown", ip: bytes = CLIENT.encode()) -> bytes:
    """A message as stock qmail-smtpd hands it on: its Received line on top, ``(HELO ...)``
    left out when ``helo`` is None (the HELO equalled the host name, or there was none)."""
    said = b" (HELO " + helo + b")" if helo is not None else b""
    return (
        b"Received: from " + host + said + b" (" + ip + b")\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n" + BODY
    )


@pytest.fixture
def helo(qq, nsd_server):
    """The harness with control/me, a control/badhelo and the test DNS server; ``run``
    submits with HELOCHECK (None: unset) and the HELO name as a patched qmail-smtpd exports
    it (HELOHOST; None: unset, the Received line tells)."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "me").write_text(ME + "\n")
    (control / "badhelo").write_text(BADHELO)

    def run(helocheck: str | None, name: str | None = "mail.example.com", **env: str):
        message = env.pop("message", BODY)
        values = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": CLIENT, "TCPLOCALIP": LOCAL}
        if helocheck is not None:
            values["HELOCHECK"] = helocheck
        if name is not None:
            values["HELOHOST"] = name
        values.update(env)
        return qq.submit(message, envelope(b"a@example.com", b"b@example.org"), env=values)

    run.control = control  # type: ignore[attr-defined]
    return run


def refused(out, tag: str, cond: str, code: int = 31) -> None:
    assert_clean_failure(out, code)
    assert out.field("check") == "helo"
    assert out.field("tag") == tag
    assert out.field("detail").endswith(f" '{cond}'")


def accepted(out) -> None:
    assert out.returncode == 0, out.stderr
    assert out.queued


# HELOCHECK's values: (HELOCHECK, HELO, more variables, refusal (tag, cond) or None)
MODES = {
    "empty-value-listed": ("", "bad.example", {}, (BAD, ".")),
    "empty-value-empty-helo": ("", "", {}, None),
    "long-value-listed": ("yes, check it", "bad.example", {}, (BAD, ".")),
    "long-value-unlisted": ("yes, check it", "good.example", {}, None),
    "dot-empty-helo": (".", "", {}, (BAD, "!")),
    "dot-listed": (".", "bad.example", {}, (BAD, ".")),
    "bang-empty-helo": ("!", "", {}, (BAD, "!")),
    "bang-reads-no-badhelo": ("!", "bad.example", {}, None),
    "bang-no-split-horizon": ("!", "localhost", {}, None),
    "equal-not-the-host": ("=", "other.example", {"TCPREMOTEHOST": "mail.example.com"}, (DNS, "=")),
    "equal-host-any-case": ("=", "MAIL.Example.COM", {"TCPREMOTEHOST": "mail.example.com"}, None),
    "equal-host-unknown": ("=", "mail.example.com", {}, (DNS, "=")),
    "equal-listed-first": ("=", "bad.example", {"TCPREMOTEHOST": "x.example"}, (BAD, ".")),
    "dash-is-off": ("-", "bad.example", {}, None),
    "unset-is-off": (None, "bad.example", {}, None),
}


@pytest.mark.parametrize("case", list(MODES))
@pytest.mark.one_shot  # the same reading in both modes; resident keeps the DNS cases
def test_each_helocheck_value(helo, case):
    helocheck, name, env, refusal = MODES[case]
    out = helo(helocheck, name, **env)
    if refusal is None:
        accepted(out)
    else:
        refused(out, *refusal)
        assert out.field("verdict") == "reject"


# HELOCHECK=A and M against the zone: (mode, HELO, refusal cond or None); the first four
# both ways (the resident server's resolver and cache), the rest one-shot
LOOKUPS = {
    "A-ipv4": ("A", "a.helo.test", None),
    "A-nxdomain": ("A", "nx.helo.test", "A"),
    "M-mx": ("M", "mx.helo.test", None),
    "M-null-mx": ("M", "nullmx.helo.test", "M"),
    "A-ipv6-only": ("A", "aaaa.helo.test", None),
    "A-no-address": ("A", "txt.helo.test", "A"),
    "A-mx-is-no-address": ("A", "mx.helo.test", "A"),
    "A-empty-helo": ("A", "", "A"),
    "A-own-literal": ("A", f"[{CLIENT}]", None),
    "M-mx-ipv6": ("M", "mx6.helo.test", None),
    "M-no-mx-own-address": ("M", "a.helo.test", None),
    "M-mx-hosts-without-address": ("M", "deadmx.helo.test", "M"),
    "M-nxdomain": ("M", "nx.helo.test", "M"),
    "M-nothing": ("M", "txt.helo.test", "M"),
}


def lookup(helo, case: str) -> None:
    mode, name, cond = LOOKUPS[case]
    out = helo(mode, name)
    if cond is None:
        accepted(out)
        assert out.field("notes") == f"helo: HELO {name} ok"
    else:
        refused(out, DNS, cond)
        assert out.field("detail") == f"H:{name} '{cond}'"


@pytest.mark.parametrize("case", list(LOOKUPS)[:4])
def test_helo_name_in_dns(helo, case):
    lookup(helo, case)


@pytest.mark.one_shot
@pytest.mark.parametrize("case", list(LOOKUPS)[4:])
def test_helo_name_in_dns_more(helo, case):
    lookup(helo, case)


@pytest.mark.one_shot
@pytest.mark.parametrize(
    ("mode", "lines", "name", "refusal"),
    [
        ("A", "bad.example\n", "bad.example", (BAD, ".")),  # badhelo before DNS
        ("A", "nx.helo.test!\n", "nx.helo.test", None),  # an exception is not looked up
        ("M", "*.helo.test\nnx.helo.test!\n", "nx.helo.test", None),
        ("A", "", "someone@a.helo.test", None),  # dnsq: the part after the @
        ("A", "", "x" * 300, (DNS, "A")),  # no DNS name: not asked
        ("A", "", "a..helo.test", (DNS, "A")),
    ],
)
def test_dns_modes_with_badhelo_and_odd_names(helo, mode, lines, name, refusal):
    (helo.control / "badhelo").write_text(lines)
    out = helo(mode, name)
    if refusal is None:
        accepted(out)
    else:
        refused(out, *refusal)


@pytest.mark.parametrize("mode", ["A", "M"])
def test_dns_that_cannot_answer_is_a_tempfail_never_a_refusal(helo, mode):
    started = time.monotonic()
    out = helo(mode, "nx.helo.test", QQF_DNS=f"127.0.0.1:{free_port()}", QQF_DNSTIMEOUT="0.2")
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("check") == "helo"
    assert out.field("tag") is None
    assert out.field("reason") == "cannot check the HELO name now, try again later"
    assert out.field("detail").startswith("H:nx.helo.test DNS ")
    assert time.monotonic() - started < 10


# control/badhelo's forms: (lines, HELO, cond or None)
FORMS = {
    "exact": ("bad.example\n", "bad.example", "."),
    "exact-any-case": ("Bad.Example\n", "BAD.example", "."),
    "star": ("*.dynamic.example\n", "1-2-3.dynamic.example", "*"),
    "question-mark": ("host-??.example\n", "host-42.example", "*"),
    "range": ("[a-c]x.example\n", "bx.example", "*"),
    "negated-set": ("mail[^0-9].example\n", "mailx.example", "*"),
    "exception-name-bang": ("*.example\ngood.example!\n", "good.example", None),
    "exception-name-bang-others": ("*.example\ngood.example!\n", "other.example", "*"),
    "negation-line-after": ("*.example\n!good*.example\n", "goodhost.example", None),
    "negation-line-after-others": ("*.example\n!good*.example\n", "badhost.example", "*"),
    "negation-line-before": ("!good*.example\n*.example\n", "goodhost.example", "*"),
    "comments-and-blanks": ("# bad.example\n\n  \nworse.example\n", "bad.example", None),
}


@pytest.mark.one_shot
@pytest.mark.parametrize("case", list(FORMS))
def test_each_badhelo_form(helo, case):
    lines, name, cond = FORMS[case]
    (helo.control / "badhelo").write_text(lines)
    out = helo("", name)
    if cond is None:
        accepted(out)
    else:
        refused(out, BAD, cond)
        assert out.field("reason") == f"HELO {name} is refused here"


def test_nobadhelo_ignores_the_file(helo):
    refused(helo("", "bad.example"), BAD, ".")
    accepted(helo("", "bad.example", NOBADHELO=""))


@pytest.mark.one_shot
def test_nobadhelo_keeps_the_split_horizon(helo):
    (helo.control / "badhelo").write_text("localhost!\n")
    accepted(helo("", "localhost"))
    refused(helo("", "localhost", NOBADHELO=""), BAD, "L")


# The split horizon: (HELO, more variables, cond or None). control/me is ME, TCPLOCALIP LOCAL.
HORIZON = {
    "control-me": (ME, {}, "@"),
    "control-me-any-case-final-dot": ("MX.Example.ORG.", {}, "@"),
    "control-locals": ("example.org", {}, "@"),
    "rcpthosts": ("example.net", {"TCPREMOTEIP": f"::ffff:{CLIENT}"}, "@"),
    "rcpthosts-dot-domain": ("smtp.hosted.example", {}, "@"),
    "rcpthosts-dot-domain-not-itself": ("hosted.example", {}, None),
    "own-address-literal": (f"[{LOCAL}]", {}, "@"),
    "own-address-bare": (LOCAL, {}, "@"),
    "loopback-literal": ("[127.0.0.1]", {}, "@"),
    "loopback-ipv6-literal": ("[IPv6:::1]", {}, "@"),
    "localhost": ("localhost", {}, "L"),
    "localhost-localdomain": ("LocalHost.localdomain", {}, "L"),
    "localhost-from-loopback": ("localhost", {"TCPREMOTEIP": "127.0.0.1"}, None),
    "own-name-from-this-host": (ME, {"TCPREMOTEIP": LOCAL}, None),
    "bare-address": (CLIENT, {}, "#"),
    "bare-ipv6-address": ("2001:db8::1", {"TCPREMOTEIP": "2001:db8::1"}, "#"),
    "literal-not-the-client": ("[198.51.100.7]", {}, "["),
    "literal-of-the-client": (f"[{CLIENT}]", {}, None),
    "ipv6-literal-of-the-client": ("[IPv6:2001:DB8::1]", {"TCPREMOTEIP": "2001:db8::1"}, None),
    "broken-literal": ("[192.0.2]", {}, "["),
    "name-in-brackets": ("[mail.example.com]", {}, "["),
}


@pytest.mark.one_shot
@pytest.mark.parametrize("case", list(HORIZON))
def test_split_horizon(helo, case):
    name, env, cond = HORIZON[case]
    (helo.control / "locals").write_text("localhost\nexample.org\n")
    (helo.control / "rcpthosts").write_text("example.org\nexample.net\n.hosted.example\n")
    out = helo("", name, **env)
    if cond is None:
        accepted(out)
    else:
        refused(out, BAD, cond)
        assert f"HELO {name} " in out.field("reason")  # as the client spelled it


@pytest.mark.one_shot
def test_a_name_bang_line_overrides_the_split_horizon(helo):
    (helo.control / "badhelo").write_text("localhost!\n[198.51.100.7]!\n")
    accepted(helo("", "localhost"))
    accepted(helo(".", "[198.51.100.7]"))


@pytest.mark.one_shot
def test_the_client_sees_the_reason(qq, helo, nsd_server):
    out, reply = qq.submit_for_reply(
        BODY,
        envelope(b"a@example.com", b"b@example.org"),
        {"HELOCHECK": "", "HELOHOST": "localhost", "TCPLOCALIP": LOCAL},
    )
    assert out.returncode == 82
    assert reply == b"DHELO localhost is refused from outside (#5.7.1)"


# The HELO name from stock qmail-smtpd's Received line (no HELOHOST).


@pytest.mark.one_shot
@pytest.mark.parametrize(
    ("mode", "message", "env", "cond"),
    [
        ("", received(b"bad.example"), {}, "."),
        ("", received(b"?" + CLIENT.encode() + b"?"), {}, None),
        ("=", received(b"mail.example.com"), {}, "="),
        # no (HELO ...): the HELO equalled the host name (or there was none): the host is judged
        ("", received(None, b"bad.example"), {"TCPREMOTEHOST": "bad.example"}, "."),
        ("=", received(None, b"mail.example.com"), {"TCPREMOTEHOST": "mail.example.com"}, None),
        # nor is any host known: nothing to judge, s/qmail's cond "0" is never guessed
        ("A", received(None), {}, None),
        # a message without qmail-smtpd's line: the same
        (".", BODY, {}, None),
    ],
)
def test_helo_from_the_received_line(helo, mode, message, env, cond):
    out = helo(mode, None, message=message, **env)
    if cond is None:
        accepted(out)
    else:
        refused(out, BAD if cond != "=" else DNS, cond)


@pytest.mark.one_shot
def test_unknown_helo_is_noted(helo):
    out = helo(".", None, message=received(None))
    accepted(out)
    assert out.field("notes") == "helo: no HELO name seen"


@pytest.mark.one_shot
def test_a_literal_from_the_received_line_is_shown_with_brackets(helo):
    out = helo("", None, message=received(b"?198.51.100.7?"))  # safeput's [198.51.100.7]
    refused(out, BAD, "[")
    assert out.field("detail") == "H:[198.51.100.7] '['"


def test_relayclient_and_local_mail_are_not_judged(helo):
    out = helo(".", "localhost", RELAYCLIENT="")
    accepted(out)
    assert out.field("notes") == "helo: skipped: RELAYCLIENT"
    out = helo(".", "localhost", TCPREMOTEIP="")
    accepted(out)
    assert out.field("notes") == "helo: skipped: local injection"


@pytest.mark.one_shot
def test_an_invalid_helocheck_is_a_configuration_error(helo):
    out = helo("x", "mail.example.com")
    assert_clean_failure(out, 55)
    assert "helocheck" in out.stderr


@pytest.mark.one_shot
def test_a_hostile_helo_and_a_pattern_heavy_badhelo_finish_fast(helo):
    lines = [f"*{'a*' * 40}c{i}*b" for i in range(300)]
    lines += ["*" + "[a-z]?" * 30 + "*c*b", "*" + "?" * 200 + "*c*b", "a*!*a*a*a*a*a*a*a*z"]
    (helo.control / "badhelo").write_text("\n".join(lines) + "\n")
    name = "a" * 4000 + "b"
    started = time.monotonic()
    out = helo(".", name)
    assert time.monotonic() - started < 5
    accepted(out)
    assert len(out.lines[0]) < 1000  # the log shows a bounded part of the HELO


@pytest.mark.one_shot
def test_the_detail_shows_at_most_255_characters_of_the_helo(helo):
    name = "b" * 1000 + ".example"
    (helo.control / "badhelo").write_text("b*\n")
    out = helo("", name)
    refused(out, BAD, "*")
    assert out.field("detail") == f"H:{'b' * 255}... '*'"
    assert out.field("reason") == f"HELO {'b' * 64}... is refused here"


# In-process: the pattern language, the settings' readings.


@pytest.mark.parametrize(
    ("text", "pattern", "matches"),
    [
        ("abc", "abc", True),
        ("abc", "ab", False),
        ("abc", "a*", True),
        ("abc", "*", True),
        ("", "*", True),
        ("", "?", False),
        ("abc", "a?c", True),
        ("abc", "a??c", False),
        ("abc", "*b*", True),
        ("abc", "*b", False),
        ("a.b.c", "*.*.*", True),
        ("aXb", "a[XYZ]b", True),
        ("aQb", "a[XYZ]b", False),
        ("a5b", "a[0-9]b", True),
        ("a5b", "a[^0-9]b", False),
        ("a5b", "a[!0-9]b", False),
        ("a]b", "a[]]b", True),
        ("a-b", "a[-x]b", True),
        ("a-b", "a[x-]b", True),
        ("a^b", "a[\\^]b", True),
        ("a]b", "a[^]]b", False),
        ("acb", "a[^]]b", True),
        ("a*b", "a\\*b", True),
        ("axb", "a\\*b", False),
        ("a?b", "a\\?b", True),
        ("abc", "abc\\", False),  # a trailing backslash matches nothing
        ("a[b", "a[b", False),  # nor does an unclosed set
        ("b", "[z-a]", False),  # an empty range
        ("b", "[^z-a]", True),
        ("aaaa", "*a*a*a*a*", True),
        ("aaa", "*a*a*a*a*", False),
    ],
)
def test_wildmat(text, pattern, matches):
    assert wildmat(text, pattern) is matches


def reference(text: str, pattern: str) -> bool:
    """Rich Salz's DoMatch, transcribed (recursive, exponential: small inputs only), with
    ``!`` as a second negation mark; a broken pattern matches nothing."""

    def match(t: int, p: int) -> bool | None:  # None: ABORT
        while p < len(pattern):
            c = pattern[p]
            if t >= len(text) and c != "*":
                return None
            if c == "\\":
                p += 1
                if p >= len(pattern) or text[t] != pattern[p]:
                    return False
            elif c == "*":
                while p + 1 < len(pattern) and pattern[p + 1] == "*":
                    p += 1
                if p + 1 >= len(pattern):
                    return True
                for start in range(t, len(text)):
                    found = match(start, p + 1)
                    if found is not False:
                        return found
                return None
            elif c == "[":
                negated = p + 1 < len(pattern) and pattern[p + 1] in "^!"
                p += negated
                hit = False
                if p + 1 < len(pattern) and pattern[p + 1] in "]-":
                    p += 1
                    hit = pattern[p] == text[t]
                last = pattern[p]
                while True:
                    p += 1
                    if p >= len(pattern):
                        return False
                    if pattern[p] == "]":
                        break
                    if pattern[p] == "-" and p + 1 < len(pattern) and pattern[p + 1] != "]":
                        p += 1
                        hit = hit or last <= text[t] <= pattern[p]
                    else:
                        hit = hit or text[t] == pattern[p]
                    last = pattern[p]
                if hit == negated:
                    return False
            elif c != "?" and c != text[t]:
                return False
            t += 1
            p += 1
        return t == len(text)

    return match(0, 0) is True and not broken(pattern)


def broken(pattern: str) -> bool:
    """An unclosed set or a trailing backslash anywhere."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 >= len(pattern):
                return True
            i += 2
            continue
        if pattern[i] == "[":
            j = i + (i + 1 < len(pattern) and pattern[i + 1] in "^!")
            j += j + 1 < len(pattern) and pattern[j + 1] in "]-"
            j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1 + (pattern[j] == "-" and j + 1 < len(pattern) and pattern[j + 1] != "]")
            if j >= len(pattern):
                return True
            i = j
        i += 1
    return False


@settings(max_examples=600, deadline=None)
@given(st.text("ab.-", max_size=8), st.text("ab.-*?[]^!\\", max_size=8))
def test_wildmat_reads_patterns_as_rich_salz_did(text, pattern):
    assert wildmat(text, pattern) is reference(text, pattern)


def test_wildmat_is_linear_on_hostile_input():
    text = "a" * 20000
    started = time.monotonic()
    for pattern in ["*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "*" + "?a" * 50 + "*b", "a*" * 500 + "b"]:
        assert not wildmat(text, pattern)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("", ""),
        ("-", ""),
        ("off", ""),
        ("on", "on"),
        ("a", "A"),
        ("m", "M"),
        ("=", "="),
        (".", "."),
    ],
)
def test_helocheck_readings(value, mode):
    assert unit._helocheck(value) == mode


@pytest.mark.parametrize("value", ["x", "0", "\0ab", 1, True])
def test_helocheck_refuses(value):
    with pytest.raises(ValueError):
        unit._helocheck(value)


def test_the_empty_variables_are_set():
    from qqfilter.settings import load

    env = {"QQF_CONFIG": os.devnull}
    loaded, errors = load({**env, "HELOCHECK": "", "NOBADHELO": ""})
    assert errors == []
    assert loaded[unit.HELOCHECK] == "on"
    assert loaded[unit.NOBADHELO] == "on"
    loaded, errors = load({**env, "NOBADHELO": "-"})
    assert (loaded[unit.HELOCHECK], loaded[unit.NOBADHELO]) == ("", "")


@pytest.mark.parametrize(
    ("literal", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[ipv6:2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),  # without the tag: the address is plain anyway
        ("[ipv6:::ffff:192.0.2.1]", "192.0.2.1"),
        ("[ipv6:192.0.2.1]", None),
        ("[192.0.2.001]", None),
        ("[fe80::1%eth0]", None),
        ("[]", None),
        ("[192.0.2.1", None),
        ("[" + "1" * 100 + "]", None),
    ],
)
def test_address_literals(literal, address):
    found = unit._literal(literal)
    assert (str(found) if found is not None else None) == address


@pytest.mark.one_shot
def test_the_log_line_survives_any_helohost(helo):
    out = helo("", "bad\x01\"name' \\ x=y\n", QQF_LOG="text")
    accepted(out)
    assert len(out.lines) == 1
    assert re.search(r"notes=\S", out.lines[0])
