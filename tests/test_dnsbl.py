"""DNS block and allow lists, and rblsmtpd's RBLSMTPD, through a real DNS server (nsd on
loopback, fixtures/zones/dnsbl.test.zone and dnswl.test.zone)."""

import time

import pytest
from clamav import free_port
from conftest import assert_clean_failure, envelope

# The lists are asked the same way in both modes: the tests marked both_modes also run through
# qqfilter serve (its DNS cache and threads, the client's words).

MESSAGE = b"From: someone\nSubject: dnsbl\n\nhello\n"
ENVELOPE = envelope(b"alice@example.com", b"bob@example.org")
LISTED = "192.0.2.2"  # dnsbl.test 127.0.0.2 with a TXT, other.dnsbl.test, allow.dnsbl.test
NOT_LISTED = "192.0.2.1"


@pytest.fixture
def dnsbl(qq, nsd_server):
    """``run(ip, **env)`` submits a message from client ``ip`` with the test DNS server."""

    def run(ip: str = LISTED, **env: str):
        settings = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": ip}
        settings.update(env)
        return qq.submit(MESSAGE, ENVELOPE, env=settings)

    return run


def refused(out, tag: str = "Reject::SNDR::DNSBL"):
    assert_clean_failure(out, 31)
    assert out.field("check") == "dnsbl"
    assert out.field("verdict") == "reject"
    assert out.field("tag") == tag
    return out


def accepted(out, notes: str | None = None):
    assert out.returncode == 0, out.stderr
    assert out.message == MESSAGE
    assert out.field("notes") == notes
    return out


@pytest.mark.both_modes
def test_a_listed_client_is_refused_with_the_lists_text(dnsbl):
    out = refused(dnsbl(LISTED, QQF_DNSBL="dnsbl.test"))
    assert out.field("reason") == (
        "client 192.0.2.2 is listed in dnsbl.test (127.0.0.2): listed: see http://dnsbl.test/2"
    )
    assert out.field("detail") == "listed in dnsbl.test=127.0.0.2*1; total 1 > 0"


@pytest.mark.both_modes
def test_the_client_sees_the_text_through_the_reply_pipe(qq, nsd_server):
    env = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": LISTED, "QQF_DNSBL": "dnsbl.test"}
    out, reply = qq.submit_for_reply(MESSAGE, ENVELOPE, env)
    assert out.returncode == 82
    assert reply == (
        b"Dclient 192.0.2.2 is listed in dnsbl.test (127.0.0.2): "
        b"listed: see http://dnsbl.test/2 (#5.7.1)"
    )


def test_without_a_txt_record_the_reason_names_the_list_and_its_answers(dnsbl):
    out = refused(dnsbl("192.0.2.3", QQF_DNSBL="dnsbl.test"))
    assert out.field("reason") == "client 192.0.2.3 is listed in dnsbl.test (127.0.0.2)"
    out = refused(dnsbl("192.0.2.7", QQF_DNSBL="dnsbl.test"))
    assert out.field("reason") == "client 192.0.2.7 is listed in dnsbl.test (127.0.0.2, 127.0.0.4)"


def test_a_client_no_list_names_is_delivered_and_nothing_is_noted(dnsbl):
    accepted(dnsbl(NOT_LISTED, QQF_DNSBL="dnsbl.test,other.dnsbl.test"))


