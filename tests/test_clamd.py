"""Virus scanning through a real clamd (Debian's clamav-daemon, the project's signatures)."""

import subprocess
import sys
import threading
import time

import pytest
from clamav import (
    EICAR_NAME,
    MARKER,
    MARKER_NAME,
    TEXT_PART,
    attachment,
    free_port,
    mime,
    samples,
)
from conftest import assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
CLEAN = mime(TEXT_PART, attachment(b"%PDF-1.4\n" + bytes(range(256)) * 64, b"report.pdf"))


@pytest.mark.parametrize("shape", ["plain", "base64", "zipped", "nested"])
def test_eicar_in_each_wrapping_is_rejected_with_its_name(qq, clamd_server, shape):
    out = qq.submit(samples()[shape], ENV, env={"QQF_CLAMD": clamd_server.unix})
    assert_clean_failure(out, 31)
    assert out.field("verdict") == "reject"
    assert out.field("check") == "clamd"
    assert out.field("tag") == "Reject::DATA::Virus_Infected"
    assert out.field("reason") == f"virus found: {EICAR_NAME}"
    assert out.field("detail") == f"found by {clamd_server.unix}"


def test_clean_mail_passes_byte_identical_over_tcp(qq, clamd_server):
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": clamd_server.tcp})
    assert out.returncode == 0, out.stderr
    assert out.message == CLEAN
    assert out.envelope == ENV
    assert out.field("verdict") == "accept"
    assert out.field("notes") is None


def test_eicar_over_tcp_is_rejected(qq, clamd_server):
    out = qq.submit(samples()["base64"], ENV, env={"QQF_CLAMD": clamd_server.tcp})
    assert_clean_failure(out, 31)
    assert out.field("detail") == f"found by {clamd_server.tcp}"


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_own_signature_in_quoted_printable_text_is_found(qq, clamd_server):
    body = b"hello =\n" + MARKER[:8] + b"=\n" + MARKER[8:] + b"\n"
    message = (
        b"Subject: qp\nMIME-Version: 1.0\nContent-Type: text/plain\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n" + body
    )
    out = qq.submit(message, ENV, env={"QQF_CLAMD": clamd_server.unix})
    assert_clean_failure(out, 31)
    assert out.field("reason") == f"virus found: {MARKER_NAME}"


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_sqmail_codes_give_32_and_the_reply_names_the_virus(qq, clamd_server):
    out, reply = qq.submit_for_reply(
        samples()["base64"], ENV, {"QQF_CLAMD": clamd_server.unix, "QQF_CODES": "sqmail"}
    )
    assert out.returncode == 82
    assert reply == f"Dvirus found: {EICAR_NAME} (#5.7.1)".encode()
    out = qq.submit(
        samples()["base64"], ENV, env={"QQF_CLAMD": clamd_server.unix, "QQF_CODES": "sqmail"}
    )
    assert_clean_failure(out, 32)


def test_stopped_clamd_is_71_at_once_and_says_why(qq, tmp_path):
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": f"unix:{tmp_path}/gone.sock"})
    assert_clean_failure(out, 71)
    assert time.monotonic() - started < 5
    assert out.field("verdict") == "tempfail"
    assert out.field("check") == "clamd"
    assert out.field("reason") == "virus scan not possible now, try again later"
    assert "gone.sock: cannot connect: No such file or directory" in out.field("detail")


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_closed_tcp_port_is_71(qq):
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": f"127.0.0.1:{free_port()}"})
    assert_clean_failure(out, 71)
    assert "cannot connect: Connection refused" in out.field("detail")


def test_the_reply_for_a_scanner_outage_is_temporary_and_private(qq, tmp_path):
    out, reply = qq.submit_for_reply(CLEAN, ENV, {"QQF_CLAMD": f"unix:{tmp_path}/gone.sock"})
    assert out.returncode == 82
    assert reply == b"Zvirus scan not possible now, try again later (#4.3.0)"


@pytest.mark.one_shot  # a deadline is kept the same way in both modes (resident: the scan deadline)
def test_clamd_that_never_answers_is_71_within_the_deadline(qq, spare_clamd):
    spare_clamd.pause()
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": spare_clamd.unix, "QQF_CLAMDTIMEOUT": "1"})
    took = time.monotonic() - started
    assert_clean_failure(out, 71)
    assert took < 4, took
    assert out.field("detail") == f"{spare_clamd.unix}: no answer within 1 s"


