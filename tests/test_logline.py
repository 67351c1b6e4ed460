"""The log line traces one message: its Message-ID and recipients on every line that has them,
a fallback from the resident server said out loud, the client's own tempfails named and
filled in like any other, and ``qqfilter`` at a terminal saying what it waits for.

The real program, through the shared harness; the pipeline's lines run one-shot and resident.
"""

import json
import os
import pty
import select
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import QQFILTER, ROOT, Resident, assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve, unless marked

MSGID = b"<20260101.1234@mail.example.com>"
PLAIN = (
    b"Received: from a (HELO a) (192.0.2.1)\n  by mx with SMTP; now\n"
    b"Message-ID: " + MSGID + b"\nSubject: hi\n\nbody\n"
)
ENV = envelope(b"alice@example.com", b"bob@example.org", b"carol@example.org")
TO = "<bob@example.org>,<carol@example.org>"


def record(out) -> dict:
    """The one JSON log line of ``out``."""
    (line,) = out.lines
    return json.loads(line)


def with_id(*lines: bytes) -> bytes:
    """A message whose header block holds ``lines`` (each ending in LF) after a Received."""
    return b"Received: from a (HELO a) (192.0.2.1)\n" + b"".join(lines) + b"Subject: x\n\nbody\n"


def test_every_field_is_documented_in_its_order():
    from qqfilter.logline import FIELDS

    text = (ROOT / "docs" / "exit-codes.md").read_text()
    section = text[text.index("## The log line") : text.index("## Log tags")]
    rows = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert rows == list(FIELDS)


# Every verdict's line, text and JSON


def test_an_accepted_message_is_named_by_its_message_id_and_recipients(qq):
    out = qq.submit(PLAIN, ENV)
    assert out.returncode == 0, out.stderr
    assert out.field("verdict") == "accept"
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") == TO
    assert out.field("rcpts") == "2"  # still the count
    assert out.field("fallback") is None


@pytest.mark.parametrize(
    "env, verdict, code",
    [
        pytest.param({"QQF_MAXSIZE": "200"}, "reject", "31", id="reject"),
        pytest.param({"RBLSMTPD": "listed, come back later"}, "tempfail", "71", id="tempfail"),
        pytest.param({"QQF_MAXSIZE": "200", "QQF_DROP": "policy"}, "drop", "0", id="drop"),
    ],
)
def test_refused_tempfailed_and_dropped_lines_carry_them_too(qq, env, verdict, code):
    out = qq.submit(PLAIN + b"x" * 500, ENV, env=env)
    assert out.returncode == int(code), out.stderr
    assert not out.queued
    assert out.field("verdict") == verdict
    assert out.field("code") == code
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") == TO
    assert out.field("from") == "<alice@example.com>"


@pytest.mark.parametrize("env", [{}, {"QQF_MAXSIZE": "200"}], ids=["accept", "reject"])
def test_json_lines_carry_them_as_strings(qq, env):
    out = qq.submit(PLAIN + b"x" * 500, ENV, env={"QQF_LOG": "json", **env})
    line = record(out)
    assert line["msgid"] == MSGID.decode()
    assert line["to"] == TO
    assert line["rcpts"] == 2
    keys = list(line)
    assert keys.index("rcpts") < keys.index("to") < keys.index("msgid") < keys.index("size")


def test_the_text_line_shows_the_fields_in_their_order(qq):
    out = qq.submit(PLAIN, ENV)
    (line,) = out.lines
    assert f"from=<alice@example.com> rcpts=2 to={TO} msgid={MSGID.decode()} size=" in line


