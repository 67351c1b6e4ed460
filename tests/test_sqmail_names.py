"""s/qmail's own variables read the s/qmail way: set, even to the empty string, is set.

s/qmail tests its variables for presence (``env_get`` not null); its own rules line reads
``RELAYCLIENT="",BADMIMETYPE="",BADLOADERTYPE="M",QHPSI="clamdscan"``. Such a variable wins
over the TOML file even when empty, and "" means what it means to s/qmail (or to indimail and
qmail-spf, for their names). qqfilter's own QQF_* names keep tcprules' "empty = unset".
"""

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from clamav import TEXT_PART, attachment, mime
from conftest import QQFILTER, assert_clean_failure, envelope
from test_attachments import NO_CONTENT_CHECKS, PDF, PE, _warlord_home

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
CLEAN = mime(TEXT_PART, attachment(b"just a document\n" * 100, b"notes.txt"))

# (variable, the row's TOML name, the value "" is read as): s/qmail's reading, see settings.md
SQMAIL_EMPTY = [
    ("BADMIMETYPE", "badmimetype", "on"),  # on, no flags (s/qmail's own rules line)
    ("BADLOADERTYPE", "badloadertype", ""),  # no loader character: off, as in s/qmail
    ("QHPSI", "qhpsi", ""),  # no program: off
    ("QHPSIARG1", "qhpsiarg1", ""),  # no argument
    ("QHPSIARG2", "qhpsiarg2", ""),
    ("QHPSIARG3", "qhpsiarg3", ""),
    ("QHPSIRC", "qhpsirc", 1),  # the default, not scan_ulong's 0 ("every exit 0 is a virus")
    ("QHPSIRN", "qhpsirn", 0),
    ("QHPSIMINSIZE", "qhpsiminsize", 0),  # scan_ulong's 0: no limit
    ("QHPSIMAXSIZE", "qhpsimaxsize", 0),
    ("SPF", "spf", 0),  # scan_ulong's 0: off
    ("SPFBEHAVIOR", "spf", 0),  # qmail-spf's name, read the same way
    ("HELOCHECK", "helocheck", "on"),  # on: control/badhelo and the split horizon only
    ("NOBADHELO", "nobadhelo", "on"),  # qregex's name: badhelo ignored
    ("MFDNSCHECK", "mfdnscheck", "on"),
    ("LOCALMFCHECK", "localmfcheck", ""),  # on, the plain mode (rcpthosts)
    ("RBLSMTPD", "rblsmtpdtext", ("",)),  # rblsmtpd's "allowed"
    ("DATABYTES", "databytes", "0"),  # qmail-smtpd's: scan_ulong's 0, no limit
]
FILE_VALUES = (
    'badmimetype = "-"\nbadloadertype = "M"\nqhpsi = "/bin/false"\n'
    'qhpsiarg1 = "a"\nqhpsiarg2 = "b"\nqhpsiarg3 = "c"\nqhpsirc = 7\nqhpsirn = 8\n'
    "qhpsiminsize = 100\nqhpsimaxsize = 200\nspf = 3\n"
    'helocheck = "A"\nnobadhelo = "off"\nmfdnscheck = "off"\nlocalmfcheck = "="\n'
    'rblsmtpdtext = ["-listed"]\ndatabytes = 100\n'
)


def _config(tmp: Path, text: str) -> str:
    path = tmp / "qqfilter.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("variable", "name", "value"), SQMAIL_EMPTY)
def test_an_empty_sqmail_variable_is_set_and_wins_over_the_file(tmp_path, variable, name, value):
    from qqfilter.settings import load

    environ = {"QQF_CONFIG": _config(tmp_path, FILE_VALUES), variable: ""}
    settings, errors = load(environ)
    assert errors == []
    assert settings.sources[name] == variable
    assert settings.values[name] == value


