"""Spam scoring through a real spamd (Debian's spamassassin + spamd, fixtures/spamd's settings),
and through stand-ins that answer what spamd never would.

One spamd serves the module; a second, started paused, stands for a spamd that accepts
connections and never answers. Each failure path ends within its deadline in the policy
QQF_SPAMERROR asks for: accepted and marked (the default) or 71 with one log line.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, assert_clean_failure, envelope
from spamd import CLEAN_BODY, GTUBE, FakeSpamd, Spamd, free_port, message

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
CLEAN = message(CLEAN_BODY)
SPAM = message(CLEAN_BODY + b"\n" + GTUBE + b"\n", subject=b"Test")
UNSCANNED = b"X-Spam-Status: Unscanned (spamd could not decide)\n"
STATUS = re.compile(
    rb"X-Spam-Status: (Yes|No), score=(-?\d+\.\d) required=5\.0 "
    rb"tests=((?:[A-Z0-9_]+(?:,\s+)?)+|none)\n"
    rb"X-Spam-Score: (-?\d+\.\d)\n"
)
VALID = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 15\r\nSpam: False ; 1.3 / 5.0\r\n\r\nRCVD_ILLEGAL_IP"


@pytest.fixture(scope="module")
def spamd_server():
    """One real spamd for the module, on a unix socket and a loopback TCP port."""
    server = Spamd()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def paused_spamd():
    """A spamd that accepts connections and never answers (SIGSTOP'ed)."""
    server = Spamd()
    server.pause()
    yield server
    server.stop()


def added_fields(out, original: bytes) -> bytes:
    """The header fields qqfilter put before ``original``, which must follow unchanged."""
    assert out.returncode == 0, out.stderr
    assert out.message.endswith(original)
    return out.message[: -len(original)]


def test_gtube_over_the_reject_score_is_refused_with_the_tag(qq, spamd_server):
    out = qq.submit(SPAM, ENV, env={"QQF_SPAMD": spamd_server.unix, "QQF_SPAMREJECT": "10"})
    assert_clean_failure(out, 31)
    assert out.field("verdict") == "reject"
    assert out.field("check") == "spamd"
    assert out.field("tag") == "Reject::DATA::Spam_Message"
    assert re.fullmatch(r"message scored 10\d\d\.\d \(limit 10\.0\)", out.field("reason"))
    detail = out.field("detail")
    assert re.fullmatch(
        rf"score=10\d\d\.\d required=5\.0 tests=\S*GTUBE\S* by {spamd_server.unix}", detail
    )


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_sqmail_codes_give_33_and_the_reply_says_the_score(qq, spamd_server):
    env = {"QQF_SPAMD": spamd_server.tcp, "QQF_SPAMREJECT": "10", "QQF_CODES": "sqmail"}
    out = qq.submit(SPAM, ENV, env=env)
    assert_clean_failure(out, 33)
    out, reply = qq.submit_for_reply(SPAM, ENV, env)
    assert out.returncode == 82
    assert re.fullmatch(rb"Dmessage scored 10\d\d\.\d \(limit 10\.0\) \(#5\.7\.1\)", reply), reply


def test_clean_mail_is_queued_byte_identical_after_the_status_fields(qq, spamd_server):
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": spamd_server.unix, "QQF_SPAMREJECT": "10"})
    added = added_fields(out, CLEAN)
    match = STATUS.fullmatch(added)
    assert match, added
    assert match[1] == b"No"
    assert match[2] == match[4]
    assert float(match[2]) < 5
    assert out.envelope == ENV
    assert out.field("verdict") == "accept"
    assert out.field("notes") == f"spamd: score={match[2].decode()} required=5.0"


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_without_a_reject_score_gtube_is_queued_flagged(qq, spamd_server):
    out = qq.submit(SPAM, ENV, env={"QQF_SPAMD": spamd_server.tcp})
    added = added_fields(out, SPAM)
    match = STATUS.match(added)
    assert match, added
    assert match[1] == b"Yes"
    assert b"GTUBE" in match[3]
    assert added[match.end() :] == b"X-Spam-Flag: YES\n"
    assert out.field("verdict") == "accept"


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_the_tag_score_flags_below_spamds_required_score(qq, spamd_server):
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": spamd_server.unix, "QQF_SPAMTAG": "-50"})
    added = added_fields(out, CLEAN)
    assert added.startswith(b"X-Spam-Status: Yes, ")
    assert added.endswith(b"X-Spam-Flag: YES\n")


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_spamsubject_prefixes_the_subject_of_flagged_mail_only(qq, spamd_server):
    env = {"QQF_SPAMD": spamd_server.unix, "QQF_SPAMSUBJECT": "[SPAM] "}
    out = qq.submit(SPAM, ENV, env=env)
    added = added_fields(out, SPAM.replace(b"Subject: Test\n", b"Subject: [SPAM] Test\n"))
    assert added.endswith(b"X-Spam-Flag: YES\n")
    out = qq.submit(CLEAN, ENV, env=env)
    assert STATUS.fullmatch(added_fields(out, CLEAN))


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_a_message_over_spammaxsize_is_not_scanned_and_noted(qq, spamd_server):
    env = {"QQF_SPAMD": spamd_server.unix, "QQF_SPAMREJECT": "10", "QQF_SPAMMAXSIZE": "100"}
    out = qq.submit(SPAM, ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert out.message == SPAM
    assert out.field("notes") == "spamd: skipped: larger than 100 bytes"


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_relayclient_skip_applies_only_when_asked(qq, spamd_server):
    relay = {"QQF_SPAMD": spamd_server.unix, "QQF_SPAMREJECT": "10", "RELAYCLIENT": ""}
    out = qq.submit(SPAM, ENV, env={**relay, "QQF_SPAMSKIP": "relayclient"})
    assert out.returncode == 0, out.stderr
    assert out.message == SPAM
    assert out.field("notes") == "spamd: skipped: RELAYCLIENT"
    out = qq.submit(SPAM, ENV, env=relay)
    assert_clean_failure(out, 31)


def test_a_host_name_and_a_second_spamd_after_a_dead_one(qq, spamd_server, tmp_path):
    servers = f"unix:{tmp_path}/gone.sock,localhost:{spamd_server.port}"
    out = qq.submit(SPAM, ENV, env={"QQF_SPAMD": servers, "QQF_SPAMREJECT": "10"})
    assert_clean_failure(out, 31)
    assert out.field("detail").endswith(
        f" by localhost:{spamd_server.port} after unix:{tmp_path}/gone.sock: cannot connect: "
        "No such file or directory"
    )
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": servers})
    assert STATUS.fullmatch(added_fields(out, CLEAN))
    assert out.field("notes").endswith(
        f" by localhost:{spamd_server.port} after unix:{tmp_path}/gone.sock: cannot connect: "
        "No such file or directory"
    )


def test_no_spamd_is_accepted_marked_and_noted_at_once(qq, tmp_path):
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": f"unix:{tmp_path}/gone.sock"})
    assert time.monotonic() - started < 5
    assert out.returncode == 0, out.stderr
    assert out.message == UNSCANNED + CLEAN
    assert out.field("verdict") == "accept"
    assert out.field("notes") == (
        f"spamd: unscanned: unix:{tmp_path}/gone.sock: cannot connect: No such file or directory"
    )


def test_no_spamd_with_spamerror_tempfail_is_71(qq):
    port = free_port()
    started = time.monotonic()
    env = {"QQF_SPAMD": f"127.0.0.1:{port}", "QQF_SPAMERROR": "tempfail"}
    out = qq.submit(CLEAN, ENV, env=env)
    assert time.monotonic() - started < 5
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("reason") == "spam scan not possible now, try again later"
    assert out.field("detail") == f"127.0.0.1:{port}: cannot connect: Connection refused"


@pytest.mark.parametrize("policy", ["accept", "tempfail"])
@pytest.mark.one_shot  # deadlines are kept the same way in both modes (resident: the whole scan)
def test_a_paused_spamd_ends_within_spamdtimeout(qq, paused_spamd, policy):
    env = {"QQF_SPAMD": paused_spamd.unix, "QQF_SPAMDTIMEOUT": "2", "QQF_SPAMERROR": policy}
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env=env)
    took = time.monotonic() - started
    assert 2 <= took < 5, took
    why = f"{paused_spamd.unix}: no answer within 2 s"
    if policy == "tempfail":
        assert_clean_failure(out, 71)
        assert out.field("detail") == why
    else:
        assert out.message == UNSCANNED + CLEAN
        assert out.field("notes") == f"spamd: unscanned: {why}"


def test_spamtimeout_bounds_the_whole_scan_failover_included(qq, paused_spamd):
    env = {
        "QQF_SPAMD": f"{paused_spamd.unix},{paused_spamd.tcp}",
        "QQF_SPAMDTIMEOUT": "30",
        "QQF_SPAMTIMEOUT": "1.5",
        "QQF_SPAMERROR": "tempfail",
    }
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env=env)
    took = time.monotonic() - started
    assert_clean_failure(out, 71)
    assert took < 4.5, took
    assert f"{paused_spamd.tcp}: not tried, scan deadline passed" in out.field("detail")


