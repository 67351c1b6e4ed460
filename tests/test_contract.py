"""The qmail-queue contract, end to end: the real qqfilter process, the stand-in qmail-queue.

What the QMAILQUEUE program itself does at the hand-off (the descriptors and signals
qmail-queue gets, an exec that fails, a custom-reply descriptor that is no pipe) runs with both
clients too, the Python one and the compiled one (``client``, test_compiled_client.py).
"""

import os
import signal
import subprocess

import pytest
from conftest import QQFILTER, assert_clean_failure, envelope
from test_compiled_client import client_fixture, compiled_fixture  # noqa: F401 (fixtures)

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

PLAIN = b"Received: from a (HELO a) (192.0.2.1)\n  by mx with SMTP; now\nSubject: hi\n\nbody\n"
ENV = envelope(b"alice@example.com", b"bob@example.org")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"Subject: crlf\r\n\r\nline one\r\nline two\r\n", id="crlf"),
        pytest.param(b"Subject: lf\n\nline\n", id="bare-lf"),
        pytest.param(b"Subject: x\n\nno final newline", id="no-final-newline"),
        pytest.param("Subject: caf\xe9\n\n\xfcber 8-bit\n".encode("latin-1"), id="8bit"),
        pytest.param(b"Subject: nul\n\na\0b\0\0c\n", id="nul-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(bytes(range(256)) * 1000, id="binary"),
    ],
)
def test_accepted_message_reaches_qmail_queue_byte_for_byte(qq, body):
    out = qq.submit(body, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == body
    assert out.envelope == ENV
    assert out.field("verdict") == "accept"


def test_fifty_megabytes_pass_intact_in_bounded_memory(qq):
    body = b"Subject: big\n\n" + (os.urandom(3 << 20).hex().encode() + b"\n") * 8
    body = body[: 50 << 20]
    out = qq.submit(body, ENV, measure=True)
    assert out.returncode == 0, out.stderr
    assert out.message == body
    # peak RSS of the process (qqfilter, then the stand-in it became, which streams too):
    # a filter that held the message in memory would need 50 MB or more
    assert out.peak_kib < 30 * 1024, out.peak_kib


def test_canned_files_work_as_fd0_and_fd1(qq, tmp_path):
    message, env_file = tmp_path / "m", tmp_path / "m.env"
    message.write_bytes(PLAIN)
    env_file.write_bytes(ENV)
    out = qq.submit_files(message, env_file)
    assert out.returncode == 0, out.stderr
    assert (out.message, out.envelope) == (PLAIN, ENV)


def test_envelope_handed_on_is_byte_identical_even_with_many_recipients(qq):
    env = envelope(b"", *(f"user{i}@example.org".encode() for i in range(10000)))
    out = qq.submit(PLAIN, env, env={"QQF_BOUNCERCPTS": "0"})  # a bounce, let through
    assert out.returncode == 0, out.stderr
    assert out.envelope == env
    assert out.field("rcpts") == "10000"
    assert out.field("from") == "<>"


def test_qmail_queue_gets_no_descriptor_beyond_0_1_2(qq, client):
    out = qq.submit(PLAIN, ENV, command=client)
    assert out.fds == [0, 1, 2]


def test_qmail_queue_starts_with_default_signal_dispositions(qq, client):
    """Python ignores SIGPIPE and SIGXFSZ; qmail-queue must not inherit that, in either mode
    (the resident client once exec'd it with SIGXFSZ still ignored)."""
    wrapper = qq.tmp / "qmail-queue-sigs"
    # a shell cannot undo an ignored signal it inherits: its SigIgn is what exec gave it
    wrapper.write_text(
        f'#!/bin/sh\ngrep SigIgn /proc/$$/status > "$FAKEQQ_DIR/sigign"\nexec {qq.queue}\n'
    )
    wrapper.chmod(0o755)
    out = qq.submit(PLAIN, ENV, env={"QQF_QMAILQUEUE": str(wrapper)}, command=client)
    assert out.returncode == 0, out.stderr
    assert out.message == PLAIN
    ignored = int((qq.record / "sigign").read_text().split()[1], 16)
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (number - 1)), signal.Signals(number).name


@pytest.mark.parametrize("code", [0, 31, 53, 71, 81, 91])
def test_qmail_queue_exit_status_reaches_the_caller_unchanged(qq, code):
    out = qq.submit(PLAIN, ENV, env={"FAKEQQ_EXIT": str(code)})
    assert out.returncode == code
    assert out.queued


def test_qmail_queue_killed_by_a_signal_is_seen_as_killed(qq):
    out = qq.submit(PLAIN, ENV, env={"FAKEQQ_SIGNAL": str(int(signal.SIGKILL))})
    assert out.returncode == -signal.SIGKILL  # qmail-smtpd answers "451 qq crashed"


@pytest.mark.parametrize(
    "env_bytes, code",
    [
        pytest.param(b"Ta@b\0\0", 91, id="no-sender-record"),
        pytest.param(b"F\0\0", 91, id="no-recipient"),
        pytest.param(b"Fa@b\0Xc@d\0\0", 91, id="junk-record"),
        pytest.param(b"Fa@b\0Fb@c\0Tc@d\0\0", 91, id="two-senders"),
        pytest.param(b"Fa@b\0Tc@d\0", 54, id="no-final-nul"),
        pytest.param(b"Fa@b", 54, id="eof-inside-sender"),
        pytest.param(b"", 54, id="empty"),
        pytest.param(b"F" + b"a" * 1001 + b"\0Tc@d\0\0", 11, id="sender-over-1000"),
        pytest.param(b"Fa@b\0T" + b"c" * 1001 + b"\0\0", 11, id="recipient-over-1000"),
        pytest.param(b"Fa@b\0T" + b"c" * (1 << 20), 11, id="recipient-of-1mb"),
    ],
)
def test_malformed_envelope_gets_its_code_and_nothing_is_queued(qq, env_bytes, code):
    out = qq.submit(PLAIN, env_bytes)
    assert_clean_failure(out, code)
    assert out.field("verdict") == "error"
    assert out.field("code") == str(code)


