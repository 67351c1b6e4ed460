"""Failure paths of the real process: every one ends in a defined code, one log line, no file."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import QQFILTER, assert_clean_failure, envelope

PLAIN = b"Subject: hi\n\nbody\n"
ENV = envelope(b"alice@example.com", b"bob@example.org")


def test_missing_spool_directory_is_53(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_SPOOLDIR": str(qq.tmp / "no-such-dir")})
    assert_clean_failure(out, 53)
    assert "spool: cannot create a file" in out.field("reason")


def test_spool_directory_that_is_a_file_is_53(qq):
    target = qq.tmp / "a-file"
    target.write_text("")
    out = qq.submit(PLAIN, ENV, env={"QQF_SPOOLDIR": str(target)})
    assert_clean_failure(out, 53)


def test_file_size_limit_while_spooling_is_53_and_leaves_nothing(qq):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    out = qq.submit(b"x" * 1_000_000, ENV, preexec_fn=limit)
    assert_clean_failure(out, 53)
    assert "cannot write" in out.field("reason")


def test_a_message_over_maxsize_is_not_spooled_past_the_limit(qq):
    """With qmail's databytes unset, a sender must not fill the spool's disk: past
    QQF_MAXSIZE nothing more is written, the rest is read and dropped, and the answer is
    the size refusal (31), not a write error (53, retried)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    big = b"Subject: big\n\n" + b"x" * 20_000_000
    out = qq.submit(big, ENV, env={"QQF_MAXSIZE": "500000"}, preexec_fn=limit, measure=True)
    assert_clean_failure(out, 31)
    assert out.field("check") == "size"
    assert out.field("size") == str(len(big))
    assert f"message is {len(big)} bytes" in out.field("reason")
    assert out.peak_kib < 64 * 1024
    under = b"Subject: small\n\n" + b"x" * 400_000
    out = qq.submit(under, ENV, env={"QQF_MAXSIZE": "500000"}, preexec_fn=limit)
    assert out.returncode == 0, out.stderr
    assert out.message.endswith(under)


def test_client_that_gives_up_before_the_envelope_is_54(qq):
    out = qq.submit(PLAIN, b"")
    assert_clean_failure(out, 54)


def _spool_fds(pid: int, spool) -> list[str]:
    links = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(spool)):
            links.append(target)
    return links


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_while_reading_leaves_no_file(qq, sig):
    env_read, env_write = os.pipe()
    proc = subprocess.Popen(
        [QQFILTER], stdin=subprocess.PIPE, stdout=env_read, stderr=subprocess.DEVNULL, env=qq.env
    )
    os.close(env_read)
    try:
        proc.stdin.write(b"x" * 300_000)
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while not _spool_fds(proc.pid, qq.spool) and time.monotonic() < deadline:
            time.sleep(0.01)
        # the message is on disk in the spool directory, in a file that has no name
        held = _spool_fds(proc.pid, qq.spool)
        assert held and all(link.endswith("(deleted)") for link in held), held
        assert qq.spool_is_empty()
        proc.send_signal(sig)
        assert proc.wait(10) == -sig
    finally:
        os.close(env_write)
        proc.stdin.close()
    assert qq.spool_is_empty()
    assert not qq.record.joinpath("message").exists()


@pytest.mark.parametrize(
    "env, named",
    [
        ({"QQF_MAXSIZE": "ten"}, "maxsize"),
        ({"QQF_CODES": "exim"}, "codes"),
        ({"QQF_ERRFD": "5"}, "errfd"),
        ({"QQF_LOG": "xml"}, "log"),
        ({"QQF_DROP": "virus,cats"}, "drop"),
    ],
)
def test_invalid_setting_is_55_and_named(qq, env, named):
    out = qq.submit(PLAIN, ENV, env=env)
    assert_clean_failure(out, 55)
    assert f"setting {named} from" in out.field("reason")


