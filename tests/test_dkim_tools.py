"""``qqfilter dkim keygen`` and ``qqfilter dkim check``, run as a person runs them.

The command runs as a subprocess against a scratch qmail home (QQF_QMAILHOME) and a real nsd
(QQF_DNS) serving keys.test: the keys are made first, with keygen, and the zone publishes
what keygen printed, so the record a person would paste is the record that is checked:

- match.keys.test: its RSA ``default`` and Ed25519 ``ed25519`` records, as printed;
- differs.keys.test: the record of match's RSA key, not its own;
- revoked.keys.test: an empty p=; unpublished.keys.test: nothing;
- pct.keys.test: no keys of its own; the ``%`` directory's key is published for it.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest
from clamav import free_port
from conftest import QQFILTER
from nameserver import Nsd

from qqfilter.checks.dkim.sign import keys
from qqfilter.tools.dkim import judge, zone_record

ZONE = "keys.test"


def run(*args: str, home: Path, dns: str = "127.0.0.1:9") -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "QQF_CONFIG": "/dev/null",
        "QQF_QMAILHOME": str(home),
        "QQF_DNS": dns,
    }
    return subprocess.run(
        [QQFILTER, "dkim", *args], capture_output=True, text=True, env=env, timeout=60
    )


def scratch(path: Path) -> Path:
    """A qmail home with an empty control directory."""
    (path / "control").mkdir(parents=True)
    return path


def zone_lines(stdout: str) -> str:
    """What keygen printed to be pasted into a zone file."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Publish this TXT"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Once it is published"))
    return "\n".join(lines[start + 1 : end])


def printed_record(stdout: str) -> tuple[str, list[str]]:
    """The owner name and the strings of the TXT record keygen printed."""
    zone = zone_lines(stdout)
    return zone.split()[0], re.findall(r'"([^"]*)"', zone)


def key_record(path: Path) -> str:
    return keys.public_record(*keys.readable(path.read_bytes(), str(path)))


def checks_account() -> int:
    """The uid keygen gives keys to without --user: qmaild's, else ours."""
    try:
        return pwd.getpwnam("qmaild").pw_uid
    except KeyError:
        return os.geteuid()


class World:
    def __init__(self, home: Path, nsd: Nsd, printed: dict[str, str]) -> None:
        self.home = home
        self.nsd = nsd
        self.printed = printed

    def keys(self, domain: str) -> Path:
        return self.home / "control" / "domainkeys" / domain

    def check(self, *args: str, dns: str | None = None) -> subprocess.CompletedProcess:
        return run("check", *args, home=self.home, dns=dns or self.nsd.address)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    home = scratch(tmp_path_factory.mktemp("dkimtools"))
    printed = {}
    for name, args in {
        "match": ["match.keys.test"],
        "match-ed": ["match.keys.test", "--ed25519"],
        "differs": ["differs.keys.test", "--ed25519"],
        "revoked": ["revoked.keys.test", "--ed25519"],
        "unpublished": ["unpublished.keys.test", "--ed25519"],
        "pct": ["pct.keys.test", "--ed25519", "--selector", "default"],
    }.items():
        made = run("keygen", *args, home=home)
        assert made.returncode == 0, made.stderr
        printed[name] = made.stdout
    domainkeys = home / "control" / "domainkeys"
    (domainkeys / "pct.keys.test").rename(domainkeys / "%")
    match_rsa = zone_lines(printed["match"]).split(None, 1)[1]  # the record, for another name
    zone = "\n".join(
        [
            f"$ORIGIN {ZONE}.",
            "$TTL 300",
            f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300",
            f"@ IN NS ns.{ZONE}.",
            "ns IN A 127.0.0.1",
            zone_lines(printed["match"]),
            zone_lines(printed["match-ed"]),
            f"ed25519._domainkey.differs.{ZONE}. {match_rsa}",
            f'ed25519._domainkey.revoked.{ZONE}. IN TXT "v=DKIM1; k=ed25519; p="',
            zone_lines(printed["pct"]),
            f'unpublished.{ZONE}. IN TXT "v=spf1 -all"',
            "",
        ]
    )
    nsd = Nsd(extra={ZONE: zone})
    yield World(home, nsd, printed)
    nsd.stop()


# --- keygen -------------------------------------------------------------------------------


