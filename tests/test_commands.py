"""The subcommands for people: ``qqfilter test`` and ``qqfilter config``."""

import subprocess

from conftest import FIXTURES, QQFILTER


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([QQFILTER, *args], capture_output=True, text=True, env=env, timeout=30)


def report(stdout: str) -> dict[str, str]:
    return {
        k.strip(): v.strip()
        for k, _, v in (
            line.partition(":") for line in stdout.splitlines() if not line.startswith(" ")
        )
    }


def test_test_finds_the_envelope_beside_the_message(qq):
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), env=qq.env)
    assert proc.returncode == 0, proc.stderr
    shown = report(proc.stdout)
    assert shown["verdict"] == "accept"
    assert shown["exit code"] == f"0 (handed to {qq.queue})"
    assert shown["reply"] == "250 ok"
    assert not (qq.record / "message").exists()  # a dry run never queues


def test_test_shows_a_refusal_with_its_code_reply_and_tag(qq):
    env = {**qq.env, "QQF_MAXSIZE": "100"}
    proc = run(
        "test", str(FIXTURES / "messages" / "plain.eml"), "--from", "", "--to", "x@y", env=env
    )
    shown = report(proc.stdout)
    assert shown["verdict"].startswith("reject by size: message is ")
    assert shown["tag"] == "Reject::DATA::Invalid_Size"
    assert shown["exit code"] == "31"
    assert shown["reply"] == "554 mail server permanently rejected message (#5.3.0)"


def test_test_shows_the_custom_reply_when_errfd_is_set(qq):
    env = {**qq.env, "QQF_MAXSIZE": "100", "QQF_ERRFD": "6", "QQF_CODES": "sqmail"}
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), env=env)
    shown = report(proc.stdout)
    assert shown["exit code"] == "82"
    assert shown["reply"].startswith("554 message is ")
    assert shown["reply"].endswith("(#5.3.4)")


def test_test_reports_a_malformed_envelope_file(qq, tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_bytes(b"Fa@b\0Fc@d\0\0")
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), "--envelope", str(bad), env=qq.env)
    shown = report(proc.stdout)
    assert shown["verdict"].startswith("error: envelope: a second sender")
    assert shown["exit code"] == "91"
    assert shown["reply"] == "451 qq internal bug (#4.3.0)"


def test_test_without_an_envelope_says_how_to_give_one(qq, tmp_path):
    message = tmp_path / "lonely.eml"
    message.write_bytes(b"Subject: x\n\n")
    proc = run("test", str(message), env=qq.env)
    assert proc.returncode == 2
    assert "give --to, or --envelope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_test_of_a_missing_file_is_a_usage_error(qq, tmp_path):
    proc = run("test", str(tmp_path / "absent.eml"), "--to", "x@y", env=qq.env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_config_shows_values_and_sources(qq, tmp_path):
    config = tmp_path / "q.toml"
    config.write_text("maxsize = 5000\n")
    proc = run("config", env={**qq.env, "QQF_CONFIG": str(config), "QQF_LOG": "json"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isalpha()}
    assert lines["maxsize"] == f"maxsize = 5000  # QQF_MAXSIZE, from {config}"
    assert lines["log"] == 'log = "json"  # QQF_LOG, from QQF_LOG'
    assert "from default" in lines["codes"]


def test_config_exits_non_zero_and_names_each_invalid_setting(qq):
    proc = run("config", env={**qq.env, "QQF_MAXSIZE": "-1", "QQF_CODES": "x"})
    assert proc.returncode == 1
    assert "setting maxsize from QQF_MAXSIZE" in proc.stderr
    assert "setting codes from QQF_CODES" in proc.stderr


def test_config_output_is_a_toml_file_that_gives_the_same_settings(qq, tmp_path):
    lists = "zen.example=127.0.0.[2..11]*3,b.example"
    given = {"QQF_MAXSIZE": "777", "QQF_DROP": "spam,virus", "QQF_DNSBL": lists}
    proc = run("config", env={**qq.env, **given})
    saved = tmp_path / "saved.toml"
    saved.write_text(proc.stdout)
    again = run("config", env={**qq.env, "QQF_CONFIG": str(saved)})
    assert again.returncode == 0, again.stderr
    lines = {line.split()[0]: line for line in again.stdout.splitlines() if line[:1].isalpha()}
    assert lines["maxsize"].startswith("maxsize = 777  # QQF_MAXSIZE, from " + str(saved))
    assert lines["drop"].startswith('drop = ["spam", "virus"]')
    assert lines["dnsbl"].startswith('dnsbl = ["zen.example=127.0.0.[2..11]*3", "b.example"]')


def test_every_setting_is_documented_with_its_variable():
    """docs/settings.md is the administrator's list: a setting missing there does not exist."""
    from conftest import ROOT

    from qqfilter.settings import every_setting

    documented = (ROOT / "docs" / "settings.md").read_text()
    missing = [
        s.name
        for s in every_setting()
        if f"`{s.name}`" not in documented or f"`{s.env}`" not in documented
    ]
    assert missing == []