ANSWERS = {
    "garbage": (b"HTTP/1.0 200 OK\r\n\r\nhello", "unexpected answer 'HTTP/1.0 200 OK??"),
    "error code": (b"SPAMD/1.0 76 Bad header line: (EOF)\r\n", "spamd error 76 Bad header"),
    "cut head": (b"SPAMD/1.1 0 EX_OK\r\nContent-le", "incomplete answer"),
    "cut rules": (VALID[:-5], "answer cut at 10 of 15 bytes of rule names"),
    "no score": (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "answer without a Spam"),
    "bad score": (VALID.replace(b"1.3", b"nan"), "bad Spam header"),
    "bad rule": (VALID.replace(b"RCVD_ILLEGAL_IP", b"X\nY: injected!!"), "bad rule name"),
    "silence": (b"", "closed the connection without an answer"),
}


@pytest.mark.parametrize("policy", ["accept", "tempfail"])
@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.one_shot  # the answer is read the same way in both modes
def test_an_answer_that_is_not_spamds_is_the_spamerror_policy(qq, tmp_path, answer, policy):
    data, why = ANSWERS[answer]
    fake = FakeSpamd(tmp_path, data)
    try:
        out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": fake.unix, "QQF_SPAMERROR": policy})
    finally:
        fake.close()
    if policy == "tempfail":
        assert_clean_failure(out, 71)
        assert out.field("detail").startswith(f"{fake.unix}: {why}"), out.field("detail")
    else:
        assert out.message == UNSCANNED + CLEAN
        assert out.field("notes").startswith(f"spamd: unscanned: {fake.unix}: {why}")