@pytest.mark.parametrize(
    ("zones", "ip", "listed"),
    [
        ("dnsbl.test=127.0.0.2", "192.0.2.2", True),
        ("dnsbl.test=127.0.0.2", "192.0.2.4", False),
        ("dnsbl.test=127.0.0.[2..9]", "192.0.2.4", True),
        ("dnsbl.test=127.0.0.[2..9]", "192.0.2.5", False),  # 127.0.0.10
        ("dnsbl.test=127.0.0.3;127.0.0.4", "192.0.2.4", True),
        ("dnsbl.test=127.0.0.3;127.0.0.4", "192.0.2.2", False),
        ("dnsbl.test=127.0.0.[3;4..5]", "192.0.2.4", True),  # postscreen's list in brackets
        ("dnsbl.test=127.0.0.[3;4..5]", "192.0.2.2", False),
        ("dnsbl.test=127.0.[0..1].[9..10]", "192.0.2.5", True),  # a pattern in any number
        ("dnsbl.test", "192.0.2.6", False),  # 10.0.0.1: not in 127.0.0.0/8, not a listing
        ("dnsbl.test=10.0.0.1", "192.0.2.6", True),  # unless named
        ("dnsbl.test", "192.0.2.8", False),  # 127.255.255.254: "query refused"
        ("dnsbl.test=127.255.255.254", "192.0.2.8", True),
    ],
)
def test_codes_choose_the_answers_that_count(dnsbl, zones, ip, listed):
    out = dnsbl(ip, QQF_DNSBL=zones)
    if listed:
        refused(out)
    else:
        accepted(out)


@pytest.mark.parametrize(
    ("zones", "score", "ip", "outcome"),
    [
        # other.dnsbl.test lists 192.0.2.2 and .4; dnsbl.test lists .2, .3 and .4
        ("dnsbl.test,other.dnsbl.test*2", "3", "192.0.2.2", "refused: total 3 >= 3"),
        ("dnsbl.test,other.dnsbl.test*2", "3", "192.0.2.3", "total 1 under 3"),
        ("dnsbl.test,other.dnsbl.test*2", "3.5", "192.0.2.2", "total 3 under 3.5"),
        ("dnsbl.test*0.1,other.dnsbl.test*0.2", "0.3", "192.0.2.2", "refused: total 0.3 >= 0.3"),
        # postscreen's allow list inside the score: a negative weight
        ("dnsbl.test,allow.dnsbl.test*-1", "", "192.0.2.2", "total 0 not over 0"),
        ("dnsbl.test,other.dnsbl.test,allow.dnsbl.test*-1", "", LISTED, "refused: total 1 > 0"),
        ("dnsbl.test*5,allow.dnsbl.test*-3", "3", "192.0.2.2", "total 2 under 3"),
        # weight 0: a list that only notes
        ("dnsbl.test*0", "", "192.0.2.2", "total 0 not over 0"),
    ],
)
def test_weights_add_up_to_the_score(dnsbl, zones, score, ip, outcome):
    out = dnsbl(ip, QQF_DNSBL=zones, QQF_DNSBLSCORE=score)
    if outcome.startswith("refused: "):
        refused(out)
        assert out.field("detail").endswith(outcome.removeprefix("refused: "))
    else:
        assert out.returncode == 0, out.stderr
        assert out.field("notes").startswith("dnsbl: listed in ")
        assert out.field("notes").endswith(f", {outcome}")


def test_a_listing_under_the_score_is_noted_with_each_list(dnsbl):
    out = dnsbl(LISTED, QQF_DNSBL="dnsbl.test*5,allow.dnsbl.test*-3", QQF_DNSBLSCORE="3")
    accepted(
        out,
        "dnsbl: listed in dnsbl.test=127.0.0.2*5, allow.dnsbl.test=127.0.0.2*-3, total 2 under 3",
    )


def test_the_reason_names_a_list_of_positive_weight(dnsbl):
    out = refused(dnsbl(LISTED, QQF_DNSBL="dnsbl.test*0,other.dnsbl.test"))
    assert (
        out.field("reason")
        == "client 192.0.2.2 is listed in other.dnsbl.test (127.0.0.3): other list"
    )
    assert out.field("detail") == (
        "listed in dnsbl.test=127.0.0.2*0, other.dnsbl.test=127.0.0.3*1; total 1 > 0"
    )


