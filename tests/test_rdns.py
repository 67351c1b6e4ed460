"""The client's reverse DNS (QQF_RDNS) through a real DNS server: nsd on loopback serving
fixtures/zones/2.0.192.in-addr.arpa.zone, 8.b.d.0.1.0.0.2.ip6.arpa.zone and rdns.test.zone."""

import pytest
from clamav import free_port
from conftest import assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

MESSAGE = b"From: someone\nSubject: rdns\n\nhello\n"
TAG = "Reject::SNDR::DNS_Rhost"


@pytest.fixture
def rdns(qq, nsd_server):
    """Submit from client ``ip`` with QQF_RDNS=``mode`` (None: unset) and the test DNS."""

    def run(ip: str, mode: str | None = "fcrdns", **env: str):
        settings = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": ip}
        if mode is not None:
            settings["QQF_RDNS"] = mode
        settings.update(env)
        return qq.submit(MESSAGE, envelope(b"a@example.com", b"b@example.org"), env=settings)

    return run


def dead_dns() -> str:
    return f"127.0.0.1:{free_port()}"


def accepted(out, note: str) -> None:
    assert out.returncode == 0, out.stderr
    assert out.message == MESSAGE
    assert out.field("notes") == f"rdns: {note}"


def refused(out, reason: str) -> None:
    assert_clean_failure(out, 31)
    assert (out.field("check"), out.field("verdict")) == ("rdns", "reject")
    assert out.field("tag") == TAG
    assert out.field("reason") == reason


def tempfailed(out) -> None:
    assert_clean_failure(out, 71)
    assert (out.field("check"), out.field("verdict")) == ("rdns", "tempfail")


NOT_BACK = "reverse DNS of {} ({}) does not resolve back to it"

# client -> (ptr's outcome, fcrdns's outcome): ("ok", note), ("refused", reason), ("tempfail",);
# None: not run (a client with a PTR record passes ptr, whatever its names resolve to)
CASES = {
    "192.0.2.10": (("ok", "ok.rdns.test"), ("ok", "ok.rdns.test")),
    "192.0.2.11": (None, ("refused", NOT_BACK.format("192.0.2.11", "liar.rdns.test"))),
    "192.0.2.12": (
        ("ok", "liar.rdns.test (and 1 more)"),
        ("ok", "two.rdns.test (after liar.rdns.test)"),
    ),
    "192.0.2.13": (None, ("refused", NOT_BACK.format("192.0.2.13", "gone.rdns.test"))),
    "192.0.2.14": (
        ("refused", "no reverse DNS for 192.0.2.14"),
        ("refused", "no reverse DNS for 192.0.2.14"),
    ),
    # its PTR claims 192.0.2.10's name
    "192.0.2.15": (None, ("refused", NOT_BACK.format("192.0.2.15", "ok.rdns.test"))),
    "192.0.2.16": (  # twelve names, the twelfth confirming: ten are tried
        None,
        (
            "refused",
            NOT_BACK.format(
                "192.0.2.16", "many01.rdns.test, many02.rdns.test, many03.rdns.test and 7 more"
            ),
        ),
    ),
    "192.0.2.17": (("ok", "far.example"), ("tempfail",)),  # far.example: REFUSED
    "192.0.2.18": (None, ("ok", "eighteen.rdns.test (after far.example)")),
    "2001:db8::10": (("ok", "ok6.rdns.test"), ("ok", "ok6.rdns.test")),
    "2001:db8::11": (None, ("refused", NOT_BACK.format("2001:db8::11", "liar6.rdns.test"))),
    # ok.rdns.test has A records, no AAAA
    "2001:db8::12": (None, ("refused", NOT_BACK.format("2001:db8::12", "ok.rdns.test"))),
    "2001:db8::14": (
        ("refused", "no reverse DNS for 2001:db8::14"),
        ("refused", "no reverse DNS for 2001:db8::14"),
    ),
    "::ffff:192.0.2.10": (("ok", "ok.rdns.test"), ("ok", "ok.rdns.test")),
    "::FFFF:192.0.2.14": (
        ("refused", "no reverse DNS for 192.0.2.14"),
        ("refused", "no reverse DNS for 192.0.2.14"),
    ),
}


DETAILS = {  # fcrdns's refusals: the log says what each name resolved to
    "192.0.2.11": "A of liar.rdns.test (198.51.100.1)",
    "192.0.2.13": "A of gone.rdns.test (no A)",
    "192.0.2.14": "no PTR record for 14.2.0.192.in-addr.arpa",
    "192.0.2.15": "A of ok.rdns.test (203.0.113.5, 192.0.2.10)",
    "192.0.2.16": "A of many01.rdns.test (203.0.113.1); many02.rdns.test (203.0.113.2); "
    "many03.rdns.test (203.0.113.3); many04.rdns.test (203.0.113.4); "
    "many05.rdns.test (203.0.113.5); many06.rdns.test (203.0.113.6); "
    "many07.rdns.test (203.0.113.7); many08.rdns.test (203.0.113.8); "
    "many09.rdns.test (203.0.113.9); many10.rdns.test (203.0.113.10); "
    "2 more PTR names not tried",
    "2001:db8::11": "AAAA of liar6.rdns.test (2001:db8::99)",
    "2001:db8::12": "AAAA of ok.rdns.test (no AAAA)",
    "2001:db8::14": "no PTR record for "
    "4.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
    "::FFFF:192.0.2.14": "no PTR record for 14.2.0.192.in-addr.arpa",
}


