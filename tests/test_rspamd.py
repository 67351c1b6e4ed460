"""Spam scoring through a real rspamd (Debian's package, the project's minimal config), and
through fake servers for the ways one fails."""

import json
import subprocess
import sys
import time

import pytest
from clamav import free_port
from conftest import assert_clean_failure, envelope
from rspamd import GTUBE, FakeHttp, Rspamd, message

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
CLEAN = message(b"Hello Bob,\n\nlunch at noon on Friday?\n\nAlice\n")
SPAM = message(b"Hello Bob,\n\n" + GTUBE + b"\n", subject=b"test")
UNSCANNED = b"X-Spam-Status: Unscanned (rspamd could not decide)\n"


@pytest.fixture(scope="module")
def rspamd_server():
    """One real rspamd for the module."""
    server = Rspamd()
    yield server
    server.stop()


@pytest.fixture
def spare_rspamd():
    """An rspamd of the test's own, to pause."""
    server = Rspamd()
    yield server
    server.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_gtube_is_refused_with_the_spam_tag(qq, rspamd_server):
    out = qq.submit(SPAM, ENV, env={"QQF_RSPAMD": rspamd_server.url})
    assert_clean_failure(out, 31)
    assert out.field("verdict") == "reject"
    assert out.field("check") == "rspamd"
    assert out.field("tag") == "Reject::DATA::Spam_Message"
    assert out.field("reason") == "message scored 15.0 (the scanner's reject)"
    assert out.field("detail") == (
        "score=15.0 required=15.0 action=reject tests=GTUBE message='Gtube pattern' "
        f"by {rspamd_server.url}"
    )


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_sqmail_codes_give_33(qq, rspamd_server):
    out = qq.submit(SPAM, ENV, env={"QQF_RSPAMD": rspamd_server.url, "QQF_CODES": "sqmail"})
    assert_clean_failure(out, 33)


def test_clean_mail_is_queued_byte_identical_after_the_added_fields(qq, rspamd_server):
    out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": rspamd_server.url})
    assert out.returncode == 0, out.stderr
    head, separator, rest = out.message.partition(CLEAN)
    assert separator and not rest, out.message
    assert head.startswith(b"X-Spam-Status: No, score=")
    assert b"\nX-Spam-Action: no action\n" in head
    assert b"\nX-Spamd-Bar: " in head  # from rspamd's milter block
    assert out.envelope == ENV
    assert out.field("verdict") == "accept"
    assert out.field("notes").startswith("rspamd: score=")
    assert out.field("notes").endswith(" required=15.0 action=no_action")


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_settings_id_soft_reject_is_held_for_a_later_try(qq, rspamd_server):
    env = {"QQF_RSPAMD": rspamd_server.url, "QQF_RSPAMDSETTINGS": "soft"}
    out = qq.submit(CLEAN, ENV, env=env)
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("reason") == "message held for a later try (spam scanner's soft reject)"
    assert "action=soft_reject" in out.field("detail")
    assert "message='try again later (test)'" in out.field("detail")


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_message_over_spammaxsize_is_not_scanned_and_noted(qq):
    out = qq.submit(SPAM, ENV, env={"QQF_RSPAMD": dead_url(), "QQF_SPAMMAXSIZE": "100"})
    assert out.returncode == 0, out.stderr
    assert out.message == SPAM
    assert out.field("notes") == "rspamd: skipped: larger than 100 bytes"


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_relayclient_skip_applies_only_when_asked(qq, rspamd_server):
    relay = {"QQF_RSPAMD": rspamd_server.url, "RELAYCLIENT": ""}
    out = qq.submit(SPAM, ENV, env={**relay, "QQF_SPAMSKIP": "relayclient"})
    assert out.returncode == 0, out.stderr
    assert out.message == SPAM
    assert out.field("notes") == "rspamd: skipped: RELAYCLIENT"
    out = qq.submit(SPAM, ENV, env=relay)
    assert_clean_failure(out, 31)


def test_nothing_listening_is_accepted_unscanned_at_once(qq):
    url = dead_url()
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": url})
    assert time.monotonic() - started < 5
    assert out.returncode == 0, out.stderr
    assert out.message == UNSCANNED + CLEAN
    assert out.field("verdict") == "accept"
    assert out.field("notes") == f"rspamd: unscanned: {url}: cannot connect: Connection refused"


def test_nothing_listening_with_spamerror_tempfail_is_71(qq):
    url = dead_url()
    out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": url, "QQF_SPAMERROR": "tempfail"})
    assert_clean_failure(out, 71)
    assert out.field("reason") == "spam scan not possible now, try again later"
    assert out.field("detail") == f"{url}: cannot connect: Connection refused"


