"""SPF through a real DNS server (nsd on loopback, fixtures/zones/spf.test.zone)."""

import re
import sys
import time

import pytest
from clamav import free_port
from conftest import added_headers, assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

CLIENT = "192.0.2.1"
RECEIVER = "mx.example.org"
BODY = b"From: someone\nSubject: spf\n\nhello\n"


def smtpd_message(helo: bytes = b"mail.example.com", ip: bytes = CLIENT.encode()) -> bytes:
    """A message as qmail-smtpd hands it on: its own Received line on top."""
    return (
        b"Received: from unknown (HELO " + helo + b") (" + ip + b")\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n" + BODY
    )


@pytest.fixture
def spf(qq, nsd_server):
    """The harness with control/me and the test DNS server; ``run`` submits at a level."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "me").write_text(RECEIVER + "\n")

    def run(sender: bytes, level: int | None = 1, *, message: bytes | None = None, **env: str):
        """``level`` None leaves SPF unset."""
        settings = {"QQF_DNS": nsd_server.address, "TCPREMOTEIP": CLIENT}
        if level is not None:
            settings["SPF"] = str(level)
        settings.update(env)
        return qq.submit(
            message if message is not None else smtpd_message(),
            envelope(sender, b"bob@example.org"),
            env=settings,
        )

    run.control = control
    return run


def dead_dns() -> str:
    return f"127.0.0.1:{free_port()}"


def test_a_field_claiming_our_authserv_id_is_removed(spf):
    forged = smtpd_message().replace(
        b"From: someone", b"Authentication-Results: mx.example.org; spf=pass\nFrom: someone"
    )
    out = spf(b"alice@fail.spf.test", 1, message=forged)
    assert out.returncode == 0, out.stderr
    assert out.message.count(b"Authentication-Results:") == 1
    assert b"spf=fail smtp.mailfrom=fail.spf.test" in out.message


CASES = {
    "pass": (b"alice@pass.spf.test", {}),
    "fail": (b"alice@fail.spf.test", {}),
    "softfail": (b"alice@softfail.spf.test", {}),
    "neutral": (b"alice@neutral.spf.test", {}),
    "none": (b"alice@none.spf.test", {}),
    "permerror": (b"alice@syntax.spf.test", {}),
    "temperror": (b"alice@pass.spf.test", {"QQF_DNS": "dead", "QQF_SPFTIMEOUT": "0.3"}),
}

COMMENTS = {
    "pass": "domain of alice@pass.spf.test designates 192.0.2.1 as permitted sender",
    "fail": "domain of alice@fail.spf.test does not designate 192.0.2.1 as permitted sender",
    "softfail": "domain of transitioning alice@softfail.spf.test does not designate 192.0.2.1 "
    "as permitted sender",
    "neutral": "192.0.2.1 is neither permitted nor denied by domain of alice@neutral.spf.test",
    "none": "none.spf.test does not designate permitted sender hosts",
    "permerror": "permanent error in processing domain of syntax.spf.test",
    "temperror": "temporary error in processing domain of pass.spf.test",
}
EXTRA = {
    "pass": 'mechanism="ip4:192.0.2.0/24"; ',
    "fail": 'mechanism="-all"; ',
    "softfail": 'mechanism="~all"; ',
    "neutral": 'mechanism="?all"; ',
    "none": "",
    "permerror": 'problem="Unknown mechanism found"; ',
    "temperror": 'problem="DNS timeout looking up TXT pass.spf.test"; ',
}


def run_case(spf, result: str, level: int):
    sender, env = CASES[result]
    env = {key: dead_dns() if value == "dead" else value for key, value in env.items()}
    return spf(sender, level, **env)


@pytest.mark.parametrize("result", list(CASES))
def test_each_result_is_stamped_in_both_headers(spf, result):
    out = run_case(spf, result, 1)
    assert out.returncode == 0, out.stderr
    fields = added_headers(out, smtpd_message())
    assert list(fields) == ["Received-SPF", "Authentication-Results"]
    sender = CASES[result][0].decode()
    assert fields["Received-SPF"] == (
        f"{result} ({RECEIVER}: {COMMENTS[result]}) client-ip=192.0.2.1; "
        f'envelope-from="{sender}"; helo=mail.example.com; {EXTRA[result]}'
        f"receiver={RECEIVER}; identity=mailfrom"
    )
    domain = sender.partition("@")[2]
    assert fields["Authentication-Results"] == f"{RECEIVER}; spf={result} smtp.mailfrom={domain}"
    assert out.field("notes").startswith(f"spf: {result}")


OUTCOME = {  # result -> the outcome at levels 0..6: a accept, r reject 31, t tempfail 71
    "pass": "aaaaaaa",
    "fail": "aaarrrr",
    "softfail": "aaaarrr",
    "neutral": "aaaaarr",
    "none": "aaaaaar",
    "permerror": "aattttr",
    "temperror": "aattttt",
}


@pytest.fixture(scope="module")
def dry(tmp_path_factory, nsd_server):
    """The pipeline in this process (tools/dryrun: the real spool, envelope parser, checks,
    policy and verdict -> code, real DNS; only the process start is saved), for the level
    table's 49 cases; each result is evaluated end to end above."""
    from qqfilter.message import Connection
    from qqfilter.settings import load
    from qqfilter.tools import dryrun

    home = tmp_path_factory.mktemp("dry")
    (home / "control").mkdir()
    (home / "control" / "me").write_text(RECEIVER + "\n")
    (home / "spool").mkdir()
    (home / "empty.toml").write_text("")

    def run(sender: bytes, level: int, **env: str):
        environ = {
            "QQF_CONFIG": str(home / "empty.toml"),
            "QQF_QMAILHOME": str(home),
            "QQF_SPOOLDIR": str(home / "spool"),
            "QQF_DNS": nsd_server.address,
            "TCPREMOTEIP": CLIENT,
            "SPF": str(level),
            **env,
        }
        settings, errors = load(environ)
        assert not errors, errors
        message = home / "message"
        message.write_bytes(smtpd_message())
        with open(message, "rb") as source:
            raw = envelope(sender, b"bob@example.org")
            return dryrun.run(source.fileno(), raw, Connection.from_environ(environ), settings)

    return run


