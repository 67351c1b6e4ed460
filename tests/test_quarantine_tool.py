"""``qqfilter quarantine``, run as a person runs it, against stores written here.

The stores are laid out by hand (``keep``: ``DIR/new/<ID>/{message,meta.json}``, 0700 and
0600, as qqfilter.quarantine writes them; test_quarantine.py covers the writing), so that a
test can also plant what a hostile local user might: links out of the store, names that are
no ID, side files that are not JSON or not files. ``release`` hands its message to the
harness's stand-in qmail-queue (tests/fake_qmail_queue.py), which records what it got;
``digest --send`` to a stand-in qmail-inject that records its arguments and input.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, Harness, Outcome, envelope

ORIGINAL = (
    b"From: Someone <someone@example.org>\r\n"
    b"To: b@example.net\r\n"
    b"Subject: kept\r\n"
    b"Message-ID: <kept.1@example.org>\r\n"
    b"\r\n"
    b"the body \xe9\x00\xff\r\n"
)
DAY = 86400
COUNTER = iter(range(1, 1 << 30))


def keep(
    directory: Path,
    *,
    age: float = 60,
    category: str = "virus",
    sender: str = "someone@example.org",
    recipients: tuple[str, ...] = ("b@example.net",),
    message: bytes = ORIGINAL,
    reason: str = "virus found: Eicar-Signature",
    meta: dict | None = None,
) -> str:
    """A kept message, as the filter leaves it; its ID."""
    when = time.time() - age
    ident = f"{int(when)}.{next(COUNTER)}.{os.urandom(8).hex()}"
    for part in (directory, directory / "new", directory / "tmp"):
        part.mkdir(mode=0o700, exist_ok=True)
    entry = directory / "new" / ident
    entry.mkdir(mode=0o700)
    record = {
        "id": ident,
        "time": round(when, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        "sender": sender,
        "recipients": list(recipients),
        "connection": {
            "ip": "192.0.2.1",
            "host": "mail.example.org",
            "helo": "mail.example.org",
            "relayclient": False,
        },
        "verdict": {
            "action": "reject",
            "category": category,
            "check": "clamav",
            "tag": "Reject::VIRUS::Found",
            "reason": reason,
            "detail": "",
            "status": "5.7.1",
        },
        "size": len(message),
        "received": len(message),
        "pid": 4242,
    }
    if meta is not None:
        record = meta
    write(entry / "message", message)
    write(entry / "meta.json", json.dumps(record).encode())
    return ident


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@pytest.fixture
def store(qq: Harness) -> Path:
    directory = qq.tmp / "quarantine"
    directory.mkdir(mode=0o700)
    qq.env["QQF_QUARANTINE"] = str(directory)
    return directory


def run(qq: Harness, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``qqfilter quarantine ARGS``; stdout as bytes, stderr as text."""
    proc = subprocess.run(
        [QQFILTER, "quarantine", *args],
        capture_output=True,
        env={**qq.env, **(env or {})},
        timeout=30,
    )
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in proc.stderr
    return proc