@pytest.mark.one_shot  # a deadline is kept the same way in both modes (resident: the scan deadline)
def test_paused_rspamd_is_given_up_after_the_stall_timeout(qq, spare_rspamd):
    spare_rspamd.pause()
    env = {"QQF_RSPAMD": spare_rspamd.url, "QQF_RSPAMDTIMEOUT": "2"}
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env=env)
    took = time.monotonic() - started
    assert took < 5, took
    assert out.returncode == 0, out.stderr
    assert out.message == UNSCANNED + CLEAN
    assert out.field("notes") == f"rspamd: unscanned: {spare_rspamd.url}: no answer within 2 s"
    out = qq.submit(CLEAN, ENV, env={**env, "QQF_SPAMERROR": "tempfail"})
    assert_clean_failure(out, 71)


def test_the_scan_deadline_bounds_the_whole_scan(qq, spare_rspamd):
    spare_rspamd.pause()
    env = {
        "QQF_RSPAMD": f"{spare_rspamd.url},http://[::1]:{spare_rspamd.port}",
        "QQF_RSPAMDTIMEOUT": "30",
        "QQF_SPAMTIMEOUT": "1.5",
        "QQF_SPAMERROR": "tempfail",
    }
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env=env)
    took = time.monotonic() - started
    assert_clean_failure(out, 71)
    assert took < 4.5, took
    assert out.field("detail") == (
        f"{spare_rspamd.url}: no answer before the scan deadline; "
        f"http://[::1]:{spare_rspamd.port}: not tried, scan deadline passed"
    )


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!", "answer is not JSON"),
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", "HTTP status"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"score": 1', "answer cut short"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "answer cut short"),
        (b"", "closed the connection without an answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer"),
        (b'HTTP/1.1 200 OK\r\n\r\n{"score": 1.0}', "answer has no required_score"),
    ],
    ids=["garbage", "500", "cut-body", "cut-head", "closed", "not-http", "no-required"],
)
@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_a_server_that_answers_badly_is_unscanned(qq, answer, why):
    fake = FakeHttp(answer)
    try:
        out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": fake.url, "QQF_SPAMERROR": "tempfail"})
    finally:
        fake.stop()
    assert_clean_failure(out, 71)
    assert out.field("detail").startswith(f"{fake.url}: {why}"), out.field("detail")


def test_failover_to_the_second_rspamd_is_noted(qq, rspamd_server):
    dead = dead_url()
    out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": f"{dead},{rspamd_server.url}"})
    assert out.returncode == 0, out.stderr
    assert out.message.endswith(CLEAN)
    assert out.field("notes").endswith(
        f"action=no_action by {rspamd_server.url} after {dead}: cannot connect: Connection refused"
    )
    out = qq.submit(SPAM, ENV, env={"QQF_RSPAMD": f"{dead},{rspamd_server.url}"})
    assert_clean_failure(out, 31)
    assert out.field("detail").endswith(
        f"by {rspamd_server.url} after {dead}: cannot connect: Connection refused"
    )


def test_the_request_carries_the_envelope_and_the_connection(qq):
    answer = json.dumps(
        {
            "score": -0.5,
            "required_score": 10,
            "action": "add header",
            "symbols": {"B_RULE": {}, "A_RULE": {}},
            "milter": {
                "add_headers": {
                    "X-Two": [{"value": "one", "order": 0}, "two"],
                    "X-Folded": {"value": "a\r\n\tb", "order": -1},
                    "X-Spam-Status": "rspamd's own, left out",
                    "Bad Name": "left out",
                },
                "remove_headers": {"X-Spam": 0},
            },
        }
    ).encode()
    fake = FakeHttp(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
    env = {
        "QQF_RSPAMD": fake.url,
        "QQF_RSPAMDSETTINGS": "inbound",
        "QQF_SPAMUSER": "recipient",
        "SMTPAUTHUSER": "alice",
        "TCPREMOTEHOST": "mail.example.com",
    }
    try:
        out = qq.submit(CLEAN, envelope(b"alice@example.com", b"bob@example.org"), env=env)
    finally:
        fake.stop()
    assert out.returncode == 0, out.stderr
    assert out.message == (
        b"X-Spam-Status: No, score=-0.5 required=10.0 tests=A_RULE, B_RULE\n"
        b"X-Spam-Score: -0.5\nX-Spam-Action: add header\n"
        b"X-Two: one\nX-Two: two\nX-Folded: a b\n" + CLEAN
    )
    (head,) = fake.requests
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /checkv2 HTTP/1.1"
    for line in (
        b"IP: 192.0.2.1",
        b"Helo: mail.example.com",  # from qmail-smtpd's Received line
        b"Hostname: mail.example.com",
        b"From: alice@example.com",
        b"Rcpt: bob@example.org",
        b"User: alice",
        b"Deliver-To: bob@example.org",
        b"Settings-ID: inbound",
        b"Content-Length: %d" % len(CLEAN),
    ):
        assert line in lines, (line, lines)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1:11333", "expected http://host:port"),
        ("https://127.0.0.1:11333", "expected http://host:port"),
        ("http://127.0.0.1:99999", "expected http://host:port"),
        ("http://127.0.0.1:11333/checkv2", "expected http://host:port"),
    ],
)
@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_malformed_rspamd_setting_is_55(qq, value, why):
    out = qq.submit(CLEAN, ENV, env={"QQF_RSPAMD": value})
    assert_clean_failure(out, 55)
    assert why in out.field("reason")