def test_the_request_streams_the_message_with_its_length_and_user(qq, tmp_path):
    fake = FakeSpamd(tmp_path, VALID)
    try:
        out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": fake.unix})
        assert STATUS.fullmatch(added_fields(out, CLEAN))
        out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": fake.unix, "QQF_SPAMUSER": "recipient"})
        assert out.returncode == 0, out.stderr
        out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": fake.unix, "QQF_SPAMUSER": "bad user"})
        assert out.returncode == 0, out.stderr
    finally:
        fake.close()
    head = f"SYMBOLS SPAMC/1.5\r\nContent-length: {len(CLEAN)}\r\n"
    assert fake.requests == [
        f"{head}\r\n".encode() + CLEAN,
        f"{head}User: bob@example.org\r\n\r\n".encode() + CLEAN,
        f"{head}\r\n".encode() + CLEAN,  # not one word: spamd's default user
    ]


@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_spamd_off_costs_nothing_and_adds_nothing(qq):
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMREJECT": "10"})
    assert out.returncode == 0, out.stderr
    assert out.message == CLEAN
    assert out.field("notes") is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("localhost:spamd", "expected unix:/path or host:port"),
        ("unix:relative.sock", "a unix socket needs an absolute path"),
        ("127.0.0.1:99999", "expected unix:/path or host:port"),
        ("[::1:783", "expected [address]:port"),
    ],
)
@pytest.mark.one_shot  # the score is read and judged the same way in both modes
def test_malformed_spamd_setting_is_55(qq, value, why):
    out = qq.submit(CLEAN, ENV, env={"QQF_SPAMD": value})
    assert_clean_failure(out, 55)
    assert why in out.field("reason")


