"""The MAIL FROM checks (checks/hygiene/sender.py): s/qmail's MFDNSCHECK and LOCALMFCHECK, and
QQF_LOCALSPOOF, through a real DNS server (nsd on loopback, fixtures/zones/sender.test.zone)."""

import cdblib
import pytest
from clamav import free_port
from conftest import assert_clean_failure, envelope

# The sender is judged the same way in both modes: the tests marked both_modes also run through
# qqfilter serve (its DNS cache, the peer's environment, the client's words).

CLIENT = "192.0.2.1"
MESSAGE = (
    b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
    b"From: someone\nSubject: sender\n\nhello\n"
)


class Sender:
    """The harness with a control directory and the test DNS server; calling it submits one
    message from ``address`` with the given variables."""

    def __init__(self, qq, dns: str) -> None:
        self.qq = qq
        self.dns = dns
        self.control = qq.tmp / "qmail" / "control"
        self.control.mkdir(parents=True)

    def __call__(self, address: bytes, **env: str):
        settings = {"QQF_DNS": self.dns, "TCPREMOTEIP": CLIENT, **env}
        return self.qq.submit(MESSAGE, envelope(address, b"bob@example.org"), env=settings)


@pytest.fixture
def sender(qq, nsd_server) -> Sender:
    return Sender(qq, nsd_server.address)


def delivered(out) -> None:
    """Accepted: handed to qmail-queue unchanged, one log line."""
    assert out.returncode == 0, out.stderr
    assert out.message == MESSAGE
    assert len(out.lines) == 1, out.stderr


def refused(out, tag: str) -> None:
    assert_clean_failure(out, 31)
    assert out.field("check") == "sender"
    assert out.field("verdict") == "reject"
    assert out.field("tag") == tag


def dead_dns() -> str:
    return f"127.0.0.1:{free_port()}"


# MFDNSCHECK

ACCEPTED = [
    (b"alice@mx.sender.test", "mx.sender.test: MX mail.mx.sender.test"),
    (b"alice@mx6.sender.test", "mx6.sender.test: MX mail.mx6.sender.test"),
    (b"alice@a.sender.test", "a.sender.test: no MX, an address"),
    (b"alice@aaaa.sender.test", "aaaa.sender.test: no MX, an address"),
    (b"alice@second.sender.test", "second.sender.test: MX mail.mx.sender.test"),
    (b"alice@alias.sender.test", "alias.sender.test: MX mail.mx.sender.test"),
    (b"Alice@MX.Sender.TEST.", "mx.sender.test: MX mail.mx.sender.test"),
    (b"mx.sender.test", "mx.sender.test: MX mail.mx.sender.test"),  # no @: all of it
    (b"alice@mx.sender.test ", "mx.sender.test: MX mail.mx.sender.test"),  # dnsq: 1 blank
    (b"alice@[192.0.2.1]", "[192.0.2.1]: an address literal"),
    (b"alice@[IPv6:2001:db8::1]", "[ipv6:2001:db8::1]: an address literal"),
]


def test_a_sender_domain_with_a_mail_exchanger_is_delivered(sender):
    for address, note in ACCEPTED:
        out = sender(address, MFDNSCHECK="1")
        delivered(out)
        assert out.field("notes") == f"sender: {note}", address


NO_MX = "has no mail exchanger (MX or address)"
INVALID = "is not a valid domain name"
REFUSED = [
    (b"alice@none.sender.test", "none.sender.test", NO_MX),
    (b"alice@txt.sender.test", "txt.sender.test", NO_MX),
    (
        b"alice@noaddr.sender.test",
        "noaddr.sender.test",
        "has no mail exchanger (its MX hosts have no address)",
    ),
    (b"alice@nullmx.sender.test", "nullmx.sender.test", "accepts no mail (RFC 7505 null MX)"),
    (b"none.sender.test", "none.sender.test", NO_MX),
    (b"alice@", "(empty)", INVALID),
    (b"alice@a..sender.test", "a..sender.test", INVALID),
    (b"alice@exa mple.sender.test", "exa mple.sender.test", INVALID),
]