def test_a_config_file_nested_past_pythons_limit_is_55(qq):
    """tomllib recurses per nested array: 5,000 deep was an 81 (RecursionError)."""
    config = qq.tmp / "deep.toml"
    config.write_text("maxsize = " + "[" * 5000 + "1" + "]" * 5000 + "\n")
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config)})
    assert_clean_failure(out, 55)
    assert "nested too deep" in out.field("reason")


def test_invalid_config_file_is_55(qq):
    config = qq.tmp / "bad.toml"
    config.write_text("maxsize = [unclosed\n")
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config)})
    assert_clean_failure(out, 55)
    assert "not valid TOML" in out.field("reason")


def test_unknown_key_in_config_file_is_55(qq):
    config = qq.tmp / "typo.toml"
    config.write_text("max_size = 10\n")
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config)})
    assert_clean_failure(out, 55)
    assert "setting max_size from" in out.field("reason")


def test_named_config_file_that_is_missing_is_55(qq):
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(qq.tmp / "absent.toml")})
    assert_clean_failure(out, 55)


def test_config_file_applies_and_environment_overrides_it(qq):
    config = qq.tmp / "qqfilter.toml"
    config.write_text("maxsize = 10\n")
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config)})
    assert_clean_failure(out, 31)
    qq.record.joinpath("message").unlink(missing_ok=True)
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config), "QQF_MAXSIZE": "100000"})
    assert out.returncode == 0, out.stderr
    # an empty variable (as tcprules writes QQF_MAXSIZE="") counts as unset: the file rules
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config), "QQF_MAXSIZE": ""})
    assert out.returncode == 31


BROKEN = """
import os, sys
import qqfilter.qmailqueue as qmailqueue
def broken(message, settings):
    raise {error}
qmailqueue.evaluate = broken
sys.exit(qmailqueue.run(dict(os.environ)))
"""


@pytest.mark.parametrize(
    "error, code",
    [('RuntimeError("a check blew up")', 81), ("MemoryError()", 51)],
)
def test_unexpected_exception_is_one_line_and_a_temporary_code(tmp_path, error, code):
    """A bug in a check must reach qmail-smtpd as 451, never as a traceback."""
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "empty.toml"
    config.write_text("")
    env_read, env_write = os.pipe()
    os.write(env_write, ENV)
    os.close(env_write)
    proc = subprocess.run(
        [sys.executable, "-c", BROKEN.format(error=error)],
        input=PLAIN,
        stdout=env_read,
        stderr=subprocess.PIPE,
        timeout=30,
        env={"QQF_SPOOLDIR": str(spool), "QQF_CONFIG": str(config), "QQF_QMAILQUEUE": "/bin/false"},
    )
    os.close(env_read)
    stderr = proc.stderr.decode()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    (line,) = stderr.splitlines()
    assert "verdict=error" in line
    assert f"code={code}" in line
    assert list(spool.iterdir()) == []


def test_a_control_file_others_may_write_is_not_believed(qq):
    """Whoever can write control/badmimetypes decides what is refused: 55, not a guess."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "badmimetypes").write_text("TVqQAAMAA\n")
    (control / "badmimetypes").chmod(0o664)
    message = (
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b"Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA\n--b--\n"
    )
    out = qq.submit(message, ENV, env={"BADMIMETYPE": "1", "QQF_BLOCKKINDS": "none"})
    assert_clean_failure(out, 55)
    assert out.field("reason").endswith(
        "badmimetypes is writable by users other than its owner: refused (chmod go-w)"
    )


def test_a_config_file_others_may_write_is_not_believed(qq):
    config = qq.tmp / "qqfilter.toml"
    config.write_text("maxsize = 10\n")
    config.chmod(0o646)
    out = qq.submit(PLAIN, ENV, env={"QQF_CONFIG": str(config)})
    assert_clean_failure(out, 55)
    assert "writable by users other than its owner" in out.field("reason")