def test_keygen_writes_an_rsa_key_for_the_checks_account_and_prints_its_record(world):
    path = world.keys("match.keys.test") / "default"
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == checks_account()
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    from cryptography.hazmat.primitives import serialization

    assert serialization.load_pem_private_key(data, password=None).key_size == 2048
    for directory in (world.keys("match.keys.test"), world.keys("match.keys.test").parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    out = world.printed["match"]
    assert out.splitlines()[0].startswith(f"wrote {path} (RSA 2048 bits, mode 0600")
    name, strings = printed_record(out)
    assert name == "default._domainkey.match.keys.test."
    assert all(len(s) <= 255 for s in strings) and len(strings) >= 2
    assert "".join(strings) == key_record(path)
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=")
    assert "qqfilter dkim check match.keys.test --selector default" in out
    assert not [p for p in world.keys("match.keys.test").iterdir() if p.name.startswith(".")]


def test_keygen_ed25519_is_listed_after_the_rsa_key(world):
    where = world.keys("match.keys.test")
    path = where / "ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    selectors = where / "selector"
    assert selectors.read_text() == "default\ned25519\n"
    assert stat.S_IMODE(selectors.stat().st_mode) == 0o644
    name, strings = printed_record(world.printed["match-ed"])
    assert name == "ed25519._domainkey.match.keys.test."
    assert "".join(strings) == key_record(path)
    assert "k=ed25519;" in strings[0]


def test_keygen_refuses_to_overwrite_a_key_unless_forced(tmp_path):
    home = scratch(tmp_path)
    assert run("keygen", "example.org", "--ed25519", home=home).returncode == 0
    path = home / "control" / "domainkeys" / "example.org" / "ed25519"
    before = path.read_bytes()
    again = run("keygen", "example.org", "--ed25519", home=home)
    assert again.returncode == 1
    assert again.stdout == "" and len(again.stderr.splitlines()) == 1
    assert "exists" in again.stderr and "--force" in again.stderr
    assert path.read_bytes() == before
    forced = run("keygen", "example.org", "--ed25519", "--force", home=home)
    assert forced.returncode == 0, forced.stderr
    assert path.read_bytes() != before
    assert (path.parent / "selector").read_text() == "ed25519\n"


@pytest.mark.parametrize(
    "args",
    [
        ["bad..example.org"],
        ["dash-.example.org"],
        ["localhost"],
        ["a/b.example.org"],
        ["example.org", "--selector", "../x"],
        ["example.org", "--selector", ".hidden"],
        ["example.org", "--selector", "a..b"],
        ["example.org", "--selector", "selector"],
        ["example.org", "--bits", "512"],
        ["example.org", "--user", "no-such-user-here"],
    ],
)
def test_keygen_refuses_what_cannot_be_a_domain_or_selector(tmp_path, args):
    home = scratch(tmp_path)
    proc = run("keygen", *args, home=home)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list((home / "control").iterdir()) == []


def test_keygen_without_qmail_is_one_line(tmp_path):
    proc = run("keygen", "example.org", "--ed25519", home=tmp_path / "none")
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "no directory" in proc.stderr


def test_keygen_takes_an_idn_and_capitals_as_the_signer_names_them(tmp_path):
    home = scratch(tmp_path)
    proc = run("keygen", "Bücher.Example.", "--ed25519", home=home)
    assert proc.returncode == 0, proc.stderr
    assert (home / "control" / "domainkeys" / "xn--bcher-kva.example" / "ed25519").is_file()
    assert "ed25519._domainkey.xn--bcher-kva.example. IN TXT" in proc.stdout


def test_keygen_gives_the_key_to_the_user_named(tmp_path):
    home = scratch(tmp_path)
    proc = run("keygen", "example.org", "--ed25519", "--user", "nobody", home=home)
    assert proc.returncode == 0, proc.stderr
    path = home / "control" / "domainkeys" / "example.org" / "ed25519"
    assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert "owner nobody" in proc.stdout


def test_a_new_selector_file_keeps_an_existing_default_key_signing(tmp_path):
    """With no selector file the signer signs with ``default``: listing only the new one
    would silently stop that."""
    home = scratch(tmp_path)
    where = home / "control" / "domainkeys" / "example.org"
    made = run("keygen", "example.org", "--ed25519", "--selector", "default", home=home)
    assert made.returncode == 0
    (where / "selector").unlink()
    proc = run("keygen", "example.org", "--ed25519", "--selector", "s2", home=home)
    assert proc.returncode == 0, proc.stderr
    assert (where / "selector").read_text() == "default\ns2\n"
    other = home / "control" / "domainkeys" / "example.net"
    assert run("keygen", "example.net", "--ed25519", "--selector", "s2", home=home).returncode == 0
    assert (other / "selector").read_text() == "s2\n"


def test_a_selector_file_without_a_final_newline_is_appended_to(tmp_path):
    home = scratch(tmp_path)
    where = home / "control" / "domainkeys" / "example.org"
    where.mkdir(parents=True)
    (where / "selector").write_text("old")
    assert run("keygen", "example.org", "--ed25519", home=home).returncode == 0
    assert (where / "selector").read_text() == "old\ned25519\n"


# --- check --------------------------------------------------------------------------------


def test_check_every_selector_matches(world):
    proc = world.check("match.keys.test")
    where = world.keys("match.keys.test")
    assert proc.stdout.splitlines() == [
        f"default._domainkey.match.keys.test: matches the key in {where / 'default'}",
        f"ed25519._domainkey.match.keys.test: matches the key in {where / 'ed25519'}",
    ]
    assert (proc.returncode, proc.stderr) == (0, "")


def test_check_one_selector(world):
    proc = world.check("MATCH.keys.test.", "--selector", "ed25519")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ed25519._domainkey.match.keys.test: matches the key in")
    assert len(proc.stdout.splitlines()) == 1


def test_check_a_different_key_is_named(world):
    proc = world.check("differs.keys.test")
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    path = world.keys("differs.keys.test") / "ed25519"
    assert line.startswith("ed25519._domainkey.differs.keys.test: publishes a different key (p=")
    assert line.endswith(f"): not the key in {path}")


def test_check_a_revoked_key(world):
    proc = world.check("revoked.keys.test")
    assert proc.returncode == 1
    assert proc.stdout == "ed25519._domainkey.revoked.keys.test: key revoked (empty p=)\n"


def test_check_a_key_that_is_not_published(world):
    proc = world.check("unpublished.keys.test")
    assert proc.returncode == 1
    assert proc.stdout == (
        "ed25519._domainkey.unpublished.keys.test: is not published (no TXT record)\n"
    )


def test_check_dns_that_does_not_answer(world):
    proc = world.check("match.keys.test", "--timeout", "1", dns=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(": DNS failed: " in line for line in lines)
    assert proc.stderr == ""


def test_check_uses_the_percent_keys_for_a_domain_without_its_own(world):
    proc = world.check("pct.keys.test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = world.home / "control" / "domainkeys" / "%" / "default"
    assert proc.stdout == f"default._domainkey.pct.keys.test: matches the key in {path}\n"
    assert "no keys of its own" in proc.stderr and "rcpthosts" in proc.stderr


def test_check_without_a_local_key(world):
    proc = world.check("match.keys.test", "--selector", "nothere")
    assert proc.returncode == 1
    path = world.keys("match.keys.test") / "nothere"
    assert proc.stdout == f"nothere._domainkey.match.keys.test: no key file {path}\n"
    home = scratch(world.home.parent / "empty")
    none = run("check", "example.org", home=home, dns=world.nsd.address)
    assert none.returncode == 1 and none.stdout == ""
    assert len(none.stderr.splitlines()) == 1 and "qqfilter dkim keygen" in none.stderr


def test_check_an_untrusted_or_unreadable_key_is_one_line(tmp_path, world):
    home = scratch(tmp_path)
    assert run("keygen", "example.org", "--ed25519", home=home).returncode == 0
    path = home / "control" / "domainkeys" / "example.org" / "ed25519"
    path.chmod(0o666)
    proc = run("check", "example.org", home=home, dns=world.nsd.address)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.startswith("ed25519._domainkey.example.org: ")
    assert "writable by users other than its owner" in proc.stdout
    path.chmod(0o600)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    proc = run("check", "example.org", home=home, dns=world.nsd.address)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "not an RSA or Ed25519" in proc.stdout


def test_check_trusts_the_key_of_the_account_named(tmp_path, world):
    home = scratch(tmp_path)
    made = run("keygen", "example.org", "--ed25519", "--user", "nobody", home=home)
    assert made.returncode == 0
    refused = run("check", "example.org", home=home, dns=world.nsd.address)
    assert refused.returncode == 1 and "--user NAME" in refused.stdout
    named = run("check", "example.org", "--user", "nobody", home=home, dns=world.nsd.address)
    assert named.returncode == 1  # trusted now; example.org is not in the test zone
    assert ": DNS failed: " in named.stdout


# --- the parts ----------------------------------------------------------------------------


def test_records_are_read_leniently():
    want = {"v": "DKIM1", "k": "rsa", "p": "AbCd"}
    assert judge(["V=DKIM1 ; P= Ab Cd"], want, "f")[0]  # no k=: rsa; spaces; capitals
    assert judge(["p=AbCd;K=RSA"], want, "f")[0]
    assert not judge(["v=DKIM1; k=ed25519; p=AbCd"], want, "f")[0]
    ok, said = judge(["v=DKIM1; p=AbCd", "v=DKIM1; p=Other"], want, "f")
    assert not ok and "2 key records" in said
    ok, said = judge(["some other text"], want, "f")
    assert not ok and "no DKIM key" in said


def test_a_long_record_is_cut_into_txt_strings():
    record = "v=DKIM1; k=rsa; p=" + "A" * 700
    lines = zone_record("s._domainkey.example.org.", record)
    strings = re.findall(r'"([^"]*)"', "\n".join(lines))
    assert "".join(strings) == record
    assert all(len(s) <= 255 for s in strings)
    assert lines[0].startswith("s._domainkey.example.org. IN TXT ( ")
    assert lines[-1].endswith(" )")