def test_url_forms():
    from qqfilter.checks.spam.rspamd import endpoint

    assert endpoint("http://127.0.0.1:11333") == ("127.0.0.1", 11333)
    assert endpoint("http://[::1]:11333/") == ("::1", 11333)
    assert endpoint("http://rspamd.example.org") == ("rspamd.example.org", 11333)


def test_an_ipv6_url_is_connected_to():
    from qqfilter.checks.spam.rspamd import checkv2

    with pytest.raises(checkv2.ScanFailed, match="cannot connect"):
        checkv2._exchange(_Spool(CLEAN), f"http://[::1]:{free_port()}", [], 1, 1, 1e12)


class _Spool:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, start: int, length: int) -> bytes:
        return self.data[start : start + length]


def test_off_costs_no_client_imports():
    """With QQF_RSPAMD empty the unit imports nothing of its client: no socket, no json."""
    code = (
        "import sys, qqfilter.checks.spam.rspamd; "
        "print(sorted(m for m in ('socket', 'json', 'http.client', "
        "'qqfilter.checks.spam.rspamd.checkv2') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_the_subject_prefix_and_milter_removals_edit_only_those_bytes(qq):
    """QQF_SPAMSUBJECT prefixes the Subject of flagged mail; the fields rspamd's milter block
    removes (a sender's forged X-Spam-Flag) are gone; every other byte is the sender's."""
    answer = json.dumps(
        {
            "score": 7.5,
            "required_score": 5,
            "action": "add header",
            "symbols": {"GTUBE_LIKE": {}},
            "milter": {"remove_headers": {"X-Spam-Flag": 0}},
        }
    ).encode()
    forged = message(b"hello\n", subject=b"=?utf-8?q?caf=C3=A9?=\n\tand more").replace(
        b"Message-ID:", b"X-Spam-Flag: NO\n\tforged\nMessage-ID:"
    )
    fake = FakeHttp(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
    env = {"QQF_RSPAMD": fake.url, "QQF_SPAMSUBJECT": "[SPAM] "}
    try:
        out = qq.submit(forged, envelope(b"alice@example.com", b"bob@example.org"), env=env)
    finally:
        fake.stop()
    assert out.returncode == 0, out.stderr
    expected = forged.replace(b"Subject: =?utf-8", b"Subject: [SPAM] =?utf-8").replace(
        b"X-Spam-Flag: NO\n\tforged\n", b""
    )
    added = (
        b"X-Spam-Status: Yes, score=7.5 required=5.0 tests=GTUBE_LIKE\n"
        b"X-Spam-Score: 7.5\nX-Spam-Flag: YES\nX-Spam-Action: add header\n"
    )
    assert out.message == added + expected


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_a_long_rule_list_is_folded_under_the_line_limit(qq):
    """Dozens of rules: X-Spam-Status is folded between them, no line over 998 bytes."""
    rules = {f"A_RATHER_LONG_RULE_NAME_NUMBER_{n:03d}": {} for n in range(60)}
    answer = json.dumps(
        {"score": 1.0, "required_score": 5, "action": "no action", "symbols": rules}
    ).encode()
    fake = FakeHttp(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
    try:
        out = qq.submit(
            CLEAN, envelope(b"alice@example.com", b"bob@example.org"), env={"QQF_RSPAMD": fake.url}
        )
    finally:
        fake.stop()
    assert out.returncode == 0, out.stderr
    added = out.message[: -len(CLEAN)]
    assert max(len(line) for line in added.split(b"\n")) <= 998
    assert added.count(b"A_RATHER_LONG_RULE_NAME_NUMBER_") == 60