def test_address_of_exactly_1000_bytes_is_accepted(qq):
    env = envelope(b"a" * 1000, b"b" * 1000)
    out = qq.submit(PLAIN, env)
    assert out.returncode == 0, out.stderr
    assert out.envelope == env


def test_unreadable_envelope_descriptor_is_54(qq, tmp_path):
    # fd 1 open for writing only: read() fails with EBADF
    message = tmp_path / "m"
    message.write_bytes(PLAIN)
    with open(message, "rb") as msg, open(tmp_path / "w", "wb") as wronly:
        proc = subprocess.run(
            [QQFILTER], stdin=msg, stdout=wronly, stderr=subprocess.PIPE, env=qq.env, timeout=30
        )
    assert proc.returncode == 54
    assert b"envelope: cannot read" in proc.stderr


def test_next_queue_program_missing_is_71_with_a_log_line(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_QMAILQUEUE": str(qq.tmp / "nowhere")})
    assert_clean_failure(out, 71)
    assert "cannot run" in out.field("reason")


def test_next_queue_program_not_executable_is_71(qq):
    qq.queue.chmod(0o644)
    out = qq.submit(PLAIN, ENV)
    assert_clean_failure(out, 71)


def test_next_queue_program_that_cannot_be_exec_is_71(qq, client):
    qq.queue.write_bytes(b"\x7fELF garbage that is no program")
    out = qq.submit(PLAIN, ENV, command=client)
    assert out.returncode == 71
    assert "Traceback" not in out.stderr
    assert "cannot run" in out.lines[-1]
    assert not out.queued


def test_oversized_message_is_refused_with_31_and_tag(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": "10"})
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::DATA::Invalid_Size"
    assert out.field("verdict") == "reject"
    assert out.field("check") == "size"


def test_message_at_the_limit_passes(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": str(len(PLAIN))})
    assert out.returncode == 0
    assert out.message == PLAIN


def test_custom_reply_goes_to_errfd_with_82(qq):
    out, reply = qq.submit_for_reply(PLAIN, ENV, {"QQF_MAXSIZE": "10"})
    assert out.returncode == 82
    assert reply.startswith(b"Dmessage is ")
    assert reply.endswith(b"(#5.3.4)")
    assert len(reply) <= 255


@pytest.mark.parametrize("errfd", ["4", "6"])
def test_errfd_not_open_falls_back_to_plain_code(qq, errfd):
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": "10", "QQF_ERRFD": errfd})
    assert_clean_failure(out, 31)


def test_errfd_that_is_not_a_pipe_is_left_alone(qq, tmp_path, client):
    target = tmp_path / "not-a-pipe"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        out = qq.submit(
            PLAIN,
            ENV,
            env={"QQF_MAXSIZE": "10", "QQF_ERRFD": "4"},
            pass_fds=(4, fd),
            preexec_fn=lambda: os.dup2(fd, 4),
            command=client,
        )
    finally:
        os.close(fd)
    assert_clean_failure(out, 31)
    assert target.read_bytes() == b""


def test_drop_reports_success_without_queuing_and_logs_it(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": "10", "QQF_DROP": "policy"})
    assert out.returncode == 0
    assert not out.queued
    assert out.field("verdict") == "drop"
    assert out.field("tag") == "Reject::DATA::Invalid_Size"


def test_sqmail_codes_leave_policy_refusals_at_31(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_MAXSIZE": "10", "QQF_CODES": "sqmail"})
    assert_clean_failure(out, 31)


def test_qmailqueue_variable_is_ignored(qq):
    out = qq.submit(PLAIN, ENV, env={"QMAILQUEUE": "/nonexistent/loop"})
    assert out.returncode == 0
    assert out.message == PLAIN


def test_log_line_carries_the_fields(qq):
    out = qq.submit(PLAIN, ENV)
    assert out.field("pid").isdigit()
    assert out.field("ip") == "192.0.2.1"
    assert out.field("from") == "<alice@example.com>"
    assert out.field("rcpts") == "1"
    assert out.field("size") == str(len(PLAIN))
    assert out.field("ms").isdigit()


def test_log_line_tells_a_slow_client_from_slow_checks(qq):
    out = qq.submit(PLAIN, ENV, pause=1.0)
    assert out.returncode == 0
    # ms: the whole run, most of the client's second in it (the start-up overlaps it);
    # checkms: the checks' own time, none of it
    assert int(out.field("checkms")) + 500 <= int(out.field("ms"))


def test_hostile_sender_cannot_forge_a_log_line(qq):
    sender = b'evil"\nqqfilter: pid=1 verdict=accept \xff\x1b[31m'
    out = qq.submit(PLAIN, envelope(sender, b"bob@example.org"))
    assert out.returncode == 0
    assert len(out.lines) == 1
    assert out.stderr.isascii()
    assert out.field("from") == '<evil"\\x0aqqfilter: pid=1 verdict=accept \\xff\\x1b[31m>'


def test_json_log_is_one_object_a_line(qq):
    import json

    out = qq.submit(PLAIN, ENV, env={"QQF_LOG": "json", "QQF_MAXSIZE": "10"})
    (line,) = out.lines
    record = json.loads(line)
    assert record["verdict"] == "reject"
    assert record["code"] == 31
    assert record["from"] == "<alice@example.com>"
    assert record["size"] == len(PLAIN)