def test_qqfilter_config_writes_empty_sqmail_variables_so_they_read_back(tmp_path):
    """``qqfilter config``'s output is a TOML file that gives the same settings: also for the
    variables whose "" means on (HELOCHECK, MFDNSCHECK, ...) or a value of its own."""
    environ = {"QQF_CONFIG": _config(tmp_path, ""), "PATH": "/usr/bin:/bin"}
    environ.update((variable, "") for variable, _name, _value in SQMAIL_EMPTY)
    shown = subprocess.run(
        [sys.executable, "-m", "qqfilter", "config"], env=environ, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    from qqfilter.settings import load

    settings, errors = load({"QQF_CONFIG": _config(tmp_path, shown.stdout)})
    assert errors == []
    assert {name: settings.values[name] for _v, name, _value in SQMAIL_EMPTY} == {
        name: value for _v, name, value in SQMAIL_EMPTY
    }


def test_spf_wins_over_spfbehavior_even_when_empty(tmp_path):
    from qqfilter.settings import load

    settings, errors = load({"QQF_CONFIG": _config(tmp_path, ""), "SPF": "", "SPFBEHAVIOR": "3"})
    assert errors == []
    assert (settings.values["spf"], settings.sources["spf"]) == (0, "SPF")


def test_qqf_names_keep_empty_as_unset(tmp_path):
    from qqfilter.settings import load

    config = _config(tmp_path, "maxsize = 5000\nmimeskip = ['local']\n")
    environ = {"QQF_CONFIG": config, "QQF_MAXSIZE": "", "QQF_BLOCKKINDS": "", "QQF_MIMESKIP": ""}
    settings, errors = load(environ)
    assert errors == []
    assert (settings.values["maxsize"], settings.sources["maxsize"]) == (5000, config)
    assert settings.sources["blockkinds"] == "default"
    assert settings.values["mimeskip"] == frozenset({"local"})


def test_every_sqmail_name_and_only_those_read_empty_as_set():
    """A new row with an s/qmail (or indimail, qmail-spf) name must say how it reads ""."""
    from qqfilter.settings import every_setting

    sqmail = {variable for variable, _, _ in SQMAIL_EMPTY}
    for row in every_setting():
        names = {row.env, row.alias} - {""}
        ours = all(n.startswith("QQF_") for n in names)
        assert row.empty_means_set is not ours, row.name
        if not ours:
            assert names <= sqmail, row.name


def _pe_mail() -> bytes:
    part = (
        b'Content-Type: application/octet-stream; name="report.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PE)
    )
    return mime(TEXT_PART, part)


@pytest.mark.one_shot  # settings are read the same way in both modes
def test_badmimetype_empty_is_on_as_with_any_value(qq):
    _warlord_home(qq, "badmimetypes")
    message = _pe_mail()
    for value in ("1", ""):
        out = qq.submit(message, ENV, env={**NO_CONTENT_CHECKS, "BADMIMETYPE": value})
        assert_clean_failure(out, 31)
        assert out.field("tag") == "Reject::DATA::Bad_MIME"
        assert out.field("reason") == 'attachment "report.pdf": banned base64 signature TVqQAAMAA'
    assert qq.submit(message, ENV, env=NO_CONTENT_CHECKS).returncode == 0  # unset: off


@pytest.mark.one_shot  # settings are read the same way in both modes
def test_badmimetype_empty_has_no_flags(qq):
    _warlord_home(qq, "badmimetypes")
    spaced = mime(TEXT_PART, b"Content-Transfer-Encoding: base64\n\nSGVsbG8g d29ybGQ=\n")
    assert qq.submit(spaced, ENV, env={"BADMIMETYPE": ""}).returncode == 0
    assert_clean_failure(qq.submit(spaced, ENV, env={"BADMIMETYPE": "!"}), 31)
    relay = {**NO_CONTENT_CHECKS, "BADMIMETYPE": "", "RELAYCLIENT": ""}
    assert_clean_failure(qq.submit(_pe_mail(), ENV, env=relay), 31)  # no "+": relays too


@pytest.mark.one_shot  # settings are read the same way in both modes
def test_badmimetype_empty_turns_on_what_the_file_turned_off(qq):
    _warlord_home(qq, "badmimetypes")
    config = _config(qq.tmp, 'badmimetype = "-"\n')
    env = {**NO_CONTENT_CHECKS, "QQF_CONFIG": config}
    assert qq.submit(_pe_mail(), ENV, env=env).returncode == 0
    assert_clean_failure(qq.submit(_pe_mail(), ENV, env={**env, "BADMIMETYPE": ""}), 31)


@pytest.mark.one_shot  # settings are read the same way in both modes
def test_badloadertype_empty_names_no_character_so_it_is_off(qq):
    """s/qmail takes BADLOADERTYPE's one character as the one to look for: "" has none, and
    s/qmail leaves the test off (it turns on only for a value of exactly one character)."""
    _warlord_home(qq, "badloadertypes")
    loader = mime(TEXT_PART, attachment(PDF + b"KERNEL32.DLL\x00" + PDF, b"report.pdf"))
    out = qq.submit(loader, ENV, env={**NO_CONTENT_CHECKS, "BADLOADERTYPE": "M"})
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::DATA::Bad_Loader"
    assert qq.submit(loader, ENV, env={**NO_CONTENT_CHECKS, "BADLOADERTYPE": ""}).returncode == 0
    config = _config(qq.tmp, 'badloadertype = "M"\n')
    env = {**NO_CONTENT_CHECKS, "QQF_CONFIG": config}
    assert_clean_failure(qq.submit(loader, ENV, env=env), 31)
    assert qq.submit(loader, ENV, env={**env, "BADLOADERTYPE": ""}).returncode == 0


SCANNER = """\
import os, sys
with open(os.environ["SCANNER_RECORD"], "w") as out:
    out.write("\\0".join(sys.argv[2:]))
sys.exit(int(os.environ.get("SCANNER_EXIT", "0")))
"""


@pytest.fixture
def scanner(qq) -> tuple[str, Path]:
    """A scanner that records its arguments after the file and exits with SCANNER_EXIT."""
    program = qq.tmp / "scanner"
    program.write_text(f"#!{sys.executable}\n{SCANNER}")
    program.chmod(0o755)
    return str(program), qq.tmp / "scanner-argv"


def test_qhpsi_empty_runs_nothing_even_when_the_file_names_a_scanner(qq, scanner):
    program, record = scanner
    config = _config(qq.tmp, f'qhpsi = "{program}"\n')
    env = {"QQF_CONFIG": config, "SCANNER_RECORD": str(record), "SCANNER_EXIT": "1"}
    out = qq.submit(CLEAN, ENV, env=env)
    assert_clean_failure(out, 31)
    assert out.field("check") == "qhpsi"
    record.unlink()
    out = qq.submit(CLEAN, ENV, env={**env, "QHPSI": ""})
    assert out.returncode == 0, out.stderr
    assert not record.exists()


def test_qhpsiarg_empty_is_no_argument_and_wins_over_the_file(qq, scanner):
    program, record = scanner
    config = _config(qq.tmp, 'qhpsiarg1 = "--from-file"\nqhpsiarg2 = "two"\n')
    env = {"QQF_CONFIG": config, "QHPSI": program, "SCANNER_RECORD": str(record)}
    assert qq.submit(CLEAN, ENV, env=env).returncode == 0
    assert record.read_text().split("\0") == ["--from-file", "two"]
    out = qq.submit(CLEAN, ENV, env={**env, "QHPSIARG1": "", "QHPSIARG3": ""})
    assert out.returncode == 0, out.stderr
    assert record.read_text().split("\0") == ["two"]


def test_qhpsirc_and_qhpsirn_empty_are_their_defaults(qq, scanner):
    """s/qmail's scan_ulong reads QHPSIRC="" as 0, which would make every clean scan (exit 0)
    a virus; qqfilter reads it as the default, 1. QHPSIRN="" is 0, its default."""
    program, record = scanner
    config = _config(qq.tmp, "qhpsirc = 5\nqhpsirn = 6\n")
    env = {"QQF_CONFIG": config, "QHPSI": program, "SCANNER_RECORD": str(record)}
    empty = {**env, "QHPSIRC": "", "QHPSIRN": ""}
    assert qq.submit(CLEAN, ENV, env={**empty, "SCANNER_EXIT": "0"}).returncode == 0
    out = qq.submit(CLEAN, ENV, env={**empty, "SCANNER_EXIT": "1"})
    assert_clean_failure(out, 31)
    assert out.field("check") == "qhpsi"
    out = qq.submit(CLEAN, ENV, env={**env, "SCANNER_EXIT": "0"})  # the file's 6 = clean
    assert out.returncode == 71, out.stderr


def test_qhpsi_size_limits_empty_are_no_limit(qq, scanner):
    program, record = scanner
    config = _config(qq.tmp, "qhpsiminsize = 1000000\nqhpsimaxsize = 10\n")
    env = {"QQF_CONFIG": config, "QHPSI": program, "SCANNER_RECORD": str(record)}
    env["SCANNER_EXIT"] = "1"
    out = qq.submit(CLEAN, ENV, env=env)
    assert out.returncode == 0, out.stderr  # skipped by the file's limits
    assert not record.exists()
    for variable in ("QHPSIMINSIZE", "QHPSIMAXSIZE"):
        out = qq.submit(CLEAN, ENV, env={**env, variable: ""})
        assert out.returncode == 0, out.stderr  # the other limit still skips it
    out = qq.submit(CLEAN, ENV, env={**env, "QHPSIMINSIZE": "", "QHPSIMAXSIZE": ""})
    assert_clean_failure(out, 31)
    assert record.exists()


@pytest.mark.parametrize("variable", ["SPF", "SPFBEHAVIOR"])
@pytest.mark.one_shot  # settings are read the same way in both modes
def test_spf_empty_is_level_0_even_when_the_file_says_3(qq, variable):
    """Level 0 looks nothing up: the message passes unchanged, with no SPF fields added;
    the file's level 3 asks the (absent) DNS, and tempfails on its temperror."""
    message = b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n  by mx\n\nhi\n"
    config = _config(qq.tmp, "spf = 3\n")
    env = {"QQF_CONFIG": config, "QQF_DNS": "127.0.0.1:9", "QQF_SPFTIMEOUT": "1"}
    out = qq.submit(message, ENV, env={**env, variable: ""})
    assert out.returncode == 0, out.stderr
    assert out.message == message
    out = qq.submit(message, ENV, env=env)
    assert out.returncode == 71, out.stderr
    assert (out.field("check"), out.field("verdict")) == ("spf", "tempfail")


@pytest.mark.one_shot  # settings are read the same way in both modes
def test_config_shows_an_empty_sqmail_variable_as_its_source(qq):
    environ = {**qq.env, "BADMIMETYPE": "", "QHPSI": "", "SPF": "", "QQF_MAXSIZE": ""}
    proc = subprocess.run([QQFILTER, "config"], env=environ, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isalpha()}
    assert lines["badmimetype"] == 'badmimetype = "on"  # BADMIMETYPE, from BADMIMETYPE'
    assert lines["qhpsi"] == 'qhpsi = ""  # QHPSI, from QHPSI'
    assert lines["spf"] == "spf = 0  # SPF or SPFBEHAVIOR, from SPF"
    assert lines["maxsize"].endswith("from default")
