"""The size limit: QQF_MAXSIZE, else qmail's own (DATABYTES, else control/databytes), read and
counted as qmail-smtpd reads and counts it (notqmail's qmail-smtpd.c and control.c).

qmail-smtpd: ``control_readint(&databytes,"control/databytes")`` (the first line; an absent
file leaves 0, a file that cannot be read is "unable to read controls"; a line without a
leading digit leaves 0, no limit), then ``DATABYTES`` when set, even empty (``scan_ulong``:
the leading digits, "" is 0). It counts the data as stored, not its own Received line.
"""

import os
import subprocess

import pytest
from conftest import QQFILTER, assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
RECEIVED = (
    b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
)
DATA = b"From: alice@example.com\nSubject: size\n\n" + b"A line of an ordinary message.\n" * 30
MESSAGE = RECEIVED + DATA
"""What qmail-smtpd hands its queue program: its Received line, then the data it counted."""


def databytes(qq, content: bytes) -> None:
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True, exist_ok=True)
    (control / "databytes").write_bytes(content)


def refused_by_size(out, origin: str | None) -> None:
    """Refused by the size check; the log's detail names where qmail's limit came from."""
    assert_clean_failure(out, 31)
    assert out.field("check") == "size"
    assert out.field("tag") == "Reject::DATA::Invalid_Size"
    assert out.field("detail") == origin


def test_control_databytes_alone_is_the_limit_counted_as_qmail_smtpd_counts(qq):
    """The data qmail-smtpd counted fits exactly: accepted, though the Received line it wrote
    makes the message larger than the limit; one byte less and it is refused."""
    databytes(qq, f"{len(DATA)}\n".encode())
    out = qq.submit(MESSAGE, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == MESSAGE
    databytes(qq, f"{len(DATA) - 1}\n".encode())
    out = qq.submit(MESSAGE, ENV)
    refused_by_size(out, "control/databytes")
    reason = out.field("reason")
    assert reason == f"message is {len(DATA)} bytes, over the databytes limit of {len(DATA) - 1}"


def test_without_a_received_line_the_whole_message_counts(qq):
    databytes(qq, f"{len(DATA) - 1}\n".encode())
    refused_by_size(qq.submit(DATA, ENV), "control/databytes")
    databytes(qq, f"{len(DATA)}\n".encode())
    assert qq.submit(DATA, ENV).returncode == 0


def test_a_long_received_line_is_kept_whole_by_the_spool(qq):
    """The spool keeps room for qmail-smtpd's head past the limit: a message qmail-smtpd
    accepted (a HELO of 3000 characters) is queued byte for byte, not cut."""
    received = RECEIVED.replace(b"mail.example.com", b"h" * 3000)
    message = b"Received-SPF: pass (mx.example.org: ...)\n" + received + DATA
    databytes(qq, f"{len(DATA)}\n".encode())
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == message


def test_databytes_variable_wins_over_the_control_file(qq):
    databytes(qq, b"10\n")
    out = qq.submit(MESSAGE, ENV, env={"DATABYTES": "1000000"})
    assert out.returncode == 0, out.stderr
    databytes(qq, b"1000000\n")
    refused_by_size(qq.submit(MESSAGE, ENV, env={"DATABYTES": "10"}), "DATABYTES")


@pytest.mark.parametrize("value", ["", "0"])
def test_databytes_set_empty_or_0_is_no_limit_as_in_qmail_smtpd(qq, value):
    """qmail-smtpd tests DATABYTES for presence: "" is set, and scan_ulong("") is 0."""
    databytes(qq, b"10\n")
    out = qq.submit(MESSAGE, ENV, env={"DATABYTES": value})
    assert out.returncode == 0, out.stderr
    assert out.field("notes") is None


def test_qqf_maxsize_wins_over_both_even_when_0(qq, tmp_path):
    databytes(qq, b"10\n")
    over_both = {"DATABYTES": "10", "QQF_MAXSIZE": "0"}
    assert qq.submit(MESSAGE, ENV, env=over_both).returncode == 0
    out = qq.submit(MESSAGE, ENV, env={"DATABYTES": "1000000", "QQF_MAXSIZE": "10"})
    refused_by_size(out, None)  # QQF_MAXSIZE: the reason says it all
    assert out.field("reason") == f"message is {len(MESSAGE)} bytes, over the limit of 10"
    config = tmp_path / "size.toml"  # maxsize in the file is set too
    config.write_text("maxsize = 0\n")
    out = qq.submit(MESSAGE, ENV, env={"DATABYTES": "10", "QQF_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr


def test_qqf_maxsize_set_empty_is_unset_and_qmails_limit_applies(qq):
    databytes(qq, b"10\n")
    refused_by_size(qq.submit(MESSAGE, ENV, env={"QQF_MAXSIZE": ""}), "control/databytes")


@pytest.mark.parametrize("content", [b"0\n", b"", b"\n"])
def test_databytes_0_or_empty_is_no_limit(qq, content):
    databytes(qq, content)
    out = qq.submit(MESSAGE, ENV)
    assert out.returncode == 0, out.stderr
    assert out.field("notes") is None


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b"lots\n", "size: control/databytes 'lots' is not a number: no limit, as in qmail-smtpd"),
        (b" 10\n", "size: control/databytes ' 10' is not a number: no limit, as in qmail-smtpd"),
        (b"# limit\n10\n", "size: control/databytes '# limit' is not a number: no limit, as in"),
    ],
)
def test_a_databytes_line_without_a_leading_digit_is_no_limit_and_noted(qq, content, note):
    """control_readint: scan_ulong reads no digit, control_readint returns 0 and databytes
    keeps its 0. Only the first line is read, comments are not skipped."""
    databytes(qq, content)
    out = qq.submit(MESSAGE, ENV)
    assert out.returncode == 0, out.stderr
    assert out.field("notes").startswith(note)