@pytest.mark.both_modes
def test_a_sender_domain_without_one_is_refused(sender):
    for address, domain, words in REFUSED:
        out = sender(address, MFDNSCHECK="1")
        refused(out, "Reject::ORIG::DNS_MF")
        assert out.field("reason") == f"sender domain {domain} {words}", address


@pytest.mark.both_modes
def test_the_client_is_told_why_with_the_status(sender):
    qq, env = sender.qq, {"MFDNSCHECK": "", "QQF_DNS": sender.dns}
    out, reply = qq.submit_for_reply(MESSAGE, envelope(b"a@nullmx.sender.test", b"b@x.org"), env)
    assert out.returncode == 82
    assert (
        reply == b"Dsender domain nullmx.sender.test accepts no mail (RFC 7505 null MX) (#5.7.27)"
    )
    out, reply = qq.submit_for_reply(MESSAGE, envelope(b"a@none.sender.test", b"b@x.org"), env)
    assert reply.endswith(b"has no mail exchanger (MX or address) (#5.1.8)")


def test_mfdnscheck_set_empty_is_on_and_unset_is_off(sender):
    refused(sender(b"alice@none.sender.test", MFDNSCHECK=""), "Reject::ORIG::DNS_MF")
    out = sender(b"alice@none.sender.test")
    delivered(out)
    assert out.field("notes") is None


@pytest.mark.both_modes
def test_a_dns_failure_is_a_tempfail_never_a_refusal(sender):
    out = sender(b"alice@mx.sender.test", MFDNSCHECK="", QQF_DNS=dead_dns(), QQF_DNSTIMEOUT="0.5")
    assert_clean_failure(out, 71)
    assert out.field("check") == "sender"
    assert out.field("verdict") == "tempfail"
    assert (
        out.field("reason") == "DNS temporary failure looking up the sender domain mx.sender.test"
    )
    assert "MX mx.sender.test" in out.field("detail")


def test_a_question_mark_line_in_badmailfrom_skips_it(sender):
    (sender.control / "badmailfrom").write_text(
        "?someone@none.sender.test\n?ALICE@None.Sender.Test\n"
    )
    out = sender(b"alice@none.sender.test", MFDNSCHECK="")
    delivered(out)
    assert out.field("notes") == "sender: MFDNSCHECK skipped: ?sender in control/badmailfrom"
    refused(sender(b"bob@none.sender.test", MFDNSCHECK=""), "Reject::ORIG::DNS_MF")


def test_relayclient_local_mail_and_bounces_are_not_checked(sender):
    out = sender(b"alice@none.sender.test", MFDNSCHECK="", RELAYCLIENT="")
    delivered(out)
    assert out.field("notes") == "sender: skipped: RELAYCLIENT"
    out = sender(b"alice@none.sender.test", MFDNSCHECK="", TCPREMOTEIP="")
    delivered(out)
    assert out.field("notes") == "sender: skipped: local injection"
    out = sender(b"", MFDNSCHECK="", QQF_LOCALSPOOF="refuse", QQF_DNS=dead_dns())
    delivered(out)
    assert out.field("notes") is None


# LOCALMFCHECK: RELAYCLIENT sessions only


def test_localmfcheck_plain_mode_wants_one_of_our_domains(sender):
    (sender.control / "rcpthosts").write_text("example.org\n.example.net\n")
    out = sender(b"alice@example.org", LOCALMFCHECK="", RELAYCLIENT="")
    delivered(out)
    assert out.field("notes") == "sender: local sender: rcpthosts"
    delivered(sender(b"", LOCALMFCHECK="", RELAYCLIENT=""))  # the bounce: localaddr's 0
    for mode in ("", "!"):  # "!" (mailfromrules.cdb) is read as the plain mode
        delivered(sender(b"alice@Sub.Example.NET", LOCALMFCHECK=mode, RELAYCLIENT=""))
        out = sender(b"alice@example.com", LOCALMFCHECK=mode, RELAYCLIENT="")
        refused(out, "Reject::ORIG::Invalid_Mailfrom")
        assert out.field("reason") == "sender address not permitted for this client"
        assert out.field("detail") == "LOCALMFCHECK: example.com is not in rcpthosts"
    out = sender(b"root", LOCALMFCHECK="", RELAYCLIENT="")  # qmail's rcpthosts(): no @, yes
    delivered(out)
    assert out.field("notes") == "sender: local sender: no domain"