@pytest.mark.parametrize(
    ("ip", "shown", "text"),
    [
        ("2001:db8::2", "2001:db8::2", "v6 listed"),  # 32 nibbles
        ("2001:DB8:0:0::2", "2001:DB8:0:0::2", "v6 listed"),
        ("::ffff:192.0.2.2", "192.0.2.2", "listed: see http://dnsbl.test/2"),
    ],
)
def test_ipv6_clients_are_looked_up_by_nibbles(dnsbl, ip, shown, text):
    out = refused(dnsbl(ip, QQF_DNSBL="dnsbl.test"))
    assert out.field("reason") == f"client {shown} is listed in dnsbl.test (127.0.0.2): {text}"
    accepted(dnsbl("2001:db8::3", QQF_DNSBL="dnsbl.test"))


def test_a_hostile_txt_record_stays_one_short_printable_line(qq, dnsbl, nsd_server):
    out = refused(dnsbl("192.0.2.9", QQF_DNSBL="dnsbl.test"))
    reason = out.field("reason")
    head = "client 192.0.2.9 is listed in dnsbl.test (127.0.0.2): "
    assert reason.startswith(head + 'bad X-Injected: yes?? second string "quoted" AAAA')
    assert reason.endswith("A...")
    assert len(reason) == len(head) + 200
    assert all(" " <= c <= "~" for c in reason)
    env = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": "192.0.2.9", "QQF_DNSBL": "dnsbl.test"}
    out, reply = qq.submit_for_reply(MESSAGE, ENVELOPE, env)
    assert out.returncode == 82
    assert reply.startswith(b"D" + head.encode()) and len(reply) <= 255
    assert b"\n" not in reply and b"\r" not in reply


def dead_dns() -> str:
    return f"127.0.0.1:{free_port()}"


def test_lists_that_do_not_answer_list_nobody_and_are_noted(dnsbl):
    started = time.monotonic()
    zones = "dnsbl.test,other.dnsbl.test"
    out = dnsbl(LISTED, QQF_DNSBL=zones, QQF_DNS=dead_dns(), QQF_DNSTIMEOUT="1")
    assert time.monotonic() - started < 5
    accepted(
        out,
        "dnsbl: zones dnsbl.test, other.dnsbl.test not answered "
        "(DNS timeout looking up A 2.2.0.192.dnsbl.test)",
    )


class HalfDeadLists:
    """A DNS server on loopback that answers for one list (``fast.test``: every client listed,
    127.0.0.2) and never for another (``slow.test``: queries read and dropped), as a list
    that is down looks to its users."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import dns.message
        import dns.rrset

        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text()
            if name.endswith(".slow.test."):
                continue
            answer = dns.message.make_response(query)
            if query.question[0].rdtype == 1:  # A
                answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "127.0.0.2"))
            self.sock.sendto(answer.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.both_modes
def test_a_list_that_never_answers_does_not_cost_the_others_their_answer(qq):
    """The lists are asked at once: the silent first one spends its own wait, and the second
    one's listing still refuses within the deadline."""
    server = HalfDeadLists()
    try:
        started = time.monotonic()
        env = {"QQF_DNS": server.address, "TCPREMOTEIP": LISTED, "QQF_DNSTIMEOUT": "2"}
        out = refused(qq.submit(MESSAGE, ENVELOPE, env={**env, "QQF_DNSBL": "slow.test,fast.test"}))
        assert time.monotonic() - started < 6
    finally:
        server.close()
    assert out.field("reason") == f"client {LISTED} is listed in fast.test (127.0.0.2)"
    assert "zone slow.test not answered" in out.field("detail")