def test_databytes_reads_the_leading_digits_and_says_so(qq):
    databytes(qq, b"100k\n")  # qmail-smtpd: 100
    out = qq.submit(MESSAGE, ENV)
    refused_by_size(out, "control/databytes")
    assert out.field("reason").endswith("over the databytes limit of 100")
    out = qq.submit(MESSAGE, ENV, env={"DATABYTES": "4294967296"})  # unsigned int: 0
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "size: DATABYTES '4294967296' is read as 0, as in qmail-smtpd"


@pytest.mark.parametrize("how", ["directory", "writable by others"])
def test_a_databytes_file_that_cannot_be_read_or_believed_is_55(qq, how):
    """qmail-smtpd: control_readint is -1, die_control ("421 unable to read controls"); the
    queue program's answer for it is 55, and the client retries."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    if how == "directory":
        (control / "databytes").mkdir()
    else:
        (control / "databytes").write_text("10\n")
        os.chmod(control / "databytes", 0o666)
    out = qq.submit(MESSAGE, ENV)
    assert_clean_failure(out, 55)
    assert "control/databytes" in out.field("reason")


def test_the_spool_stops_keeping_past_qmails_limit(qq):
    """With control/databytes and no QQF_MAXSIZE, a sender cannot fill the spool's disk."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    databytes(qq, b"500000\n")
    big = RECEIVED + b"Subject: big\n\n" + b"x" * 5_000_000
    out = qq.submit(big, ENV, preexec_fn=limit)
    refused_by_size(out, "control/databytes")
    assert out.field("size") == str(len(big))


@pytest.mark.one_shot
def test_config_shows_databytes_and_reads_its_own_output_back(qq, tmp_path):
    def config(**env: str) -> dict[str, str]:
        proc = subprocess.run(
            [QQFILTER, "config"],
            capture_output=True,
            text=True,
            env={**qq.env, **env},
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        saved = tmp_path / "saved.toml"
        saved.write_text(proc.stdout)
        return {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isalpha()}

    assert config()["databytes"] == 'databytes = ""  # DATABYTES, from default'
    assert config(DATABYTES="")["databytes"] == 'databytes = "0"  # DATABYTES, from DATABYTES'
    again = config(QQF_CONFIG=str(tmp_path / "saved.toml"))  # the "0" read back from the file
    assert again["databytes"].startswith('databytes = "0"  # DATABYTES, from ')
