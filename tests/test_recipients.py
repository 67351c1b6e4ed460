"""Recipient validation against a qmail home in qmail's own formats (fixtures/qmailhome)."""

import shutil
import subprocess
import time
from pathlib import Path

import cdblib
import pytest
from conftest import FIXTURES, QQFILTER, assert_clean_failure, envelope

# qmail's delivery logic is read the same way in both modes: the tests marked both_modes also
# run through qqfilter serve (its caches of control files and users/cdb, the client's words).

MESSAGE = b"Subject: hello\n\nhi\n"


def qmail_newu(home: Path) -> None:
    """users/cdb from users/assign, keys and data exactly as qmail-newu writes them."""
    wildchars = b""
    with open(home / "users" / "cdb", "wb") as stream, cdblib.Writer(stream) as writer:
        for line in (home / "users" / "assign").read_bytes().split(b"\n"):
            if not line or line.startswith(b"."):
                break
            colon = line.index(b":")
            key = b"!" + line[1:colon].lower()
            if line.startswith(b"+"):
                if colon >= 2 and line[colon - 1 : colon] not in wildchars:
                    wildchars += line[colon - 1 : colon]
            else:
                key += b"\0"
            data = line[colon + 1 :].split(b":")[:6]
            writer.put(key, b"\0".join(data))
        writer.put(b"", wildchars)


@pytest.fixture(params=["cdb", "assign"])
def home(qq, request) -> Path:
    """The fixture qmail home as qq's QQF_QMAILHOME, with users/cdb built (or not)."""
    target = qq.tmp / "qmail"
    shutil.copytree(FIXTURES / "qmailhome", target, copy_function=shutil.copyfile)
    assign = target / "users" / "assign"
    assign.write_text(assign.read_text().replace("@HOME@", str(target)))
    if request.param == "cdb":
        qmail_newu(target)
        assign.write_text("+:nobody:1:1:/nonexistent:-::\n.\n")  # stale: qmail reads the cdb
    return target


def submit(qq, *recipients: bytes, sender: bytes = b"alice@example.com", **env: str):
    settings = {"QQF_RCPTCHECK": "any", **env}
    return qq.submit(MESSAGE, envelope(sender, *recipients), env=settings)


@pytest.mark.parametrize(
    "address",
    [
        b"joe@example.org",  # a users/assign = entry
        b"JOE@Example.ORG",  # case does not matter
        b"joe-news@example.org",  # an extension with its .qmail file
        b"postmaster@example.org",  # the alias user's .qmail-postmaster
        b"team-alpha@mx.example.org",  # the alias user's .qmail-team-default
        b"sales@virtual.example",  # a virtual domain's user's .qmail-sales
        b"support-eu@virtual.example",  # its .qmail-support-default
        b"anything@lists.example",  # a virtual domain with a .qmail-default
        b"ceo@partner.example",  # a single virtual address
        b"cfo@partner.example",  # only ceo@ is routed here: the rest of the domain is not ours
        b"someone@backup.example",  # relayed here, judged elsewhere: not refused
        b"someone@elsewhere.example",  # not our domain at all
    ],
)
def test_existing_or_unjudgeable_recipients_pass(qq, home, address):
    out = submit(qq, address)
    assert out.returncode == 0, out.stderr
    assert out.queued


@pytest.mark.both_modes
@pytest.mark.parametrize(
    "address",
    [
        b"ghost@example.org",  # no user, no alias .qmail
        b"joe-nothing@example.org",  # an extension without a .qmail file
        b"nobody@virtual.example",  # a virtual user's extension without one
    ],
)
def test_unknown_recipients_are_refused(qq, home, address):
    out = submit(qq, address)
    assert_clean_failure(out, 31)
    assert out.field("check") == "recipients"
    assert out.field("tag") == "Reject::RCPT::Failed_Rcptto"
    assert out.field("reason") == "no mailbox here by that name"
    assert out.field("detail") == f"1 of 1 recipients unknown: <{address.decode()}>"


@pytest.mark.both_modes
def test_the_client_reads_qmails_own_words(qq, home):
    out, reply = qq.submit_for_reply(
        MESSAGE, envelope(b"a@example.com", b"ghost@example.org"), {"QQF_RCPTCHECK": "any"}
    )
    assert out.returncode == 82
    assert reply == b"Dno mailbox here by that name (#5.1.1)"


def test_any_and_all(qq, home):
    mixed = (b"joe@example.org", b"ghost@example.org")
    assert_clean_failure(submit(qq, *mixed), 31)
    out = submit(qq, *mixed, QQF_RCPTCHECK="all")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "recipients: unknown, not refused (all): <ghost@example.org>"
    out = submit(qq, b"ghost@example.org", b"nobody@virtual.example", QQF_RCPTCHECK="all")
    assert_clean_failure(out, 31)
    assert out.field("detail").startswith("2 of 2 recipients unknown")
    assert submit(qq, b"ghost@example.org", QQF_RCPTCHECK="off").returncode == 0