def test_a_contract_failure_after_the_envelope_carries_them(qq):
    """A control file others may write is 55 once the checks run: the envelope is read."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "badmimetypes").write_text("TVqQAAMAA\n")
    (control / "badmimetypes").chmod(0o664)
    out = qq.submit(PLAIN, ENV, env={"BADMIMETYPE": "1"})
    assert_clean_failure(out, 55)
    assert out.field("verdict") == "error"
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") == TO


def test_a_next_queue_program_that_cannot_run_is_an_error_with_them(qq):
    qq.queue.chmod(0o644)
    out = qq.submit(PLAIN, ENV)
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "error"  # not a tempfail: the installation is broken
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") == TO


def test_an_exec_that_fails_after_the_accept_line_adds_an_error_line(qq):
    qq.queue.write_bytes(b"\x7fELF garbage that is no program")
    out = qq.submit(PLAIN, ENV)
    assert out.returncode == 71
    accepted, failed = out.lines
    assert "verdict=accept" in accepted and f"msgid={MSGID.decode()}" in accepted
    pid = accepted.split()[1]
    assert failed.startswith(f"qqfilter: {pid} verdict=error code=71 reason=")


def test_a_bad_envelope_leaves_the_recipients_out_but_names_the_message(qq):
    out = qq.submit(PLAIN, b"Falice@example.com\0Tbob@example.org\0")
    assert_clean_failure(out, 54)
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") is None
    assert out.field("from") is None


def test_a_setting_error_reads_nothing_and_says_nothing_of_the_message(qq):
    """55 for a bad setting comes before the message is read: no envelope, no fields."""
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": "lots"})
    assert_clean_failure(out, 55)
    assert out.field("to") is None
    assert out.field("msgid") is None


# The recipients: capped


def test_past_five_recipients_the_rest_are_counted(qq):
    recipients = [f"user{i}@example.org".encode() for i in range(8)]
    out = qq.submit(PLAIN, envelope(b"alice@example.com", *recipients))
    assert out.returncode == 0, out.stderr
    shown = ",".join(f"<user{i}@example.org>" for i in range(5))
    assert out.field("to") == f"{shown},+3 more"
    assert out.field("rcpts") == "8"


def test_a_long_recipient_is_cut(qq):
    long = b"x" * 990 + b"@example.org"  # 1002 bytes: over 1000 is qmail's 11
    long = long[-1000:]
    out = qq.submit(PLAIN, envelope(b"alice@example.com", long, b"bob@example.org"))
    assert out.returncode == 0, out.stderr
    assert out.field("to") == "<" + "x" * 100 + "...>,<bob@example.org>"


def test_hostile_recipients_cannot_forge_a_field_or_a_line(qq):
    hostile = b'x" ip=6.6.6.6\nqqfilter: pid=1 verdict=accept \xff@example.org'
    out = qq.submit(PLAIN, envelope(b"alice@example.com", hostile), env={"QQF_LOG": "text"})
    assert out.returncode == 0, out.stderr
    assert len(out.lines) == 1 and out.stderr.isascii()
    assert out.field("ip") == "192.0.2.1"
    assert out.field("to") == '<x" ip=6.6.6.6\\x0aqqfilter: pid=1 verdict=accept \\xff@example.org>'


# The Message-ID: found where it is, whatever it holds


@pytest.mark.parametrize(
    "header, expected",
    [
        pytest.param(b"Message-ID: <a@b>\n", "<a@b>", id="plain"),
        pytest.param(b"message-id:<a@b>\n", "<a@b>", id="lower-case-no-space"),
        pytest.param(b"Message-Id:   <a@b>  \t\n", "<a@b>", id="white-space-around"),
        pytest.param(b"Message-ID :<a@b>\n", "<a@b>", id="obsolete-space-before-colon"),
        pytest.param(b"Message-ID:\n <a@b>\n", "<a@b>", id="folded-before-the-value"),
        pytest.param(b"Message-ID: <a@\n\tb>\n", "<a@\\x09b>", id="folded-inside"),
        pytest.param(b"Message-ID: <a@b>\r\n", "<a@b>", id="crlf"),
        pytest.param(b"Message-ID: <a@b>\nMessage-ID: <c@d>\n", "<a@b>", id="first-of-two"),
        pytest.param(b"Message-IDs: <x@y>\nMessage-ID: <a@b>\n", "<a@b>", id="a-longer-name"),
        pytest.param(b"Resent-Message-ID: <x@y>\n", None, id="resent-is-not-it"),
        pytest.param(b"Message-ID: (comment) <a@b>\n", "(comment) <a@b>", id="comment"),
        pytest.param(b'Message-ID: <"q=\\" x"@b>\n', '<"q=\\" x"@b>', id="quotes-and-equals"),
        pytest.param("Message-ID: <caf\xe9@b>\n".encode("latin-1"), "<caf\\xe9@b>", id="8bit"),
        pytest.param(b"Message-ID: <\x1b[31m@b>\n", "<\\x1b[31m@b>", id="escape-sequence"),
        pytest.param(b"Message-ID:\n", None, id="empty"),
        pytest.param(b"", None, id="missing"),
    ],
)
def test_the_message_id_as_the_header_block_says_it(qq, header, expected):
    out = qq.submit(with_id(header), ENV)
    assert out.returncode == 0, out.stderr
    assert len(out.lines) == 1 and out.stderr.isascii()
    assert out.field("msgid") == expected
    assert out.field("ip") == "192.0.2.1"


def test_a_message_id_in_the_body_is_not_the_messages(qq):
    out = qq.submit(b"Subject: x\n\nMessage-ID: <body@x>\n", ENV)
    assert out.field("msgid") is None
    out = qq.submit(b"\nMessage-ID: <body@x>\n", ENV)  # an empty header block
    assert out.field("msgid") is None


def test_a_missing_message_id_leaves_the_field_out_of_json_too(qq):
    out = qq.submit(b"Subject: x\n\nbody\n", ENV, env={"QQF_LOG": "json"})
    assert "msgid" not in record(out)


def test_a_folded_message_id_cannot_forge_a_line(qq):
    forged = b"Message-ID: <a@b>\n qqfilter: pid=1 verdict=accept ip=6.6.6.6\n"
    out = qq.submit(with_id(forged), ENV)
    assert len(out.lines) == 1
    assert out.field("msgid") == "<a@b> qqfilter: pid=1 verdict=accept ip=6.6.6.6"
    assert out.field("ip") == "192.0.2.1"
    assert out.field("verdict") == "accept"


def test_a_huge_message_id_is_cut(qq):
    out = qq.submit(with_id(b"Message-ID: <" + b"a" * 10_000 + b"@b>\n"), ENV)
    assert out.returncode == 0, out.stderr
    assert out.field("msgid") == "<" + "a" * 199 + "..."
    out = qq.submit(with_id(b"Message-ID: <" + b"\xff" * 10_000 + b">\n"), ENV)
    assert out.field("msgid") == "<" + "\\xff" * 199 + "..."
    assert len(out.lines[0]) < 1500


def test_a_huge_hostile_message_id_stays_one_json_object(qq):
    header = b'Message-ID: <"\\\n\t' + b"\x00\xff\xe2\x80\xa8" * 2000 + b">\n"
    out = qq.submit(with_id(header), ENV, env={"QQF_LOG": "json"})
    line = record(out)
    assert line["msgid"].startswith('<"\\\t')
    assert line["msgid"].endswith("...")
    assert line["to"] == TO


# The resident server: a fallback said, the client's own tempfails filled in


@pytest.mark.one_shot
def test_a_fallback_to_in_process_work_is_said_in_the_line(qq, tmp_path):
    gone = str(tmp_path / "no.sock")
    out = qq.submit(PLAIN, ENV, env={"QQF_SOCKET": gone})
    assert out.returncode == 0, out.stderr
    assert out.queued
    assert out.field("verdict") == "accept"
    assert out.field("fallback") == (
        f"resident server unreachable, handled in-process: {gone}: No such file or directory"
    )
    assert out.field("msgid") == MSGID.decode()
    out = qq.submit(PLAIN, ENV, env={"QQF_SOCKET": gone, "QQF_LOG": "json"})
    assert record(out)["fallback"].startswith("resident server unreachable, handled in-process")


@pytest.mark.one_shot
def test_a_dead_servers_socket_is_a_fallback_too(qq, tmp_path):
    """A socket left behind by a server that died: nobody listens (connection refused)."""
    left = tmp_path / "left.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as bound:
        bound.bind(str(left))
    big = PLAIN + b"x" * 500
    out = qq.submit(big, ENV, env={"QQF_SOCKET": str(left), "QQF_MAXSIZE": "200"})
    assert_clean_failure(out, 31)
    assert out.field("fallback") == (
        f"resident server unreachable, handled in-process: {left}: Connection refused"
    )


@pytest.mark.one_shot
def test_a_request_too_big_for_the_server_is_a_fallback_too(qq, resident_server):
    big = {f"BIG{i}": "x" * 100_000 for i in range(3)}  # past the socket's buffer
    out = qq.submit(PLAIN, ENV, env={"QQF_SOCKET": resident_server.socket, **big})
    assert out.returncode == 0, out.stderr
    fallback = out.field("fallback")
    assert fallback.startswith(
        f"resident server unreachable, handled in-process: {resident_server.socket}: a request of "
    )
    assert fallback.endswith(" bytes is too big for it")


def test_a_line_the_server_wrote_has_no_fallback(qq):
    out = qq.submit(PLAIN, ENV)
    assert "fallback" not in out.stderr


@pytest.mark.one_shot
@pytest.mark.parametrize("style", ["text", "json"])
def test_the_clients_own_tempfail_is_a_tempfail_with_what_it_read(qq, tmp_path, style):
    """The server never had the descriptors: the client reads them for the line."""
    gone = str(tmp_path / "no.sock")
    env = {"QQF_SOCKET": gone, "QQF_SOCKETFALLBACK": "tempfail", "QQF_LOG": style}
    out = qq.submit(PLAIN, ENV, env=env)
    assert_clean_failure(out, 71)
    line = record(out) if style == "json" else {k: out.field(k) for k in ("verdict", "code")}
    if style == "text":
        line.update({k: out.field(k) for k in ("ip", "from", "rcpts", "to", "msgid", "size")})
        line.update(code=int(line["code"]), rcpts=int(line["rcpts"]), size=int(line["size"]))
    assert line["verdict"] == "tempfail"
    assert line["code"] == 71
    assert line["ip"] == "192.0.2.1"
    assert line["from"] == "<alice@example.com>"
    assert line["rcpts"] == 2
    assert line["to"] == TO
    assert line["msgid"] == MSGID.decode()
    assert line["size"] == len(PLAIN)


@pytest.mark.one_shot
def test_the_clients_tempfail_with_a_bad_envelope_still_names_the_client(qq, tmp_path):
    gone = str(tmp_path / "no.sock")
    env = {"QQF_SOCKET": gone, "QQF_SOCKETFALLBACK": "tempfail"}
    out = qq.submit(PLAIN, b"Falice@example.com\0", env=env)
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("ip") == "192.0.2.1"
    assert out.field("size") == str(len(PLAIN))
    assert out.field("from") is None


@pytest.mark.one_shot
def test_a_server_that_had_the_message_leaves_the_client_only_what_it_knows(qq, tmp_path):
    """A stopped server has the descriptors (and may have read them): the client says only
    what it knows for sure, the client's address."""
    server = Resident(tmp_path, "--workers", "1")  # one process: SIGSTOP stops all of it
    server.process.send_signal(signal.SIGSTOP)
    try:
        out = qq.submit(
            PLAIN,
            ENV,
            env={
                "QQF_SOCKET": server.socket,
                "QQF_SOCKETFALLBACK": "tempfail",
                "QQF_SOCKETTIMEOUT": "1",
            },
        )
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
    assert_clean_failure(out, 71)
    assert out.field("verdict") == "tempfail"
    assert out.field("reason") == "resident server gave no answer within 1 s"
    assert out.field("ip") == "192.0.2.1"
    for unknown in ("from", "rcpts", "to", "msgid", "size"):
        assert out.field(unknown) is None, unknown