def test_the_scan_deadline_bounds_the_whole_scan(qq, spare_clamd):
    spare_clamd.pause()
    started = time.monotonic()
    out = qq.submit(
        CLEAN,
        ENV,
        env={
            "QQF_CLAMD": f"{spare_clamd.unix},{spare_clamd.tcp}",
            "QQF_CLAMDTIMEOUT": "30",
            "QQF_SCANTIMEOUT": "1.5",
        },
    )
    took = time.monotonic() - started
    assert_clean_failure(out, 71)
    assert took < 4.5, took
    assert f"{spare_clamd.tcp}: not tried, scan deadline passed" in out.field("detail")


@pytest.mark.one_shot  # a deadline is kept the same way in both modes (resident: the scan deadline)
def test_clamd_killed_mid_stream_is_71(qq, spare_clamd):
    """clamd is paused, so the stream stalls once the socket buffers fill; then it is killed."""
    spare_clamd.pause()
    big = mime(TEXT_PART, attachment(b"\x00\x01" * (8 << 20), b"disk.bin"))
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(
            out=qq.submit(big, ENV, env={"QQF_CLAMD": spare_clamd.unix, "QQF_CLAMDTIMEOUT": "60"})
        )
    )
    runner.start()
    give_up = time.monotonic() + 30
    while _connections(spare_clamd.socket) < 1 and time.monotonic() < give_up:
        time.sleep(0.05)
    time.sleep(0.5)  # let it fill the buffers and block in send
    spare_clamd.kill()
    runner.join(30)
    out = result["out"]
    assert_clean_failure(out, 71)
    assert "connection lost mid-stream" in out.field("detail")


def _connections(path: str) -> int:
    """Connections to the unix socket at ``path`` not yet accepted or closed."""
    with open("/proc/net/unix") as table:
        return sum(1 for line in table if line.rstrip().endswith(" " + path)) - 1


def test_failover_to_the_second_clamd_when_the_first_is_down(qq, clamd_server, tmp_path):
    servers = f"unix:{tmp_path}/gone.sock,{clamd_server.unix}"
    out = qq.submit(samples()["base64"], ENV, env={"QQF_CLAMD": servers})
    assert_clean_failure(out, 31)
    assert out.field("detail").startswith(f"found by {clamd_server.unix} after unix:{tmp_path}")


@pytest.mark.one_shot  # a deadline is kept the same way in both modes (resident: the scan deadline)
def test_failover_from_a_hung_clamd_and_the_log_notes_it(qq, clamd_server, spare_clamd):
    spare_clamd.pause()
    servers = f"{spare_clamd.unix},{clamd_server.tcp}"
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": servers, "QQF_CLAMDTIMEOUT": "1"})
    assert out.returncode == 0, out.stderr
    assert out.message == CLEAN
    assert out.field("notes") == (
        f"clamd: clean by {clamd_server.tcp} after {spare_clamd.unix}: no answer within 1 s"
    )


def test_clamd_size_limit_is_71_with_clamds_own_words(qq):
    from clamav import Clamd

    small = Clamd(stream_max="1M")
    try:
        big = mime(TEXT_PART, attachment(b"x" * (2 << 20), b"big.bin"))
        out = qq.submit(big, ENV, env={"QQF_CLAMD": small.unix})
    finally:
        small.stop()
    assert_clean_failure(out, 71)
    assert "size limit exceeded" in out.field("detail")