def test_localmfcheck_with_a_domain_allows_that_domain_too(sender):
    (sender.control / "rcpthosts").write_text("example.org\n")
    out = sender(b"alice@Branch.Example", LOCALMFCHECK="branch.example", RELAYCLIENT="")
    delivered(out)
    assert out.field("notes") == "sender: local sender: the LOCALMFCHECK domain"
    delivered(sender(b"alice@example.org", LOCALMFCHECK="branch.example", RELAYCLIENT=""))
    out = sender(b"alice@branch", LOCALMFCHECK="branch.example", RELAYCLIENT="")
    refused(out, "Reject::ORIG::Invalid_Mailfrom")  # s/qmail's str_diffn took a prefix


def test_localmfcheck_without_rcpthosts_allows_every_domain_as_qmail_does(sender):
    out = sender(b"alice@example.com", LOCALMFCHECK="", RELAYCLIENT="")
    delivered(out)
    assert out.field("notes") == "sender: local sender: no control/rcpthosts"


@pytest.mark.both_modes
def test_localmfcheck_equals_wants_the_authenticated_user(sender):
    env = {"LOCALMFCHECK": "=", "RELAYCLIENT": ""}
    out = sender(b"Alice@Example.org", TCPREMOTEINFO="alice@example.org", **env)
    delivered(out)
    assert out.field("notes") == "sender: local sender: the authenticated user"
    out = sender(b"bob@example.org", TCPREMOTEINFO="alice@example.org", **env)
    refused(out, "Reject::ORIG::Invalid_Mailfrom")
    assert out.field("detail") == "LOCALMFCHECK (=): TCPREMOTEINFO is another user"
    out = sender(b"alice@example.org", **env)
    refused(out, "Reject::ORIG::Invalid_Mailfrom")
    assert out.field("detail") == "LOCALMFCHECK (=): TCPREMOTEINFO is unset"


def test_localmfcheck_question_mark_wants_the_certificates_address(sender):
    env = {"LOCALMFCHECK": "?", "RELAYCLIENT": ""}
    out = sender(b"alice@example.org", SSL_CLIENT_S_DN_Email="ALICE@example.org", **env)
    delivered(out)
    assert out.field("notes") == "sender: local sender: the client certificate's address"
    out = sender(b"bob@example.org", SSL_CLIENT_S_DN_Email="alice@example.org", **env)
    refused(out, "Reject::ORIG::Invalid_Mailfrom")
    refused(sender(b"alice@example.org", **env), "Reject::ORIG::Invalid_Mailfrom")


def test_localmfcheck_leaves_outside_clients_alone(sender):
    (sender.control / "rcpthosts").write_text("example.org\n")
    for mode in ("", "="):
        out = sender(b"alice@example.com", LOCALMFCHECK=mode)
        delivered(out)
        assert out.field("notes") is None


# QQF_LOCALSPOOF


def test_localspoof_refuses_our_domains_from_outside_clients(sender):
    (sender.control / "rcpthosts").write_text("example.org\n")
    (sender.control / "locals").write_text("Mail.Example.org\n")
    more = sender.control / "morercpthosts.cdb"
    with open(more, "wb") as stream, cdblib.Writer(stream) as writer:
        writer.put(b"example.net", b"")
    env = {"QQF_LOCALSPOOF": "refuse", "QQF_DNS": dead_dns()}  # refused before any DNS
    for address in (b"a@example.org", b"a@EXAMPLE.NET.", b"a@mail.example.org"):
        out = sender(address, **env)
        refused(out, "Reject::ORIG::Local_Mailfrom")
        domain = address.decode().partition("@")[2].lower().rstrip(".")
        assert out.field("reason") == (
            f"sender address in our own domain {domain} from an outside client"
        )
    out = sender(b"a@example.com", QQF_LOCALSPOOF="refuse")
    delivered(out)
    assert out.field("notes") is None
    out = sender(b"a@example.org", QQF_LOCALSPOOF="refuse", RELAYCLIENT="")
    delivered(out)
    assert out.field("notes") == "sender: skipped: RELAYCLIENT"
    delivered(sender(b"a@example.org"))  # off by default