def test_a_failing_list_does_not_stop_the_others(dnsbl):
    """nsd answers REFUSED for a zone it does not serve: a failure, at once."""
    out = refused(dnsbl(LISTED, QQF_DNSBL="nosuch.example,dnsbl.test"))
    assert out.field("detail") == (
        "listed in dnsbl.test=127.0.0.2*1; total 1 > 0; zone nosuch.example not answered "
        "(DNS servers failed for A 2.2.0.192.nosuch.example)"
    )
    accepted(
        dnsbl(NOT_LISTED, QQF_DNSBL="nosuch.example,dnsbl.test"),
        "dnsbl: zone nosuch.example not answered "
        "(DNS servers failed for A 1.2.0.192.nosuch.example)",
    )


def test_relayclient_local_mail_and_a_bad_address_are_not_looked_up(dnsbl):
    accepted(dnsbl(LISTED, QQF_DNSBL="dnsbl.test", RELAYCLIENT=""), "dnsbl: skipped: RELAYCLIENT")
    accepted(dnsbl("", QQF_DNSBL="dnsbl.test"), "dnsbl: skipped: local injection")
    note = "dnsbl: not looked up: TCPREMOTEIP 'junk' is not an IP address"
    accepted(dnsbl("junk", QQF_DNSBL="dnsbl.test"), note)


def test_a_client_on_an_allow_list_is_not_looked_up(dnsbl):
    refused(dnsbl("192.0.2.50", QQF_DNSBL="dnsbl.test"))
    skipped = "dnsbl: skipped: 192.0.2.50 is listed in dnswl.test"
    accepted(dnsbl("192.0.2.50", QQF_DNSBL="dnsbl.test", QQF_DNSWL="dnswl.test"), skipped)
    # an allow list that fails does not keep the next one from allowing
    accepted(
        dnsbl("192.0.2.50", QQF_DNSBL="dnsbl.test", QQF_DNSWL="nosuch.example,dnswl.test"), skipped
    )
    # dnswl.org's "query refused" answer (127.0.0.255) allows nobody
    refused(dnsbl("192.0.2.51", QQF_DNSBL="dnsbl.test", QQF_DNSWL="dnswl.test"))


def test_a_client_on_an_allow_list_skips_the_reverse_dns_check_too(dnsbl):
    from qqfilter.checks import units

    if "rdns" not in [unit.name for unit in units()]:
        pytest.skip("the rdns unit (qqfilter/checks/hygiene/rdns.py) is not there yet")
    out = dnsbl("192.0.2.50", QQF_RDNS="ptr")  # no PTR record for 192.0.2.50
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::SNDR::DNS_Rhost"
    out = dnsbl("192.0.2.50", QQF_RDNS="ptr", QQF_DNSBL="dnsbl.test", QQF_DNSWL="dnswl.test")
    assert out.returncode == 0, out.stderr
    notes = out.field("notes")
    assert "dnsbl: skipped: 192.0.2.50 is listed in dnswl.test" in notes
    assert "rdns: skipped: 192.0.2.50 is listed in dnswl.test" in notes


def test_rblsmtpd_empty_allows_the_client_without_asking_the_lists(dnsbl):
    accepted(dnsbl(LISTED, QQF_DNSBL="dnsbl.test", RBLSMTPD=""), "dnsbl: RBLSMTPD empty: allowed")
    accepted(dnsbl(LISTED, RBLSMTPD=""))  # nothing to skip, nothing noted


def test_rblsmtpd_with_a_dash_refuses_for_good_with_its_text(dnsbl):
    out = refused(dnsbl(NOT_LISTED, RBLSMTPD="-You are blocked."), "Reject::SNDR::RBLSMTPD")
    assert out.field("reason") == "You are blocked."
    # rblsmtpd blocks before SMTP: a RELAYCLIENT line that also sets RBLSMTPD is obeyed
    out = refused(dnsbl(NOT_LISTED, RBLSMTPD="-", RELAYCLIENT=""), "Reject::SNDR::RBLSMTPD")
    assert out.field("reason") == "refused by RBLSMTPD"


