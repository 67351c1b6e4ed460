"""The quarantine store on the queue path: which refusals are kept, what is kept, and that a
copy that cannot be made never changes the answer (qqfilter/quarantine.py). The command
that reads the store is tested in test_quarantine_tool.py."""

import json
import resource
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from clamav import EICAR, TEXT_PART, attachment, mime
from conftest import QQFILTER, assert_clean_failure, envelope

PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8" + b"\x00" * 43
ENV = envelope(b"alice@example.com", b"bob@example.org", b"carol@example.org")


def exe_message(subject: bytes = b"invoice") -> bytes:
    return mime(TEXT_PART, attachment(PE, b"invoice.exe"), subject=subject)


@pytest.fixture
def store(qq):
    """QQF_QUARANTINE for the harness: ``kept()`` lists (meta, message bytes)."""
    where = qq.tmp / "quarantine"
    qq.env["QQF_QUARANTINE"] = str(where)

    def kept() -> list[tuple[dict, bytes]]:
        new = where / "new"
        if not new.exists():
            return []
        found = []
        for entry in sorted(new.iterdir()):
            meta = json.loads((entry / "meta.json").read_text())
            found.append((meta, (entry / "message").read_bytes()))
        return found

    kept.where = where
    return kept


@pytest.mark.both_modes
def test_a_refused_attachment_is_kept_byte_identical_with_envelope_and_verdict(qq, store):
    message = exe_message()
    out = qq.submit(message, ENV)
    assert_clean_failure(out, 31)
    ((meta, kept),) = store()
    assert kept == message
    assert out.field("quarantine") == meta["id"]
    assert meta["sender"] == "alice@example.com"
    assert meta["recipients"] == ["bob@example.org", "carol@example.org"]
    assert meta["connection"] == {
        "ip": "192.0.2.1",
        "host": "",
        "helo": "",
        "relayclient": False,
    }
    verdict = meta["verdict"]
    assert (verdict["action"], verdict["category"], verdict["check"]) == (
        "reject",
        "attachment",
        "mime",
    )
    assert verdict["tag"] == out.field("tag") and verdict["reason"] == out.field("reason")
    assert meta["size"] == meta["received"] == len(message)
    where = store.where
    for path in (where, where / "new", where / "tmp", where / "new" / meta["id"]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("message", "meta.json"):
        assert stat.S_IMODE((where / "new" / meta["id"] / name).stat().st_mode) == 0o600
    assert list((where / "tmp").iterdir()) == []


def test_a_virus_is_kept_and_a_policy_refusal_only_when_asked(qq, store, clamd_server):
    virus = mime(TEXT_PART, attachment(EICAR, b"eicar.txt"))
    out = qq.submit(virus, ENV, env={"QQF_CLAMD": clamd_server.unix})
    assert out.returncode == 31, out.stderr
    assert [meta["verdict"]["category"] for meta, _ in store()] == ["virus"]
    large = b"Subject: big\n\n" + b"x" * 200 + b"\n"
    out = qq.submit(large, ENV, env={"QQF_MAXSIZE": "100"})
    assert_clean_failure(out, 31)
    assert out.field("quarantine") is None
    assert len(store()) == 1
    out = qq.submit(large, ENV, env={"QQF_MAXSIZE": "100", "QQF_QUARANTINECATS": "policy"})
    assert_clean_failure(out, 31)
    ((meta, kept),) = [item for item in store() if item[0]["verdict"]["category"] == "policy"]
    assert meta["received"] == len(large) and meta["size"] < len(large)  # cut when refused
    assert kept == large[: meta["size"]]


def test_categories_not_listed_are_not_kept(qq, store):
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINECATS": "virus,spam"})
    assert_clean_failure(out, 31)
    assert store() == [] and out.field("quarantine") is None


def test_a_dropped_category_is_told_250_and_kept_instead_of_lost(qq, store):
    message = exe_message()
    out = qq.submit(message, ENV, env={"QQF_DROP": "attachment"})
    assert out.returncode == 0, out.stderr
    assert not out.queued
    assert out.field("verdict") == "drop"
    ((meta, kept),) = store()
    assert kept == message and meta["verdict"]["action"] == "drop"


def test_accepted_mail_and_no_setting_keep_nothing(qq, store):
    out = qq.submit(b"Subject: fine\n\nhello\n", ENV)
    assert out.returncode == 0 and store() == []
    del qq.env["QQF_QUARANTINE"]
    out = qq.submit(exe_message(), ENV)
    assert_clean_failure(out, 31)
    assert not store.where.exists()


def test_a_full_disk_keeps_the_refusal_and_logs_the_failure(qq, store):
    message = exe_message()
    limit = len(message) + 64  # the spool and the copy fit; the side file (40 recipients) not
    many = envelope(b"alice@example.com", *(b"r%02d@example.org" % n for n in range(40)))

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = qq.submit(message, many, preexec_fn=small_files)
    assert_clean_failure(out, 31)
    assert out.field("quarantine") == "failed: File too large"
    assert store() == []
    assert list((store.where / "tmp").iterdir()) == []


def test_an_unusable_directory_keeps_the_refusal_and_logs_why(qq, store, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINE": str(a_file / "quarantine")})
    assert_clean_failure(out, 31)
    assert out.field("quarantine").startswith("failed: ")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINE": str(shared)})
    assert_clean_failure(out, 31)
    assert out.field("quarantine") == (
        f"failed: {shared} is writable by users other than its owner (chmod go-w)"
    )
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINE": str(link)})
    assert out.field("quarantine") == f"failed: {link} is not a directory"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_fifty_concurrent_refusals_are_each_kept_exactly_once(qq, store):
    messages = [exe_message(f"invoice {n}".encode()) for n in range(50)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda m: qq.submit(m, ENV), messages))
    assert all(out.returncode == 31 for out in outs)
    kept = store()
    assert sorted(message for _, message in kept) == sorted(messages)
    assert len({meta["id"] for meta, _ in kept}) == 50
    assert sorted(out.field("quarantine") for out in outs) == sorted(m["id"] for m, _ in kept)


def test_an_invalid_quarantine_setting_is_55(qq):
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINE": "relative/dir"})
    assert_clean_failure(out, 55)
    out = qq.submit(exe_message(), ENV, env={"QQF_QUARANTINECATS": "virus,junk"})
    assert_clean_failure(out, 55)


def test_replay_and_qqfilter_test_never_write_to_it(tmp_path):
    where = tmp_path / "quarantine"
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.exe").write_bytes(exe_message())
    env = {
        "PATH": "/usr/bin:/bin",
        "QQF_CONFIG": "/dev/null",
        "QQF_QUARANTINE": str(where),
        "QQF_SPOOLDIR": str(tmp_path),
    }
    out = subprocess.run(
        [QQFILTER, "replay", str(maildir)], capture_output=True, env=env, timeout=120
    )
    assert out.returncode in (0, 1), out.stderr
    assert b"reject" in out.stdout + out.stderr
    out = subprocess.run(
        [QQFILTER, "test", str(maildir / "new" / "1.exe")],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert b"reject" in out.stdout + out.stderr or out.returncode != 0
    assert not where.exists()


@pytest.fixture
def inject(qq):
    """A stand-in qmail-inject in the harness's qmail home, recording its argv, environment
    and input; ``seen()`` waits for them."""
    bin_dir = qq.tmp / "qmail" / "bin"
    bin_dir.mkdir(parents=True)
    record = qq.tmp / "injected"
    program = bin_dir / "qmail-inject"
    program.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "data = sys.stdin.buffer.read().decode('latin-1')\n"
        f"with open({str(record)!r} + '.part', 'w') as out:\n"
        "    json.dump({'argv': sys.argv[1:], 'env': dict(os.environ), 'input': data}, out)\n"
        f"os.rename({str(record)!r} + '.part', {str(record)!r})\n"
    )
    program.chmod(0o755)

    def seen(wait: float = 10) -> dict | None:
        give_up = time.monotonic() + wait
        while time.monotonic() < give_up:
            if record.exists():
                return json.loads(record.read_text())
            time.sleep(0.05)
        return None

    return seen


@pytest.mark.both_modes
def test_the_administrator_is_told_of_each_kept_message_never_the_sender(qq, store, inject):
    hostile = envelope(b"spoofed@example.com\nBcc: victim@example.net", b"bob@example.org")
    out = qq.submit(exe_message(), hostile, env={"QQF_NOTIFY": "postmaster@example.org"})
    assert_clean_failure(out, 31)
    ((meta, _),) = store()
    assert out.field("quarantine") == meta["id"]
    told = inject()
    assert told is not None
    assert told["argv"] == ["-a", "postmaster@example.org"]
    assert "QMAILQUEUE" not in told["env"] and "TCPREMOTEIP" not in told["env"]
    head, _, body = told["input"].partition("\n\n")
    names = [line.split(":")[0] for line in head.split("\n") if not line.startswith("\t")]
    assert names == ["To", "Subject", "Auto-Submitted", "Precedence"]
    assert "Bcc" not in names and "victim" not in head.split("Subject:")[0]
    assert f"qqfilter quarantine release {meta['id']}" in body
    assert "refused:  attachment by mime" in body


def test_no_notice_per_message_with_a_daily_digest(qq, store, inject):
    env = {"QQF_NOTIFY": "postmaster@example.org", "QQF_NOTIFYDIGEST": "daily"}
    out = qq.submit(exe_message(), ENV, env=env)
    assert_clean_failure(out, 31)
    assert len(store()) == 1 and inject(wait=1) is None


def test_a_notice_that_cannot_go_is_noted_and_changes_nothing(qq, store):
    out = qq.submit(exe_message(), ENV, env={"QQF_NOTIFY": "postmaster@example.org"})
    assert_clean_failure(out, 31)
    ((meta, _),) = store()
    assert out.field("quarantine").startswith(f"{meta['id']} (no notice: ")
    out = qq.submit(exe_message(), ENV, env={"QQF_NOTIFY": "-fattacker@example.net"})
    assert_clean_failure(out, 55)
