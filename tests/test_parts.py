"""The pieces on their own: envelope parser, header rendering, hand-off file, policy, codes."""

import errno
import os

import pytest

from qqfilter import exitcodes, handoff
from qqfilter.checks import Finding
from qqfilter.checks.size import MAXSIZE
from qqfilter.envelope import parse, serialize
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.outcome import custom_reply, exit_code, smtp_reply
from qqfilter.policy import ACCEPT, DROP, REJECT, TEMPFAIL, Verdict, judge
from qqfilter.settings import CODES, DROP_CATEGORIES, ERRFD, Settings, load
from qqfilter.spool import Spool, anonymous_file


def test_envelope_parse_keeps_sender_recipients_and_raw_bytes():
    raw = b"Fa@b\0Tc@d\0Te@f\0\0"
    env = parse(raw + b"ignored after the final NUL")
    assert env.sender == b"a@b"
    assert env.recipients == [b"c@d", b"e@f"]
    assert env.raw == raw


def test_envelope_bounce_and_empty_recipient_as_qmail_queue_allows():
    env = parse(b"F\0T\0\0")
    assert env.sender == b""
    assert env.recipients == [b""]


def test_envelope_serialize_is_what_qmail_writes():
    assert serialize(b"", [b"x@y"]) == b"F\0Tx@y\0\0"
    assert parse(serialize(b"a", [b"b", b"c"])).recipients == [b"b", b"c"]


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"X", 91),
        (b"F\0\0", 91),
        (b"F\0Fa\0\0", 91),
        (b"F\0Ta\0", 54),
        (b"", 54),
        (b"F", 54),
        (b"F" + b"a" * 1001, 11),
        (b"F\0T" + b"a" * 1001 + b"\0\0", 11),
    ],
)
def test_envelope_errors(raw, code):
    with pytest.raises(QueueError) as caught:
        parse(raw)
    assert caught.value.code == code


def test_render_folds_long_values_and_ends_lines_with_lf():
    value = " ".join(["word"] * 40)
    text = render([("X-Test", value)]).decode()
    lines = text.split("\n")
    assert lines[0].startswith("X-Test: word")
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith("\t") for line in lines[1:-1])
    assert text.endswith("\n") and lines[-1] == ""


@pytest.mark.parametrize(
    "hostile", ["x\r\nBcc: victim@example.com", "x\nX-Injected: 1", "caf\xe9 \u2028 \0", "a" * 1000]
)
def test_render_never_lets_a_value_start_a_new_header(hostile):
    text = render([("Received-SPF", f"pass helo={hostile}")])
    assert text.isascii()
    lines = text.decode().split("\n")[:-1]
    assert lines[0].startswith("Received-SPF: ")
    assert all(line.startswith("\t") for line in lines[1:])  # every other line is a continuation
    assert b"\r" not in text and b"\0" not in text


def test_handoff_file_is_headers_then_original_bytes(tmp_path):
    body = b"Subject: x\r\n\r\nbinary\0\xff" * 10000
    source = tmp_path / "m"
    source.write_bytes(body)
    fd = os.open(source, os.O_RDONLY)
    spool = Spool.receive(fd, str(tmp_path))
    os.close(fd)
    out = handoff.message_fd(spool, b"X-A: 1\n", str(tmp_path))
    assert os.lseek(out, 0, os.SEEK_CUR) == 0
    data = b"".join(iter(lambda: os.read(out, 65536), b""))
    assert data == b"X-A: 1\n" + body
    os.close(out)
    plain = handoff.message_fd(spool, b"", str(tmp_path))
    assert plain == spool.fd and os.read(plain, 10) == body[:10]
    spool.close()
    assert list(tmp_path.iterdir()) == [source]


def _finding(outcome, category="policy", check="c"):
    return Finding(check, outcome, f"{check} says {outcome}", category=category, tag="T")