@pytest.mark.both_modes
def test_rblsmtpd_text_refuses_for_now(dnsbl):
    out = dnsbl(NOT_LISTED, QQF_DNSBL="dnsbl.test", RBLSMTPD="Listed in a list.\r\nTry later")
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("check") == "dnsbl"
    assert out.field("reason") == "Listed in a list. Try later"


def test_rblsmtpd_stamp_only_adds_x_rbl_info(dnsbl):
    out = dnsbl(NOT_LISTED, QQF_RBLSMTPD="stamp", RBLSMTPD="-listed:\r\nX-Injected: yes\u00e4")
    assert out.returncode == 0, out.stderr
    assert out.message == b"X-RBL-Info: listed: X-Injected: yes?\n" + MESSAGE
    assert out.field("notes") == "dnsbl: RBLSMTPD stamped as X-RBL-Info"
    out = dnsbl(NOT_LISTED, QQF_DNSBL="dnsbl.test", QQF_RBLSMTPD="stamp", RBLSMTPD="temporary")
    assert out.message == b"X-RBL-Info: temporary\n" + MESSAGE
    accepted(dnsbl(NOT_LISTED, QQF_RBLSMTPD="stamp", RBLSMTPD="-"))  # nothing to stamp
    # the lists are still asked
    refused(dnsbl(LISTED, QQF_DNSBL="dnsbl.test", QQF_RBLSMTPD="stamp", RBLSMTPD="-x"))


def test_rblsmtpd_off_ignores_the_variable(dnsbl):
    accepted(dnsbl(NOT_LISTED, QQF_RBLSMTPD="off", RBLSMTPD="-You are blocked."))
    refused(dnsbl(LISTED, QQF_DNSBL="dnsbl.test", QQF_RBLSMTPD="off", RBLSMTPD=""))


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"QQF_DNSBL": "not a zone"}, "'not a zone' is not a DNS zone"),
        ({"QQF_DNSBL": "dnsbl.test=127.0.0.256"}, "is not an answer like 127.0.0.2"),
        ({"QQF_DNSBL": "dnsbl.test=127.0.0.[9..2]"}, "is not an answer like 127.0.0.2"),
        ({"QQF_DNSBL": "dnsbl.test*x"}, "the weight after * must be a number"),
        ({"QQF_DNSBL": "dnsbl.test*1e9"}, "the weight must be a number from -1000000"),
        ({"QQF_DNSBL": ",".join(f"l{n}.test" for n in range(21))}, "more than 20 lists"),
        ({"QQF_DNSBLSCORE": "0"}, "must be off or a number over 0"),
        ({"QQF_DNSBLSCORE": "-2"}, "must be off or a number over 0"),
        ({"QQF_DNSBLSCORE": "lots"}, "must be off or a number over 0"),
        ({"QQF_RBLSMTPD": "yes"}, "must be one of: enforce, stamp, off"),
    ],
)
def test_invalid_settings_are_55(dnsbl, env, why):
    out = dnsbl(LISTED, **env)
    assert_clean_failure(out, 55)
    assert why in out.field("reason")


def test_rblsmtpd_is_read_the_s_qmail_way_and_survives_qqfilter_config(tmp_path):
    from qqfilter.checks.hygiene.dnsbl import RBLSMTPD
    from qqfilter.settings import load
    from qqfilter.tools.config import _toml

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    settings, errors = load({"QQF_CONFIG": str(empty), "RBLSMTPD": ""})
    assert errors == []
    assert (settings[RBLSMTPD], settings.sources["rblsmtpdtext"]) == (("",), "RBLSMTPD")
    settings, errors = load({"QQF_CONFIG": str(empty)})
    assert settings[RBLSMTPD] == ()
    for value in ((), ("",), ('-say "no"',)):
        saved = tmp_path / "saved.toml"
        saved.write_text(f"rblsmtpdtext = {_toml(value)}\n")
        settings, errors = load({"QQF_CONFIG": str(saved)})
        assert (errors, settings[RBLSMTPD]) == ([], value)