def test_a_server_that_is_not_clamd_is_71(qq, tmp_path):
    """A real HTTP server stands where clamd should be: its answer is not clamd's protocol."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": f"127.0.0.1:{port}"})
    finally:
        server.kill()
        server.wait()
    assert_clean_failure(out, 71)
    detail = out.field("detail")
    assert "unexpected answer" in detail or "incomplete answer" in detail, detail


def _wait_for_port(port: int) -> None:
    import socket

    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def test_scanerror_accept_lets_mail_through_marked_and_logged(qq, tmp_path):
    out = qq.submit(
        CLEAN, ENV, env={"QQF_CLAMD": f"unix:{tmp_path}/gone.sock", "QQF_SCANERROR": "accept"}
    )
    assert out.returncode == 0, out.stderr
    assert out.message == b"X-Virus-Status: Unscanned (clamd could not decide)\n" + CLEAN
    assert out.field("verdict") == "accept"
    assert out.field("check") == "clamd"
    assert "cannot connect" in out.field("detail")


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_scanerror_accept_still_rejects_a_virus(qq, clamd_server):
    out = qq.submit(
        samples()["base64"], ENV, env={"QQF_CLAMD": clamd_server.unix, "QQF_SCANERROR": "accept"}
    )
    assert_clean_failure(out, 31)


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_message_over_clamdmaxsize_is_not_scanned_and_the_log_says_so(qq, tmp_path):
    message = samples()["base64"]
    out = qq.submit(
        message, ENV, env={"QQF_CLAMD": f"unix:{tmp_path}/gone.sock", "QQF_CLAMDMAXSIZE": "100"}
    )
    assert out.returncode == 0, out.stderr
    assert out.message == message
    assert out.field("notes") == "clamd: skipped: larger than 100 bytes"


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_relayclient_skip_applies_only_when_asked(qq, clamd_server):
    message = samples()["base64"]
    relay = {"QQF_CLAMD": clamd_server.unix, "RELAYCLIENT": ""}
    out = qq.submit(message, ENV, env={**relay, "QQF_SCANSKIP": "relayclient"})
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "clamd: skipped: RELAYCLIENT"
    out = qq.submit(message, ENV, env=relay)
    assert_clean_failure(out, 31)


@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_local_injection_skip(qq, clamd_server):
    env = {"QQF_CLAMD": clamd_server.unix, "QQF_SCANSKIP": "local", "TCPREMOTEIP": ""}
    out = qq.submit(samples()["base64"], ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "clamd: skipped: local injection"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("localhost:clamd", "expected unix:/path or host:port"),
        ("unix:relative.sock", "a unix socket needs an absolute path"),
        ("127.0.0.1:99999", "expected unix:/path or host:port"),
        ("[::1:3310", "expected [address]:port"),
    ],
)
@pytest.mark.one_shot  # the answer is read and judged the same way in both modes
def test_malformed_clamd_setting_is_55(qq, value, why):
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": value})
    assert_clean_failure(out, 55)
    assert why in out.field("reason")


def test_ipv6_and_bare_host_forms_are_accepted():
    from qqfilter.checks.virus.clamd import endpoint

    assert endpoint("[::1]:3310") == ("::1", 3310)
    assert endpoint("[::1]") == ("::1", 3310)
    assert endpoint("clamd.example.org") == ("clamd.example.org", 3310)
    assert endpoint("/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"


def test_qqfilter_test_shows_the_detail_and_notes(clamd_server, tmp_path):
    from conftest import QQFILTER

    message = tmp_path / "virus.eml"
    message.write_bytes(samples()["zipped"])
    env = {"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null", "QQF_SPOOLDIR": str(tmp_path)}
    command = [QQFILTER, "test", str(message), "--to", "bob@example.org"]
    servers = f"unix:{tmp_path}/gone.sock,{clamd_server.unix}"
    shown = subprocess.run(
        command, env={**env, "QQF_CLAMD": servers}, capture_output=True, text=True, check=True
    ).stdout
    assert f"verdict:   reject by clamd: virus found: {EICAR_NAME}\n" in shown
    assert f"detail:    found by {clamd_server.unix} after unix:{tmp_path}/gone.sock" in shown
    skipped = {**env, "QQF_CLAMD": servers, "QQF_CLAMDMAXSIZE": "100"}
    shown = subprocess.run(command, env=skipped, capture_output=True, text=True).stdout
    assert "verdict:   accept\nnotes:     clamd: skipped: larger than 100 bytes\n" in shown


def test_clamd_that_died_leaving_its_socket_is_71_at_once(qq, spare_clamd):
    spare_clamd.kill()
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env={"QQF_CLAMD": f"{spare_clamd.unix},{spare_clamd.tcp}"})
    assert time.monotonic() - started < 5
    assert_clean_failure(out, 71)
    assert out.field("detail") == (
        f"{spare_clamd.unix}: cannot connect: Connection refused; "
        f"{spare_clamd.tcp}: cannot connect: Connection refused"
    )


def test_a_host_name_is_looked_up_and_each_address_tried(qq, clamd_server):
    out = qq.submit(samples()["base64"], ENV, env={"QQF_CLAMD": f"localhost:{clamd_server.port}"})
    assert_clean_failure(out, 31)
    assert out.field("detail") == f"found by localhost:{clamd_server.port}"