@pytest.mark.one_shot
def test_a_busy_server_is_a_tempfail_with_the_messages_fields(qq, tmp_path):
    slow = tmp_path / "slow-scanner"
    slow.write_text("#!/bin/sh\nsleep 2\nexit 0\n")
    slow.chmod(0o755)
    (tmp_path / "limited").mkdir()
    server = Resident(tmp_path / "limited", "--max", "1", "--wait", "0.3")
    env = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"}
    # the first holds the one turn for 2 s (and queues nowhere: the record is the second's)
    slow_one = {**env, "QHPSI": str(slow), "QQF_QMAILQUEUE": "/bin/true"}
    first = threading.Thread(target=lambda: qq.submit(PLAIN, ENV, env=slow_one))
    try:
        first.start()
        time.sleep(0.7)
        out = qq.submit(PLAIN, ENV, env=env)
        first.join(10)
    finally:
        server.stop()
    assert_clean_failure(out, 71)
    assert out.field("reason") == "resident server busy for 0.3 s"
    assert out.field("verdict") == "tempfail"
    assert out.field("msgid") == MSGID.decode()
    assert out.field("to") == TO


# At a terminal


@pytest.mark.one_shot
def test_at_a_terminal_it_says_what_it_waits_for_then_does_it(qq):
    controller, terminal = pty.openpty()
    env_read, env_write = os.pipe()
    process = subprocess.Popen(
        [QQFILTER],
        stdin=terminal,
        stdout=env_read,
        stderr=subprocess.PIPE,
        env=qq.env,
        start_new_session=True,
    )
    os.close(terminal)
    os.close(env_read)
    try:
        ready, _, _ = select.select([process.stderr], [], [], 30)
        assert ready, "nothing said at the terminal"
        said = os.read(process.stderr.fileno(), 4096).decode()
        assert said == (
            "qqfilter: reading a message on fd 0 and its envelope on fd 1, as qmail-smtpd "
            "hands them; see qqfilter --help\n"
        )
        os.write(controller, b"Subject: typed\n\nhello\n\x04")  # ^D at a line's start: EOF
        os.write(env_write, ENV)
        os.close(env_write)
        rest = process.stderr.read().decode()
        assert process.wait(30) == 0, rest
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert "verdict=accept" in rest
    assert (qq.record / "message").read_bytes() == b"Subject: typed\n\nhello\n"


def test_on_the_queue_path_it_says_nothing_but_the_line(qq):
    out = qq.submit(PLAIN, ENV)
    assert len(out.lines) == 1
    assert "reading a message" not in out.stderr