def test_policy_refusal_beats_unknown_and_unknown_beats_accept():
    clean = Finding("a", Finding.CLEAN, headers=(("X-A", "1"),))
    settings = Settings.defaults()
    verdict = judge(
        [clean, _finding(Finding.UNKNOWN), _finding(Finding.REFUSE, check="r")], settings
    )
    assert (verdict.action, verdict.check) == (REJECT, "r")
    assert judge([clean, _finding(Finding.UNKNOWN)], settings).action == TEMPFAIL
    accepted = judge([clean], settings)
    assert (accepted.action, accepted.headers) == (ACCEPT, (("X-A", "1"),))


def test_policy_drops_only_the_categories_asked_for(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    settings, errors = load({"QQF_DROP": "virus,spam", "QQF_CONFIG": str(empty)})
    assert errors == []
    assert judge([_finding(Finding.REFUSE, "virus")], settings).action == DROP
    assert judge([_finding(Finding.REFUSE, "policy")], settings).action == REJECT


@pytest.mark.parametrize(
    "category, qmail, sqmail",
    [("policy", 31, 31), ("virus", 31, 32), ("spam", 31, 33), ("attachment", 31, 34)],
)
def test_reject_codes_by_category(category, qmail, sqmail):
    verdict = Verdict(REJECT, category=category, reason="r")
    assert exit_code(verdict, Settings.defaults()) == qmail
    settings = Settings.defaults().but(CODES, "sqmail")
    assert exit_code(verdict, settings) == sqmail


def test_tempfail_and_drop_codes():
    settings = Settings.defaults()
    assert exit_code(Verdict(TEMPFAIL), settings) == exitcodes.TEMPFAILED
    assert exit_code(Verdict(DROP), settings) == exitcodes.QUEUED


def test_custom_reply_is_clean_and_fits_qmails_buffer():
    verdict = Verdict(REJECT, reason="bad\r\nthing " + "x" * 400, status="5.7.1")
    line = custom_reply(verdict)
    assert line.startswith(b"Dbad??thing ")
    assert line.endswith(b" (#5.7.1)")
    assert len(line) == 255
    assert custom_reply(Verdict(TEMPFAIL, reason="later")).startswith(b"Zlater")
    assert smtp_reply(verdict, exitcodes.CUSTOM_REPLY).startswith("554 bad??thing")
    assert smtp_reply(verdict, 31) == "554 mail server permanently rejected message (#5.3.0)"


def test_settings_precedence(tmp_path):
    config = tmp_path / "q.toml"
    config.write_text('maxsize = 10\ncodes = "sqmail"\n')
    settings, errors = load({"QQF_CONFIG": str(config), "QQF_MAXSIZE": "99"})
    assert errors == []
    assert (settings[MAXSIZE], settings.sources["maxsize"]) == (99, "QQF_MAXSIZE")
    assert (settings[CODES], settings.sources["codes"]) == ("sqmail", str(config))
    assert (settings[ERRFD], settings.sources["errfd"]) == (0, "default")


def test_settings_from_toml_must_have_the_right_type(tmp_path):
    config = tmp_path / "q.toml"
    config.write_text('maxsize = "lots"\ndrop = ["virus"]\nerrfd = 6\n')
    settings, errors = load({"QQF_CONFIG": str(config)})
    assert [e.name for e in errors] == ["maxsize"]
    assert settings[DROP_CATEGORIES] == frozenset({"virus"})
    assert settings[ERRFD] == 6


def test_spool_falls_back_to_create_and_unlink_without_o_tmpfile(tmp_path, monkeypatch):
    """On filesystems without O_TMPFILE (NFS, old kernels) the file is named for an instant."""
    real_open = os.open

    def no_tmpfile(path, flags, mode=0o777, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    fd = anonymous_file(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # already unlinked
    assert os.fstat(fd).st_mode & 0o777 == 0o600
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)


def test_spool_in_a_directory_that_cannot_hold_files_is_53(tmp_path):
    with pytest.raises(QueueError) as caught:
        anonymous_file(str(tmp_path / "absent"))
    assert caught.value.code == exitcodes.WRITE_ERROR