@pytest.mark.parametrize("level", range(7))
@pytest.mark.parametrize("result", list(CASES))
@pytest.mark.one_shot  # in this process: see the fixture
def test_each_level_against_each_result(dry, result, level):
    sender, env = CASES[result]
    env = {key: dead_dns() if value == "dead" else value for key, value in env.items()}
    out = dry(sender, level, **env)
    expected = OUTCOME[result][level]
    assert out.code == {"a": 0, "r": 31, "t": 71}[expected], out.reply
    if expected == "a":
        assert bool(out.headers) == (level > 0)
        assert [note.startswith(f"spf: {result}") for note in out.verdict.notes] == (
            [True] if level else []
        )
    else:
        assert out.verdict.check == "spf"
        assert out.verdict.action == ("reject" if expected == "r" else "tempfail")
        if expected == "r":
            assert out.verdict.tag == "Reject::SPF::Fail"
            assert out.verdict.reason.startswith(f"SPF {result}: ")


@pytest.mark.parametrize(
    ("sender", "ip", "result", "mechanism"),
    [
        (b"a@include.spf.test", "192.0.2.1", "pass", "include:pass.spf.test"),
        (b"a@redirect.spf.test", "192.0.2.1", "fail", "-all"),
        (b"a@exists.spf.test", "192.0.2.7", "pass", "exists:%{i}._ip.spf.test"),
        (b"a@exists.spf.test", "192.0.2.8", "fail", "-all"),
        (b"alice@macros.spf.test", "192.0.2.1", "pass", "exists:%{l}._users.%{d}"),
        (b"bob@macros.spf.test", "192.0.2.1", "fail", "-all"),
        (b"a@cidr.spf.test", "192.0.2.99", "pass", "a:hostnet.spf.test/24"),
        (b"a@cidr.spf.test", "198.51.100.20", "pass", "mx/28"),
        (b"a@cidr.spf.test", "198.51.100.40", "fail", "-all"),
        (b"a@ip6.spf.test", "2001:db8:25::9", "pass", "ip6:2001:db8:25::/48"),
        (b"a@ip6.spf.test", "2001:db8:64::99", "pass", "a//64"),
        (b"a@ip6.spf.test", "2001:db8:65::1", "fail", "-all"),
        (b"a@pass.spf.test", "::ffff:192.0.2.1", "pass", "ip4:192.0.2.0/24"),
        (b"a@toomany.spf.test", "192.0.2.1", "permerror", ""),
        (b"a@void.spf.test", "192.0.2.1", "permerror", ""),
    ],
)
@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_mechanisms_and_modifiers(spf, sender, ip, result, mechanism):
    out = spf(sender, 1, TCPREMOTEIP=ip)
    assert out.returncode == 0, out.stderr
    received = added_headers(out, smtpd_message())["Received-SPF"]
    assert received.startswith(f"{result} (")
    if mechanism:
        assert f'mechanism="{mechanism}"' in received


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_processing_limits_say_which(spf):
    assert "Too many DNS lookups" in spf(b"a@toomany.spf.test").field("notes")
    assert "Void lookup limit of 2 exceeded" in spf(b"a@void.spf.test").field("notes")


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_mapped_ipv4_client_is_shown_as_ipv4(spf):
    out = spf(b"a@pass.spf.test", TCPREMOTEIP="::ffff:192.0.2.1")
    assert "client-ip=192.0.2.1;" in added_headers(out, smtpd_message())["Received-SPF"]


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_ipv6_client_ip_is_quoted(spf):
    out = spf(b"a@ip6.spf.test", TCPREMOTEIP="2001:db8:25::9")
    assert 'client-ip="2001:db8:25::9";' in added_headers(out, smtpd_message())["Received-SPF"]