@pytest.mark.parametrize(
    ("ip", "mode"),
    [
        (ip, mode)
        for ip, outcomes in CASES.items()
        for mode, outcome in zip(("ptr", "fcrdns"), outcomes, strict=True)
        if outcome is not None
    ],
)
@pytest.mark.one_shot  # the names are judged the same way in both modes
def test_each_client_in_each_mode(rdns, ip, mode):
    expected = CASES[ip][mode == "fcrdns"]
    assert expected is not None
    out = rdns(ip, mode)
    if expected[0] == "ok":
        accepted(out, expected[1])
    elif expected[0] == "refused":
        refused(out, expected[1])
        if mode == "fcrdns":
            assert out.field("detail") == DETAILS[ip]
    else:
        tempfailed(out)


def test_off_is_the_default_and_looks_nothing_up(rdns):
    for mode in (None, "off"):
        out = rdns("192.0.2.14", mode, QQF_DNS=dead_dns())
        assert out.returncode == 0, out.stderr
        assert out.field("notes") is None


@pytest.mark.parametrize(
    ("ip", "host", "note"),
    [
        ("192.0.2.12", "two.rdns.test", "two.rdns.test (TCPREMOTEHOST)"),  # liar not asked
        ("192.0.2.12", "TWO.rdns.test.", "two.rdns.test (TCPREMOTEHOST)"),
        ("192.0.2.16", "many12.rdns.test", "many12.rdns.test (TCPREMOTEHOST)"),  # past ten
        ("192.0.2.10", "unknown", "ok.rdns.test"),  # tcpserver's word for no name
        ("192.0.2.12", "ok.rdns.test", "two.rdns.test (after liar.rdns.test)"),  # ignored
    ],
)
@pytest.mark.one_shot  # the names are judged the same way in both modes
def test_tcpremotehost_is_tried_first_when_it_is_a_ptr_name(rdns, ip, host, note):
    accepted(rdns(ip, TCPREMOTEHOST=host), note)


@pytest.mark.parametrize(
    ("ip", "host", "reason", "detail"),
    [
        (  # a tcp rules line naming another host: not a PTR name, so never asked
            "192.0.2.11",
            "ok.rdns.test",
            NOT_BACK.format("192.0.2.11", "liar.rdns.test"),
            "A of liar.rdns.test (198.51.100.1); "
            "TCPREMOTEHOST ok.rdns.test is not a PTR name of 192.0.2.11",
        ),
        (  # the PTR and TCPREMOTEHOST agree, but the name is another host's
            "192.0.2.15",
            "ok.rdns.test",
            NOT_BACK.format("192.0.2.15", "ok.rdns.test"),
            "A of ok.rdns.test (203.0.113.5, 192.0.2.10)",
        ),
        (
            "192.0.2.11",
            "liar.rdns.test",
            NOT_BACK.format("192.0.2.11", "liar.rdns.test"),
            "A of liar.rdns.test (198.51.100.1)",
        ),
        (  # no PTR at all: TCPREMOTEHOST is no reverse DNS
            "192.0.2.14",
            "ok.rdns.test",
            "no reverse DNS for 192.0.2.14",
            "no PTR record for 14.2.0.192.in-addr.arpa",
        ),
    ],
)
@pytest.mark.one_shot  # the names are judged the same way in both modes
def test_a_lying_tcpremotehost_is_not_believed(rdns, ip, host, reason, detail):
    out = rdns(ip, TCPREMOTEHOST=host)
    refused(out, reason)
    assert out.field("detail") == detail


def test_a_lying_tcpremotehost_is_no_ptr_record_either(rdns):
    refused(
        rdns("192.0.2.14", "ptr", TCPREMOTEHOST="ok.rdns.test"), "no reverse DNS for 192.0.2.14"
    )


def test_relayclient_and_local_mail_are_not_judged(rdns):
    accepted(rdns("192.0.2.14", RELAYCLIENT=""), "skipped: RELAYCLIENT")
    accepted(rdns("", "ptr"), "skipped: local injection")


def test_dead_dns_is_could_not_decide(rdns):
    out = rdns("192.0.2.10", QQF_DNS=dead_dns(), QQF_DNSTIMEOUT="0.5")
    tempfailed(out)
    assert out.field("reason") == "DNS temporary failure checking the reverse DNS of 192.0.2.10"
    assert "PTR 10.2.0.192.in-addr.arpa" in out.field("detail")


def test_a_failed_forward_lookup_with_no_confirming_name_says_which(rdns):
    out = rdns("192.0.2.17")
    tempfailed(out)
    assert out.field("detail") == (
        "DNS servers failed for A far.example; A of far.example (no answer)"
    )


def test_a_client_address_that_is_not_one_is_could_not_decide(rdns):
    out = rdns("not-an-address", "ptr")
    tempfailed(out)
    assert out.field("detail") == "TCPREMOTEIP 'not-an-address' is not an IP address"


def test_the_client_is_told_why(qq, nsd_server):
    env = {"QQF_DNS": nsd_server.address, "QQF_RDNS": "fcrdns"}
    out, reply = qq.submit_for_reply(
        MESSAGE, envelope(b"a@example.com", b"b@example.org"), {**env, "TCPREMOTEIP": "192.0.2.11"}
    )
    assert out.returncode == 82
    assert reply == b"D" + NOT_BACK.format("192.0.2.11", "liar.rdns.test").encode() + b" (#5.7.25)"
    out, reply = qq.submit_for_reply(
        MESSAGE, envelope(b"a@example.com", b"b@example.org"), {**env, "TCPREMOTEIP": "192.0.2.17"}
    )
    assert out.returncode == 82
    assert reply == b"ZDNS temporary failure checking the reverse DNS of 192.0.2.17 (#4.4.3)"


def test_an_invalid_mode_is_55(rdns):
    out = rdns("192.0.2.10", "FCRDNS")
    assert_clean_failure(out, 55)
    assert "must be one of: off, ptr, fcrdns" in out.field("reason")