def test_bounces(qq, home):
    out = submit(qq, b"joe@example.org", b"postmaster@example.org", sender=b"")
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::RCPT::Toomany_Rcptto"
    assert out.field("reason") == "a bounce goes to one recipient, not 2"
    assert_clean_failure(submit(qq, b"ghost@example.org", sender=b""), 31)
    assert submit(qq, b"joe@example.org", sender=b"").returncode == 0
    two = submit(qq, b"joe@example.org", b"postmaster@example.org", sender=b"", QQF_BOUNCERCPTS="0")
    assert two.returncode == 0
    off = submit(qq, b"a@example.org", b"b@example.org", sender=b"", QQF_RCPTCHECK="off")
    assert_clean_failure(off, 31)  # the bounce rule stands on its own


def test_a_list_file_judges_the_domains_it_names(qq, home, tmp_path):
    listing = tmp_path / "recipients"
    listing.write_text(
        "# mailboxes on the inside server\nalice@listed.example\n@catchall.example\n"
    )
    env = {"QQF_RCPTLIST": str(listing)}
    assert submit(qq, b"alice@listed.example", **env).returncode == 0
    assert submit(qq, b"Anyone@catchall.example", **env).returncode == 0
    assert_clean_failure(submit(qq, b"bob@listed.example", **env), 31)
    assert submit(qq, b"someone@backup.example", **env).returncode == 0
    assert_clean_failure(submit(qq, b"x@example.org", QQF_RCPTLIST=str(tmp_path / "no")), 55)


def test_a_queue_of_backscatter_is_refused_on_replay(qq, home, tmp_path):
    from test_replay import make_queue

    bounce = (
        b"Received: (qmail 1 invoked from network); 24 Nov 2026 10:00:01 -0000\n"
        b"Received: from unknown (HELO mx.victim.example) (198.51.100.7)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
        b"From: MAILER-DAEMON@victim.example\nSubject: failure notice\n\nbounced\n"
    )
    users = [b"ghost", b"nobody-here", b"sales-old", b"x1", b"x2", b"x3"]
    queue = make_queue(tmp_path, [(bounce, b"", [user + b"@example.org"]) for user in users])
    out = subprocess.run(
        [QQFILTER, "replay", "--json", str(queue)],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "QQF_CONFIG": "/dev/null",
            "QQF_QMAILHOME": str(home),
            "QQF_RCPTCHECK": "any",
        },
    )
    import json

    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["tag"] for line in lines[:-1]] == ["Reject::RCPT::Failed_Rcptto"] * len(users)
    assert lines[-1]["summary"]["tags"] == {"Reject::RCPT::Failed_Rcptto": len(users)}
    assert Path(queue).is_dir()


def test_many_recipients_with_long_local_parts_are_quick(qq, home):
    """1,000 recipients of 489 dashes each: not judged (over MAX_BREAKS), at once; 1,000 of
    100 dashes (the most that is judged): judged, each lookup made once per message."""
    long = [f"{i}{'-a' * 489}@example.org".encode() for i in range(1000)]
    started = time.monotonic()
    out = submit(qq, *long)
    assert time.monotonic() - started < 2
    assert out.returncode == 0, out.stderr
    judged = [f"ghost{'-a' * 99}-{i}@example.org".encode() for i in range(1000)]
    started = time.monotonic()
    out = submit(qq, *judged)
    assert time.monotonic() - started < 2
    assert_clean_failure(out, 31)
    assert out.field("detail").startswith("1000 of 1000 recipients unknown")


def users_cdb(home: Path, filler: int = 0) -> Path:
    """The fixture's users/cdb again, after ``filler`` MB of other users."""
    path = home / "users" / "cdb"
    entries = list(cdblib.Reader(path.read_bytes()).iteritems())
    pad = b"p" * 2000
    with open(path, "wb") as stream, cdblib.Writer(stream) as writer:
        for i in range(filler * 500):
            writer.put(b"!filler%06d\0" % i, b"\0".join([pad, b"9", b"9", b"/x", b"", b""]))
        for key, value in entries:
            writer.put(key, value)
    return path


@pytest.mark.parametrize("home", ["cdb"], indirect=True)
def test_a_large_users_cdb_is_read_by_lookup(qq, home):
    """A 60 MB users/cdb costs a few reads, not its size in memory (72 MB peak before)."""
    path = users_cdb(home, filler=60)
    assert path.stat().st_size > 60_000_000
    out = qq.submit(
        MESSAGE,
        envelope(b"a@example.com", b"joe-news@example.org"),
        env={"QQF_RCPTCHECK": "any"},
        measure=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.peak_kib < 64 * 1024, out.peak_kib
    out = qq.submit(
        MESSAGE,
        envelope(b"a@example.com", b"joe-nothing@example.org"),
        env={"QQF_RCPTCHECK": "any"},
    )
    assert_clean_failure(out, 31)


@pytest.mark.both_modes
@pytest.mark.parametrize("home", ["cdb"], indirect=True)
@pytest.mark.parametrize("cut", ["empty", "in the header", "in the tables", "garbage"])
def test_a_damaged_users_cdb_is_a_configuration_error(qq, home, cut):
    """As qmail-lspawn defers deliveries for it: 55 and one log line, not 81."""
    path = home / "users" / "cdb"
    data = path.read_bytes()
    damaged = {
        "empty": b"",
        "in the header": data[:1000],
        "in the tables": data[:-9],
        "garbage": b"\xff" * len(data),
    }[cut]
    path.write_bytes(damaged)
    out = submit(qq, b"joe-news@example.org")
    assert_clean_failure(out, 55)
    assert out.field("reason").startswith(f"users/cdb: {path} "), out.stderr