def test_server_forms_and_the_default_port():
    from qqfilter.checks.spam.spamd import endpoint

    assert endpoint("[::1]:7830") == ("::1", 7830)
    assert endpoint("[::1]") == ("::1", 783)
    assert endpoint("spamd.example.org") == ("spamd.example.org", 783)
    assert endpoint("/run/spamd.sock") == "/run/spamd.sock"
    assert endpoint("unix:/run/spamd.sock") == "/run/spamd.sock"


def test_the_check_imports_no_client_when_off():
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from qqfilter.checks import units; "
        "units(); print('qqfilter.checks.spam.spamd.spamc' in sys.modules)"
    )
    shown = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True)
    assert shown.stdout.split() == ["False"], shown.stderr


@pytest.mark.one_shot  # deadlines are kept the same way in both modes (resident: the whole scan)
def test_spamd_killed_mid_stream_is_the_spamerror_policy(qq):
    """spamd is paused, so the stream stalls once the socket buffers fill; then it is killed."""
    import threading

    spare = Spamd()
    big = message(b"A long line of an ordinary letter, many times over.\n" * 80_000)
    env = {"QQF_SPAMD": spare.unix, "QQF_SPAMMAXSIZE": "0", "QQF_SPAMERROR": "tempfail"}
    result = {}
    try:
        spare.pause()
        runner = threading.Thread(target=lambda: result.update(out=qq.submit(big, ENV, env=env)))
        runner.start()
        give_up = time.monotonic() + 30
        while _connections(spare.socket) < 1 and time.monotonic() < give_up:
            time.sleep(0.05)
        time.sleep(0.5)  # let it fill the buffers and block in send
        spare.stop()
        runner.join(30)
    finally:
        spare.stop()
    out = result["out"]
    assert_clean_failure(out, 71)
    assert "connection lost mid-stream" in out.field("detail"), out.field("detail")


def _connections(path: str) -> int:
    """Connections to the unix socket at ``path`` not yet accepted or closed."""
    with open("/proc/net/unix") as table:
        return sum(1 for line in table if line.rstrip().endswith(" " + path)) - 1


def test_replay_shows_what_spamd_thinks_of_mail_already_received(spamd_server, tmp_path):
    """qqfilter replay runs the spam check as the QMAILQUEUE program would: GTUBE refused,
    clean mail accepted with its score in the note."""
    (tmp_path / "spam.eml").write_bytes(SPAM)
    (tmp_path / "clean.eml").write_bytes(CLEAN)
    done = subprocess.run(
        [QQFILTER, "replay", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "QQF_CONFIG": "/dev/null",
            "QQF_SPAMD": spamd_server.unix,
            "QQF_SPAMREJECT": "10",
        },
    )
    records = {
        Path(record["source"]).name: record
        for record in map(json.loads, done.stdout.splitlines()[:-1])
    }
    assert records["spam.eml"]["verdict"] == "reject"
    assert records["spam.eml"]["tag"] == "Reject::DATA::Spam_Message"
    assert records["clean.eml"]["verdict"] == "accept"
    assert records["clean.eml"]["notes"].startswith("spamd: score=")