def test_rejection_carries_the_domains_explanation_to_the_client(qq, spf, nsd_server):
    out, reply = qq.submit_for_reply(
        smtpd_message(),
        envelope(b"bob@macros.spf.test", b"x@example.org"),
        {"SPF": "3", "QQF_DNS": nsd_server.address},
    )
    assert out.returncode == 82
    assert reply == b"DSPF fail: bob may not send mail for macros.spf.test from 192.0.2.1 (#5.7.23)"


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_control_spfexplain_is_the_default_explanation(spf):
    (spf.control / "spfexplain").write_text("See https://%{r}/spf?ip=%{i} for %{o}\n")
    out = spf(b"alice@fail.spf.test", 3)
    assert_clean_failure(out, 31)
    assert out.field("reason") == (
        f"SPF fail: See https://{RECEIVER}/spf?ip=192.0.2.1 for fail.spf.test"
    )


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_without_any_explanation_the_reason_is_ours(spf):
    out = spf(b"alice@softfail.spf.test", 4)
    assert_clean_failure(out, 31)
    assert out.field("reason") == "SPF softfail: softfail.spf.test discourages mail from 192.0.2.1"


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_control_spflocalrules_apply_before_all(spf):
    assert_clean_failure(spf(b"alice@fail.spf.test", 3, TCPREMOTEIP="198.51.100.5"), 31)
    (spf.control / "spflocalrules").write_text("ip4:198.51.100.0/24\n")
    out = spf(b"alice@fail.spf.test", 3, TCPREMOTEIP="198.51.100.5")
    assert out.returncode == 0, out.stderr
    assert added_headers(out, smtpd_message())["Received-SPF"].startswith("pass (")


def test_receiver_is_tcplocalhost_without_control_me(spf):
    (spf.control / "me").unlink()
    out = spf(b"alice@pass.spf.test", TCPLOCALHOST="mx2.example.net")
    fields = added_headers(out, smtpd_message())
    assert "receiver=mx2.example.net;" in fields["Received-SPF"]
    assert fields["Authentication-Results"].startswith("mx2.example.net; spf=pass")