def test_localspoof_reads_control_me_when_locals_is_absent(sender):
    (sender.control / "me").write_text("mx.example.org\n")
    refused(sender(b"a@mx.example.org", QQF_LOCALSPOOF="refuse"), "Reject::ORIG::Local_Mailfrom")


def test_localspoof_and_mfdnscheck_together(sender):
    (sender.control / "rcpthosts").write_text("mx.sender.test\n")
    env = {"QQF_LOCALSPOOF": "refuse", "MFDNSCHECK": ""}
    refused(sender(b"a@mx.sender.test", **env), "Reject::ORIG::Local_Mailfrom")
    refused(sender(b"a@none.sender.test", **env), "Reject::ORIG::DNS_MF")
    delivered(sender(b"a@a.sender.test", **env))


def test_the_settings_as_the_file_and_qqfilter_config_spell_them():
    from qqfilter.checks.hygiene.sender import LOCALMFCHECK, LOCALSPOOF, MFDNSCHECK
    from qqfilter.settings import load

    settings, errors = load({"QQF_CONFIG": "/dev/null"})
    assert (settings[MFDNSCHECK], settings[LOCALMFCHECK], settings[LOCALSPOOF]) == (
        None,
        None,
        "off",
    )
    settings, errors = load({"QQF_CONFIG": "/dev/null", "MFDNSCHECK": "", "LOCALMFCHECK": ""})
    assert (settings[MFDNSCHECK], settings[LOCALMFCHECK], errors) == ("on", "", [])
    for value, expected in ((True, "on"), (False, None), ("off", None), ("1", "1")):
        assert MFDNSCHECK.parse(value) == expected
    for value, expected in ((True, ""), (False, None), ("off", None), ("=", "=")):
        assert LOCALMFCHECK.parse(value) == expected


def test_an_invalid_localspoof_is_55(sender):
    out = sender(b"a@example.org", QQF_LOCALSPOOF="yes")
    assert_clean_failure(out, 55)
    assert "must be one of: off, refuse" in out.field("reason")


# hostile senders

HOSTILE = [
    b"a" * 980 + b"@none.sender.test",
    b"x@" + b"a." * 450 + b"sender.test",
    b"x@" + b"b" * 64 + b".sender.test",
    b"x@\xff\xfe\xc3.sender.test",
    "x@b\u00fccher.sender.test".encode(),
    "x@\u2603\ufffd..sender.test".encode(),
    b"x@a\\000.sender.test",
    b"x@[IPv6:zz::1]",
    b"line\r\nX-Injected: yes@mx.sender.test",
    b"@@@@",
    b" ",
    b".",
]


def test_hostile_senders_finish_with_one_line(sender):
    (sender.control / "rcpthosts").write_text("example.org\n")
    for address in HOSTILE:
        out = sender(address, MFDNSCHECK="", QQF_LOCALSPOOF="refuse", LOCALMFCHECK="")
        assert out.returncode in (0, 31), (address, out.stderr)
        assert "Traceback" not in out.stderr
        assert len(out.lines) == 1, out.stderr
        if out.returncode == 31:
            assert out.field("tag") == "Reject::ORIG::DNS_MF"
            assert len(out.field("reason")) < 200
    for address in HOSTILE[::5]:
        out = sender(address, LOCALMFCHECK="", RELAYCLIENT="")
        assert out.returncode in (0, 31), (address, out.stderr)
        assert len(out.lines) == 1, out.stderr