def text(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode("ascii")


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The single line a failure says, having checked its status."""
    assert proc.returncode == code, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("qqfilter: ")
    return line


def queued(qq: Harness) -> Outcome:
    return Outcome(0, b"", qq.record)


def listed(qq: Harness, *args: str) -> list[dict]:
    proc = run(qq, "list", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in text(proc).splitlines()]


# --- list -------------------------------------------------------------------------------


def test_list_shows_one_line_per_entry_oldest_first(qq, store):
    old = keep(store, age=3 * DAY, category="attachment", reason="blocked: .exe")
    new = keep(store, sender="Spammer@Example.COM", recipients=("a@x.test", "b@x.test", "c@x"))
    proc = run(qq, "list")
    assert proc.returncode == 0, proc.stderr
    header, first, second = text(proc).splitlines()
    assert header.split()[:4] == ["TIME", "ID", "CATEGORY", "CHECK/TAG"]
    assert old in first and "attachment" in first and "blocked: .exe" in first
    assert new in second and "virus" in second and "clamav/Reject::VIRUS::Found" in second
    assert "<Spammer@Example.COM>" in second
    assert "<a@x.test>, <b@x.test> +1 more" in second


def test_list_filters_by_time_category_sender_and_recipient(qq, store):
    old = keep(store, age=40 * DAY, category="attachment")
    virus = keep(store, age=2 * 3600, sender="Spammer@Example.COM")
    recent = keep(store, age=600, category="spam", recipients=("x@y.test", "Boss@Corp.test"))
    ids = lambda *args: [record["id"] for record in listed(qq, *args)]  # noqa: E731
    assert ids() == [old, virus, recent]
    assert ids("--since", "30d") == [virus, recent]
    assert ids("--since", "90m") == [recent]
    assert ids("--since", "1h") == [recent]
    assert ids("--since", "2000-01-01") == [old, virus, recent]
    assert ids("--since", "2999-01-01T00:00:00") == []
    assert ids("--category", "attachment") == [old]
    assert ids("--category", "Attachment") == []  # exact
    assert ids("--sender", "spammer@example") == [virus]
    assert ids("--rcpt", "boss@CORP") == [recent]
    assert ids("--category", "virus", "--sender", "nobody") == []


def test_list_json_carries_every_field_of_the_side_file(qq, store):
    ident = keep(store)
    (record,) = listed(qq)
    meta = json.loads((store / "new" / ident / "meta.json").read_text())
    assert record == meta
    assert record["id"] == ident and record["verdict"]["category"] == "virus"


def test_list_csv_has_a_header_row(qq, store):
    ident = keep(store, recipients=("a@x.test", "b@x.test"))
    proc = run(qq, "list", "--csv")
    assert proc.returncode == 0, proc.stderr
    (row,) = list(csv.DictReader(io.StringIO(text(proc))))
    assert row["id"] == ident
    assert row["category"] == "virus" and row["tag"] == "Reject::VIRUS::Found"
    assert row["sender"] == "someone@example.org"
    assert row["recipients"] == "a@x.test b@x.test"
    assert row["ip"] == "192.0.2.1" and row["size"] == str(len(ORIGINAL))


def test_an_empty_or_missing_store_lists_nothing(qq, store):
    proc = run(qq, "list")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", "")
    proc = run(qq, "list", "--dir", str(qq.tmp / "not-yet"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", "")


def test_without_a_directory_or_with_a_bad_age_it_says_so_in_one_line(qq):
    assert "QQF_QUARANTINE" in one_line(run(qq, "list"), 2)
    proc = run(qq, "list", "--dir", str(qq.tmp), "--since", "yesterday")
    assert proc.returncode == 2 and "not an age" in proc.stderr


def test_what_a_sender_chose_cannot_drive_the_terminal(qq, store):
    keep(store, sender="evil\x1b[2J@example.org", reason="bad\nline")
    proc = run(qq, "list")
    assert b"\x1b" not in proc.stdout
    assert "evil\\x1b[2J@example.org" in text(proc)
    assert len(text(proc).splitlines()) == 2
    odd = keep(store, sender="\ud800@example.org", recipients=("\udcff@x.test",))
    for args in (["list"], ["list", "--csv"], ["show", odd], ["digest"], ["delete", odd]):
        proc = run(qq, *args)
        assert proc.returncode == 0, proc.stderr
        assert "\\ud800@example.org" in proc.stdout.decode("ascii") + proc.stderr


# --- show -------------------------------------------------------------------------------


def test_show_gives_the_verdict_envelope_connection_and_header_section(qq, store):
    ident = keep(store, recipients=("a@x.test", "b@x.test"))
    proc = run(qq, "show", ident)
    assert proc.returncode == 0, proc.stderr
    shown = text(proc)
    assert f"id:       {ident}" in shown
    assert "verdict:  reject by clamav: virus found: Eicar-Signature" in shown
    assert "from:     <someone@example.org>" in shown
    assert "to:       <a@x.test>\nto:       <b@x.test>" in shown
    assert "client:   192.0.2.1, host mail.example.org, helo mail.example.org" in shown
    assert "Subject: kept\nMessage-ID: <kept.1@example.org>\n" in shown
    assert "the body" not in shown


def test_show_raw_writes_the_message_exactly(qq, store):
    ident = keep(store)
    proc = run(qq, "show", ident, "--raw")
    assert (proc.returncode, proc.stdout) == (0, ORIGINAL)


def test_show_cuts_a_header_section_that_does_not_end(qq, store):
    ident = keep(store, message=b"X-Long: " + b"a" * 100_000 + b"\n")
    proc = run(qq, "show", ident)
    assert proc.returncode == 0, proc.stderr
    assert "goes on past 65536 bytes" in text(proc)


@pytest.mark.parametrize("name", ["../x", "..", "1.2.0123456789abcdef/../../x", "nope", ""])
def test_show_of_an_unknown_or_hostile_id_is_one_line(qq, store, name):
    keep(store)
    assert "no entry" in one_line(run(qq, "show", name), 1)


# --- release ----------------------------------------------------------------------------


def test_release_queues_the_original_bytes_to_the_original_envelope(qq, store):
    ident = keep(store, recipients=("a@x.test", "b@x.test"))
    proc = run(qq, "release", ident)
    assert proc.returncode == 0, proc.stderr
    got = queued(qq)
    assert got.envelope == envelope(b"someone@example.org", b"a@x.test", b"b@x.test")
    assert got.message.endswith(ORIGINAL)
    added = got.message[: -len(ORIGINAL)].decode("ascii")
    name, value = added.replace("\n\t", " ").rstrip("\n").split(": ", 1)
    assert name == "X-Qqfilter-Released" and "\n" not in value.rstrip()
    assert value.endswith(f"(id {ident})") and " by " in value
    assert not (store / "new" / ident).exists()
    (line,) = proc.stderr.splitlines()
    assert line.startswith("qqfilter: pid=")
    assert "verdict=released" in line and f"quarantine={ident}" in line
    assert "from=<someone@example.org>" in line and "msgid=<kept.1@example.org>" in line
    assert got.fds[:2] == [0, 1]


def test_release_to_other_addresses_and_in_the_json_log_format(qq, store):
    ident = keep(store, recipients=("a@x.test",))
    proc = run(qq, "release", ident, "--to", "admin@x.test", "--to", "c@x.test",
               env={"QQF_LOG": "json"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = queued(qq)
    assert got.envelope == envelope(b"someone@example.org", b"admin@x.test", b"c@x.test")
    assert got.message.endswith(ORIGINAL)
    logged = json.loads(proc.stderr)
    assert logged["verdict"] == "released" and logged["quarantine"] == ident
    assert logged["to"] == "<admin@x.test>,<c@x.test>"


def test_a_release_qmail_queue_refuses_keeps_the_entry(qq, store):
    ident = keep(store)
    line = one_line(run(qq, "release", ident, env={"FAKEQQ_EXIT": "71"}), 1)
    assert "exited 71: 451 mail server temporarily rejected message" in line
    assert (store / "new" / ident / "message").read_bytes() == ORIGINAL


def test_release_with_another_queue_program(qq, store):
    ident = keep(store)
    line = one_line(run(qq, "release", ident, "--qmail-queue", str(qq.tmp / "none")), 1)
    assert "cannot run" in line and ident in line
    assert (store / "new" / ident).is_dir() and not queued(qq).queued
    proc = run(qq, "release", ident, "--qmail-queue", str(qq.queue), env={"QQF_QMAILQUEUE": "/x"})
    assert proc.returncode == 0, proc.stderr
    assert queued(qq).queued


def test_recheck_refuses_what_the_checks_still_refuse(qq, store):
    ident = keep(store)
    line = one_line(run(qq, "release", ident, "--recheck", env={"QQF_MAXSIZE": "10"}), 1)
    assert "not released" in line and "size" in line
    assert not queued(qq).queued
    assert (store / "new" / ident).is_dir()


def test_recheck_releases_what_the_checks_accept(qq, store):
    ident = keep(store)
    proc = run(qq, "release", ident, "--recheck")
    assert proc.returncode == 0, proc.stderr
    assert queued(qq).message.endswith(ORIGINAL)
    assert "notes=rechecked" in proc.stderr


def test_release_of_an_unknown_id_is_one_line(qq, store):
    keep(store)
    assert "no entry" in one_line(run(qq, "release", "../x"), 1)
    assert not queued(qq).queued


# --- delete and expire ------------------------------------------------------------------


def test_delete_removes_entries_with_a_log_line_each(qq, store):
    first, second, third = keep(store), keep(store), keep(store)
    proc = run(qq, "delete", first, third)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(store / "new")) == [second]
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and all("verdict=deleted" in line for line in lines)
    assert f"quarantine={first}" in lines[0] and f"quarantine={third}" in lines[1]
    proc = run(qq, "delete", first, second)
    assert proc.returncode == 1
    assert "no entry" in proc.stderr and os.listdir(store / "new") == []


def test_expire_removes_old_entries_and_tmp_leftovers(qq, store):
    old = keep(store, age=40 * DAY)
    new = keep(store, age=DAY)
    stale = store / "tmp" / f"{int(time.time()) - 2 * DAY}.7.0123456789abcdef"
    fresh = store / "tmp" / f"{int(time.time()) - 60}.8.0123456789abcdef"
    for leftover in (stale, fresh):
        leftover.mkdir(mode=0o700)
        write(leftover / "message", b"half")
    proc = run(qq, "expire", "--older-than", "30d", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert text(proc).splitlines()[-1] == "would remove 1 entries and 1 leftovers in tmp/"
    assert (store / "new" / old).is_dir() and stale.is_dir()
    proc = run(qq, "expire", "--older-than", "30d")
    assert proc.returncode == 0, proc.stderr
    assert text(proc) == "removed 1 entries and 1 leftovers in tmp/\n"
    assert os.listdir(store / "new") == [new]
    assert not stale.exists() and fresh.is_dir()
    (line,) = proc.stderr.splitlines()
    assert "verdict=expired" in line and f"quarantine={old}" in line


def test_expire_goes_by_the_id_when_the_side_file_does_not_parse(qq, store):
    old = keep(store, age=40 * DAY)
    (store / "new" / old / "meta.json").write_bytes(b"{not json")
    proc = run(qq, "expire", "--older-than", "30d")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(store / "new") == []


# --- digest -----------------------------------------------------------------------------


def inject_program(qq: Harness, status: int = 0) -> Path:
    """A stand-in qmail-inject recording its argv and stdin in qq.record."""
    program = qq.tmp / "qmail-inject"
    program.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"where = {str(qq.record)!r}\n"
        "open(os.path.join(where, 'inject-argv'), 'w').write('\\0'.join(sys.argv[1:]))\n"
        "open(os.path.join(where, 'inject-mail'), 'wb').write(sys.stdin.buffer.read())\n"
        "open(os.path.join(where, 'inject-env'), 'w').write(' '.join(sorted(os.environ)))\n"
        f"sys.exit({status})\n"
    )
    program.chmod(0o755)
    return program


def test_digest_counts_per_category_then_lists_each_message(qq, store):
    keep(store, age=3 * DAY)
    virus = keep(store, age=3600)
    spam = keep(store, age=60, category="spam", sender="s@spam.test", reason="score 12")
    proc = run(qq, "digest")
    assert proc.returncode == 0, proc.stderr
    lines = text(proc).splitlines()
    assert lines[0].startswith("2 messages kept in ")
    assert "      1  spam" in lines and "      1  virus" in lines
    assert any(virus in line and "<someone@example.org> -> <b@example.net>" in line
               for line in lines)  # fmt: skip
    assert any(spam in line and "score 12" in line for line in lines)
    assert text(run(qq, "digest", "--since", "7d")).startswith("3 messages kept")


def test_digest_send_mails_it_through_qmail_inject_to_that_address_only(qq, store):
    (qq.tmp / "qmail" / "control").mkdir(parents=True)
    (qq.tmp / "qmail" / "control" / "me").write_text("mx.example.net\n")
    keep(store, sender="attacker@evil.test")
    keep(store, sender="other@evil.test", category="attachment")
    program = inject_program(qq)
    proc = run(qq, "digest", "--send", "admin@example.net", "--qmail-inject", str(program))
    assert (proc.returncode, proc.stdout) == (0, b""), proc.stderr
    argv = (qq.record / "inject-argv").read_text().split("\0")
    assert argv == ["-a", "admin@example.net"]
    mail = (qq.record / "inject-mail").read_bytes().decode("ascii")
    head, body = mail.split("\n\n", 1)
    fields = dict(line.split(": ", 1) for line in head.replace("\n\t", " ").splitlines())
    assert fields["From"] == "qqfilter@mx.example.net"
    assert fields["To"] == "admin@example.net"
    assert fields["Subject"].startswith("qqfilter quarantine: 2 messages kept since ")
    assert fields["Auto-Submitted"] == "auto-generated"
    assert "attacker@evil.test" in body and "attacker" not in head


def test_digest_send_exits_with_qmail_injects_status(qq, store):
    keep(store)
    program = inject_program(qq, status=111)
    proc = run(qq, "digest", "--send", "admin@example.net", "--qmail-inject", str(program))
    assert proc.returncode == 111
    assert "not sent" in proc.stderr
    line = one_line(run(qq, "digest", "--send=-oi", "--qmail-inject", str(program)), 2)
    assert "not an address" in line
    assert "QQF_NOTIFY" in one_line(run(qq, "digest", "--send"), 2)


def test_digest_send_without_an_address_goes_to_qqf_notify(qq, store):
    keep(store)
    program = inject_program(qq)
    env = {"QQF_NOTIFY": "notices@example.net", "QMAILQUEUE": "/bin/false"}
    proc = run(qq, "digest", "--send", "--qmail-inject", str(program), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (qq.record / "inject-argv").read_text().split("\0") == ["-a", "notices@example.net"]
    assert b"Precedence: bulk\n" in (qq.record / "inject-mail").read_bytes()
    assert "QMAILQUEUE" not in (qq.record / "inject-env").read_text().split()


# --- a hostile store --------------------------------------------------------------------


@pytest.fixture
def hostile(qq: Harness, store: Path) -> dict[str, object]:
    """A store where a local user planted links and junk beside one good entry; the files
    outside it they point at."""
    good = keep(store)
    outside = qq.tmp / "outside"
    outside.mkdir()
    write(outside / "message", b"Subject: outside\n\nsecret\n")
    write(outside / "meta.json", json.dumps({"sender": "x", "recipients": ["y@z"]}).encode())
    secret = qq.tmp / "secret"
    write(secret, b"Subject: secret\n\nsecret\n")
    now = int(time.time()) - 60
    linked_dir = f"{now}.1.{'a' * 16}"
    os.symlink(outside, store / "new" / linked_dir)
    linked_message = keep(store)
    (store / "new" / linked_message / "message").unlink()
    os.symlink("/etc/passwd", store / "new" / linked_message / "message")
    linked_secret = keep(store)
    (store / "new" / linked_secret / "message").unlink()
    os.symlink(secret, store / "new" / linked_secret / "message")
    linked_meta = keep(store)
    (store / "new" / linked_meta / "meta.json").unlink()
    os.symlink(outside / "meta.json", store / "new" / linked_meta / "meta.json")
    broken = keep(store, meta={"time": "soon", "recipients": 5, "verdict": "x", "sender": 1})
    not_json = keep(store)
    (store / "new" / not_json / "meta.json").write_bytes(b"\xff{")
    fifo = keep(store)
    (store / "new" / fifo / "meta.json").unlink()
    os.mkfifo(store / "new" / fifo / "meta.json")
    (store / "new" / "not-an-id").mkdir()
    return {
        "good": good,
        "outside": outside,
        "secret": secret,
        "linked_dir": linked_dir,
        "linked_message": linked_message,
        "linked_secret": linked_secret,
        "linked_meta": linked_meta,
        "broken": broken,
        "not_json": not_json,
        "fifo": fifo,
    }


def test_list_skips_what_is_no_entry(qq, hostile):
    ids = [record["id"] for record in listed(qq)]
    expected = {"good", "linked_message", "linked_secret", "broken"}
    assert sorted(ids) == sorted(str(hostile[name]) for name in expected)
    for args in ([], ["--csv"], ["--category", "virus"], ["--sender", "x"]):
        assert run(qq, "list", *args).returncode == 0
    assert run(qq, "digest").returncode == 0


def test_show_and_release_never_read_through_a_link(qq, hostile):
    for name in ("linked_message", "linked_secret"):
        ident = str(hostile[name])
        for args in (["show", ident], ["show", ident, "--raw"]):
            proc = run(qq, *args)
            assert proc.returncode == 1 and b"secret" not in proc.stdout
            assert b"root:" not in proc.stdout
        assert "not released" in one_line(run(qq, "release", ident), 1)
    for name in ("linked_dir", "linked_meta", "not_json", "fifo"):
        assert "no entry" in one_line(run(qq, "show", str(hostile[name])), 1)
        assert "no entry" in one_line(run(qq, "release", str(hostile[name])), 1)
    assert "give --to" in one_line(run(qq, "release", str(hostile["broken"])), 1)
    assert run(qq, "show", str(hostile["broken"])).returncode == 0
    assert not queued(qq).queued


def test_delete_and_expire_remove_links_never_what_they_point_at(qq, hostile, store):
    proc = run(qq, "delete", str(hostile["linked_secret"]), str(hostile["linked_dir"]))
    assert proc.returncode == 1 and "no entry" in proc.stderr
    assert not (store / "new" / str(hostile["linked_secret"])).exists()
    assert Path(str(hostile["secret"])).read_bytes() == b"Subject: secret\n\nsecret\n"
    proc = run(qq, "expire", "--older-than", "0s")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(store / "new")) == sorted([str(hostile["linked_dir"]), "not-an-id"])
    outside = Path(str(hostile["outside"]))
    assert sorted(os.listdir(outside)) == ["message", "meta.json"]
    assert Path("/etc/passwd").exists()


def test_a_store_whose_new_is_a_link_is_refused(qq, tmp_path):
    directory = tmp_path / "linked"
    directory.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    keep(elsewhere)
    os.symlink(elsewhere / "new", directory / "new")
    for args in (["list"], ["expire", "--older-than", "0s"], ["digest"]):
        line = one_line(run(qq, *args, "--dir", str(directory)), 1)
        assert "symbolic link" in line
    assert len(os.listdir(elsewhere / "new")) == 1