@pytest.mark.parametrize(("ip", "result"), [("192.0.2.25", "pass"), ("192.0.2.26", "fail")])
@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_a_bounce_is_checked_on_the_helo_from_the_received_line(spf, ip, result):
    message = smtpd_message(helo=b"mail.spf.test", ip=ip.encode())
    out = spf(b"", message=message, TCPREMOTEIP=ip)
    fields = added_headers(out, message)
    assert fields["Received-SPF"].startswith(f"{result} ({RECEIVER}: domain of postmaster@mail.")
    assert 'envelope-from=""; helo=mail.spf.test;' in fields["Received-SPF"]
    assert fields["Received-SPF"].endswith("identity=helo")
    assert fields["Authentication-Results"] == f"{RECEIVER}; spf={result} smtp.helo=mail.spf.test"


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_received_line_without_helo_part_means_helo_was_the_host_name(spf):
    message = b"Received: from mail.spf.test (192.0.2.25)\n  by mx with SMTP; date\n" + BODY
    out = spf(b"", message=message, TCPREMOTEIP="192.0.2.25")
    assert "smtp.helo=mail.spf.test" in added_headers(out, message)["Authentication-Results"]


def test_helohost_from_a_patched_qmail_smtpd_wins(spf):
    message = smtpd_message(helo=b"elsewhere.example", ip=b"192.0.2.25")
    out = spf(b"", message=message, TCPREMOTEIP="192.0.2.25", HELOHOST="mail.spf.test")
    assert (
        "spf=pass smtp.helo=mail.spf.test" in added_headers(out, message)["Authentication-Results"]
    )


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_a_received_line_for_another_address_is_not_believed(spf):
    """The top line must be qmail-smtpd's for this connection; a forged one is ignored."""
    message = smtpd_message(helo=b"mail.spf.test", ip=b"192.0.2.25")
    out = spf(b"", message=message, TCPREMOTEIP="192.0.2.99")
    fields = added_headers(out, message)
    assert fields["Received-SPF"].startswith("none (")
    assert "helo=" not in fields["Received-SPF"]
    assert out.field("notes") == "spf: none (helo): no valid domain to check"


def test_dns_server_that_never_answers_costs_the_deadline_not_more(spf, qq):
    from nameserver import Nsd

    silent = Nsd()
    silent.pause()
    try:
        started = time.monotonic()
        out = spf(b"alice@pass.spf.test", 2, QQF_DNS=silent.address, QQF_SPFTIMEOUT="2")
        took = time.monotonic() - started
    finally:
        silent.stop()
    assert_clean_failure(out, 71)
    assert 1.5 < took < 6, took
    assert out.field("reason") == "SPF temperror: cannot check the sender now, try again later"
    assert "DNS timeout" in out.field("detail")


@pytest.mark.one_shot  # a deadline is kept the same way in both modes (resident: the silent server)
def test_stopped_dns_server_is_temperror_by_the_deadline(spf):
    """dnspython does not see the ICMP refusal of a closed UDP port: it waits it out."""
    started = time.monotonic()
    out = spf(b"alice@pass.spf.test", 2, QQF_DNS=dead_dns(), QQF_SPFTIMEOUT="2")
    assert time.monotonic() - started < 6
    assert_clean_failure(out, 71)
    assert out.field("detail") == "temperror: DNS timeout looking up TXT pass.spf.test"


def test_relayclient_and_local_mail_are_skipped_and_logged(spf):
    out = spf(b"alice@fail.spf.test", 6, RELAYCLIENT="")
    assert out.returncode == 0, out.stderr
    assert out.message == smtpd_message()
    assert out.field("notes") == "spf: skipped: RELAYCLIENT"
    out = spf(b"alice@fail.spf.test", 6, TCPREMOTEIP="")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "spf: skipped: local injection"


@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_spfbehavior_is_an_alias_and_spf_wins(spf):
    assert_clean_failure(spf(b"alice@fail.spf.test", None, SPFBEHAVIOR="3"), 31)
    assert spf(b"alice@fail.spf.test", 1, SPFBEHAVIOR="3").returncode == 0
    # s/qmail's reading: SPF set, even to "", is set (level 0, off) and wins
    assert spf(b"alice@fail.spf.test", None, SPF="", SPFBEHAVIOR="3").returncode == 0


@pytest.mark.parametrize(
    ("env", "why"),
    [({"SPF": "7"}, "must be a level from 0 to 6"), ({"QQF_DNS": "dns.example"}, "not an IP")],
)
@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_invalid_spf_settings_are_55(spf, env, why):
    out = spf(b"alice@pass.spf.test", **env)
    assert_clean_failure(out, 55)
    assert why in out.field("reason")


HOSTILE = [
    b'evil"; receiver=forged; x="@pass.spf.test',
    b"line\r\nX-Injected: yes@pass.spf.test",
    "b\u00e4d\u00fc@pass.spf.test".encode(),
    b"a" * 980 + b"@pass.spf.test",
    b"(comment)\\@pass.spf.test",
]


@pytest.mark.parametrize("sender", HOSTILE)
@pytest.mark.parametrize(
    "helo", ['x"; identity=forged', "a\r\nX-Injected: yes", "h\u00e9lo(\\)", "h" * 1000]
)
@pytest.mark.one_shot  # the same evaluation in both modes (resident: the stamping cases)
def test_hostile_senders_and_helo_names_cannot_break_the_headers(spf, sender, helo):
    out = spf(sender, 1, HELOHOST=helo)
    assert out.returncode == 0, out.stderr
    original = smtpd_message()
    assert out.message.endswith(original)
    added = out.message[: len(out.message) - len(original)]
    lines = added.split(b"\n")[:-1]
    assert all(len(line) <= 998 for line in lines)
    assert all(32 <= byte < 127 or byte == 9 for line in lines for byte in line)
    starts = [line.split(b":")[0] for line in lines if not line.startswith(b"\t")]
    assert starts == [b"Received-SPF", b"Authentication-Results"]
    fields = added_headers(out, original)
    assert "X-Injected" not in fields
    assert keys_of(fields["Received-SPF"]) == [
        "client-ip",
        "envelope-from",
        "helo",
        "mechanism",
        "receiver",
        "identity",
    ]
    assert len(out.lines) == 1


_KEY_VALUE = re.compile(r'([a-z-]+)=([A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+|"(?:[^"\\]|\\.)*")')


def keys_of(received_spf: str) -> list[str]:
    """The keys of a Received-SPF value, read by RFC 7208's grammar (which must hold)."""
    match = re.match(r"\w+ \([^()\\]*\) ", received_spf)
    assert match, received_spf
    keys, rest = [], received_spf[match.end() :]
    while rest:
        pair = _KEY_VALUE.match(rest)
        assert pair, rest
        keys.append(pair.group(1))
        rest = rest[pair.end() :]
        assert rest == "" or rest.startswith("; "), rest
        rest = rest[2:]
    return keys


def test_a_control_file_that_cannot_be_read_is_55(spf):
    (spf.control / "spfexplain").mkdir()
    out = spf(b"alice@fail.spf.test", 3)
    assert_clean_failure(out, 55)
    assert out.field("reason").startswith("control/spfexplain: cannot read")


def test_qqfilter_test_takes_the_helo_and_shows_the_headers(nsd_server, tmp_path):
    import subprocess

    from conftest import QQFILTER

    message = tmp_path / "bounce.eml"
    message.write_bytes(BODY)
    env = {
        "PATH": "/usr/bin:/bin",
        "QQF_CONFIG": "/dev/null",
        "QQF_QMAILHOME": str(tmp_path),
        "QQF_DNS": nsd_server.address,
        "SPF": "1",
    }
    command = [QQFILTER, "test", str(message), "--from", "", "--to", "postmaster@example.org"]
    command += ["--ip", "192.0.2.25", "--helo", "mail.spf.test"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert "notes:     spf: pass (helo)\n" in shown
    assert "Authentication-Results: " in shown
    assert "spf=pass smtp.helo=mail.spf.test" in shown


@pytest.mark.one_shot  # the resident server imports dnspython whole, once, at start
def test_a_one_shot_check_imports_no_part_of_dnspython_it_does_not_use(qq, nsd_server):
    out = qq.submit(
        smtpd_message(),
        envelope(b"alice@pass.spf.test", b"bob@example.org"),
        env={"QQF_DNS": nsd_server.address, "TCPREMOTEIP": CLIENT, "SPF": "1"},
        command=[sys.executable, "-X", "importtime", "-m", "qqfilter"],
    )
    assert out.returncode == 0
    assert b"Received-SPF: pass" in out.message
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"spf", "dns.resolver", "dns.message"} <= imported
    # importlib.metadata only answers dnspython's questions about DoH and QUIC; the async
    # query code and DDR are never called by a synchronous resolver (shared/dnsimport.py)
    assert imported.isdisjoint({"importlib.metadata", "dns.asyncquery", "dns._ddr"})
