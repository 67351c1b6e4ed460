"""DKIM, ARC and DMARC on inbound mail, against a real nsd publishing keys made for this run
(tests/dkimworld.py); signing is in test_dkim_sign.py."""

import re
import sys

import pytest
from clamav import free_port
from conftest import added_fields, added_headers, envelope
from dkimworld import CLIENT, RECEIVER

SMTPD = (
    b"Received: from unknown (HELO mail.example.com) (" + CLIENT.encode() + b")\n"
    b"  by mx.example.org with SMTP; 26 Nov 2026 10:00:00 -0000\n"
)


def body(author: bytes = b"alice@reject.dkim.test", extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <" + author + b">\nTo: bob@example.org\nSubject: quarterly report\n"
        b"Date: Thu, 26 Nov 2026 10:00:00 +0000\nMessage-ID: <1@dkim.test>\n" + extra + b"\n"
        b"Numbers attached.\n"
    )


@pytest.fixture
def run(qq, dkim_world):
    """Submit a message as qmail-smtpd hands it on (its Received line on top)."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "me").write_text(RECEIVER + "\n")

    def submit(message: bytes, sender: bytes = b"bounce@other.test", **env: str):
        settings = {"QQF_DNS": dkim_world.address, "TCPREMOTEIP": CLIENT, **env}
        out = qq.submit(SMTPD + message, envelope(sender, b"bob@example.org"), env=settings)
        out.sent = SMTPD + message
        return out

    return submit


def results(out) -> str:
    """The one Authentication-Results field's value."""
    fields = [
        value for name, value in added_fields(out, out.sent) if name == "Authentication-Results"
    ]
    assert len(fields) == 1, fields
    return fields[0]


def verify(run, message: bytes, **env: str):
    out = run(message, QQF_DKIM="verify", **env)
    assert out.returncode == 0, out.stderr
    return out


# --- DKIM -----------------------------------------------------------------------------------


@pytest.mark.both_modes
def test_a_good_rsa_signature_passes_with_its_properties(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa")
    out = verify(run, signed)
    stamp = re.search(rb"b=([A-Za-z0-9+/]{8})", signed.split(b"bh=")[1]).group(1).decode()
    if "/" in stamp:  # not a MIME token character: the value is quoted (RFC 8601 pvalue)
        stamp = f'"{stamp}"'
    assert results(out) == (
        f"{RECEIVER}; dkim=pass header.d=dkim.test header.s=rsa header.a=rsa-sha256 "
        f"header.b={stamp}"
    )
    assert out.field("notes") == "dkim: pass dkim.test"


def test_an_ed25519_signature_passes(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "ed"))
    assert "dkim=pass header.d=dkim.test header.s=ed header.a=ed25519-sha256" in results(out)


def test_a_changed_body_fails(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa").replace(b"Numbers", b"Payment details")
    out = verify(run, signed)
    assert "dkim=fail (body changed) header.d=dkim.test" in results(out)
    assert out.field("notes") == "dkim: fail dkim.test (body changed)"


def test_a_changed_signed_header_fails(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa").replace(b"quarterly", b"urgent")
    out = verify(run, signed)
    assert "dkim=fail (signature does not match the headers)" in results(out)


def test_a_revoked_key_is_a_permanent_error(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "revoked"))
    assert "dkim=permerror (key revoked at revoked._domainkey.dkim.test)" in results(out)


def test_a_missing_key_is_a_permanent_error(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "gone"))
    assert "dkim=permerror (no key at gone._domainkey.dkim.test)" in results(out)


def test_dns_timing_out_is_a_temporary_error_and_still_accepts(run, dkim_world):
    out = verify(
        run,
        dkim_world.sign(body(), "dkim.test", "rsa"),
        QQF_DNS=f"127.0.0.1:{free_port()}",
        QQF_DKIMTIMEOUT="0.3",
    )
    assert "dkim=temperror (DNS timeout looking up TXT rsa._domainkey.dkim.test)" in results(out)


def test_a_key_under_1024_bits_is_refused_by_policy_and_1024_is_noted(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "weak"))
    assert "dkim=policy (weak key: 512 bits) header.d=dkim.test" in results(out)
    out = verify(run, dkim_world.sign(body(), "dkim.test", "small"))
    assert "dkim=pass (1024-bit key) header.d=dkim.test" in results(out)


def test_a_body_length_limit_is_noted(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa", length=True) + b"Click here: evil.test\n"
    out = verify(run, signed)
    assert re.search(r"dkim=pass \(l=\d+: only part of the body is signed\)", results(out))
    assert re.search(r"dkim: pass dkim.test l=\d+", out.field("notes"))


def test_every_signature_has_its_result_in_one_field_with_spf(run, dkim_world):
    signed = dkim_world.sign(dkim_world.sign(body(), "dkim.test", "rsa"), "other.test", "rsa")
    out = verify(run, signed.replace(b"Numbers", b"Other numbers"), SPF="1")
    fields = added_headers(out, out.sent)
    assert list(fields) == ["Received-SPF", "Authentication-Results"]
    value = fields["Authentication-Results"]
    assert value.startswith(f"{RECEIVER}; spf=pass smtp.mailfrom=other.test; dkim=fail")
    assert value.index("header.d=other.test") < value.index("header.d=dkim.test")
    assert out.field("notes") == (
        "spf: pass; dkim: fail other.test (body changed); fail dkim.test (body changed)"
    )


def test_an_rsa_sha1_signature_that_verifies_is_refused_by_policy(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "rsa", signature_algorithm=b"rsa-sha1"))
    assert "dkim=policy (rsa-sha1 is not accepted: RFC 8301) header.d=dkim.test" in results(out)


def test_fields_claiming_our_authserv_id_are_removed_and_others_kept(run, dkim_world):
    forged = (
        b"Authentication-Results: MX.example.org (trust me); dkim=pass; dmarc=pass\n"
        b'Authentication-Results: "mx.example.org"; dmarc=pass\n'
        b"Authentication-Results: relay.example.net; dkim=pass header.d=dkim.test\n"
        b"X-Qqfilter-DMARC: quarantine (planted)\n"
    )
    signed = dkim_world.sign(body(b"alice@reject.dkim.test"), "dkim.test", "rsa")
    out = run(forged + signed, QQF_DKIM="verify", QQF_DMARC="stamp")
    assert out.returncode == 0, out.stderr
    assert out.message.count(b"Authentication-Results:") == 2
    assert b"relay.example.net; dkim=pass" in out.message
    assert b"trust me" not in out.message and b'"mx.example.org"' not in out.message
    assert b"planted" not in out.message
    assert b"dmarc=pass (p=reject) header.from=reject.dkim.test" in out.message.replace(
        b"\n\t", b" "
    )


def test_a_message_without_signature_is_none_and_loads_no_dkim_library(run, qq, dkim_world):
    out = verify(run, body(), PYTHONPROFILEIMPORTTIME="1")
    assert results(out) == f"{RECEIVER}; dkim=none"
    imported = {line.split("|")[-1].strip() for line in out.lines if "import time:" in line}
    assert imported and "dkim" not in imported and "nacl" not in imported


def test_mail_from_a_relay_client_is_not_verified(run, dkim_world):
    out = verify(run, dkim_world.sign(body(), "dkim.test", "rsa"), RELAYCLIENT="")
    assert out.message == out.sent
    assert out.field("notes") == "dkim: skipped: RELAYCLIENT"


@pytest.mark.parametrize(
    "signature",
    [
        b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=rsa; h=from; bh=; b=\n",
        b"DKIM-Signature: garbage\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=rsa; c=odd/odd; h=from; "
        b"bh=AAAA; b=AAAA\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff\xfe; s=../../x; h=from; bh=AAAA; b=AAAA\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=rsa; h=from; bh=AAAA; b=AAAA; x=1000\n",
    ],
    ids=["empty-b", "garbage", "bad-canonicalization", "hostile-names", "expired"],
)
def test_a_malformed_signature_is_neutral_or_permerror_never_a_failure(run, signature):
    out = verify(run, signature + body())
    assert re.search(r"dkim=(neutral|permerror|fail) \(", results(out)), results(out)
    assert len(out.lines) == 1, out.stderr


def test_a_signature_naming_no_dns_name_is_a_permanent_error_not_a_dns_failure(run):
    signature = b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=a..b; h=from; bh=AAAA; b=AAAA\n"
    out = verify(run, signature + body())
    assert "dkim=permerror (d= or s= is not a DNS name)" in results(out)


def test_more_signatures_than_the_limit_are_not_all_looked_up(run, dkim_world):
    signed = body()
    for _ in range(15):
        signed = dkim_world.sign(signed, "dkim.test", "rsa")
    out = verify(run, signed)
    assert results(out).count("dkim=pass") == 10


@pytest.mark.parametrize(
    ("field", "domains"),
    [
        (b'From: "alice@paypal.test" <x@evil.test>', ["evil.test"]),
        (b"From: alice@paypal.test <x@evil.test>", ["evil.test"]),
        (b"From: Bob (bob@paypal.test) x@evil.test", ["evil.test"]),
        (b'From: Group: a@one.test, "q" <b@two.test>;', ["one.test", "two.test"]),
        (b"From: <@route.test:c@three.test>", ["three.test"]),
        (b"FROM :  d@Four.TEST.", ["four.test"]),
        (b"From: =?utf-8?q?x?= <e@b\xc3\xbccher.test>", ["xn--bcher-kva.test"]),
        (b"From: a@[192.0.2.1]", []),
        (b'From: <"a b"@quoted.test>', ["quoted.test"]),
        (b"From: a@b.test\n\tc@continued.test", ["b.test", "continued.test"]),
        (b"From: a@one.test\nFrom: b@two.test", ["one.test", "two.test"]),
        (b"Subject: no author", []),
    ],
)
def test_the_from_domains_are_what_a_mail_client_shows(field, domains):
    from qqfilter.checks.dkim import from_domains

    assert from_domains(field + b"\nTo: x@example.org") == domains


@pytest.mark.parametrize("filler", [b"(", b'"', b"<", b"\\", b"@", b"a@b.test, "])
def test_a_hostile_from_field_is_read_in_linear_time(filler):
    import time

    from qqfilter.checks.dkim import from_domains

    started = time.monotonic()
    from_domains(b"From: " + filler * 200_000 + b"\nSubject: x")
    from_domains(b"".join(b"From: a@b%d.test\n" % i for i in range(50_000)))
    assert time.monotonic() - started < 1


# --- ARC ------------------------------------------------------------------------------------


def arc_seal(message: bytes, dkim_world, hop: str, results_text: str) -> bytes:
    """``message`` after a forwarder ``hop`` (signing as other.test) recorded ``results_text``
    and sealed it."""
    import dkim

    message = f"Authentication-Results: {hop}; {results_text}\n".encode() + message
    key = dkim_world.keys["rsa"]
    seal = dkim.arc_sign(message, b"rsa", b"other.test", key.private, hop.encode(), linesep=b"\n")
    return b"".join(seal) + message


def test_an_arc_chain_of_two_hops_passes(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa")
    once = arc_seal(signed, dkim_world, "hop1.test", "dkim=pass")
    twice = arc_seal(once, dkim_world, "hop2.test", "arc=pass")
    out = verify(run, twice)
    assert "; arc=pass (i=2)" in results(out)
    assert out.field("notes").endswith("; arc pass (i=2)")


def test_an_arc_chain_changed_after_sealing_fails(run, dkim_world):
    signed = dkim_world.sign(body(), "dkim.test", "rsa")
    once = arc_seal(signed, dkim_world, "hop1.test", "dkim=pass")
    twice = arc_seal(once, dkim_world, "hop2.test", "arc=pass")
    out = verify(run, twice.replace(b"quarterly", b"urgent"))
    assert re.search(r"; arc=fail \(", results(out)), results(out)


# --- DMARC ----------------------------------------------------------------------------------


def dmarc(run, author: bytes, mode: str = "stamp", sender: bytes = b"bounce@other.test", **env):
    return run(body(author), sender, QQF_DMARC=mode, **env)


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ("none", "p=none dis=none"),
        ("quarantine", "p=quarantine dis=quarantine"),
        ("reject", "p=reject dis=reject"),
    ],
)
def test_a_failing_message_is_stamped_with_the_policy(run, domain, words):
    out = dmarc(run, f"alice@{domain}.dkim.test".encode())
    assert out.returncode == 0, out.stderr
    assert f"dmarc=fail ({words}) header.from={domain}.dkim.test" in results(out)
    # SPF is off: DMARC evaluated it, and its result is stamped too
    assert results(out).startswith(f"{RECEIVER}; spf=pass smtp.mailfrom=other.test; dmarc=")


@pytest.mark.both_modes
def test_enforce_refuses_p_reject_with_the_dmarc_tag(run):
    out = dmarc(run, b"alice@reject.dkim.test", "enforce")
    assert out.returncode == 31
    assert not out.queued
    assert out.field("tag") == "Reject::DATA::DMARC"
    assert out.field("reason") == (
        "DMARC policy of reject.dkim.test rejects this message: no aligned SPF or DKIM pass"
    )


def test_enforce_marks_p_quarantine_and_accepts_p_none(run):
    out = dmarc(run, b"alice@quarantine.dkim.test", "enforce")
    assert out.returncode == 0, out.stderr
    assert added_headers(out, out.sent)["X-Qqfilter-DMARC"] == (
        "quarantine (policy of quarantine.dkim.test: no aligned SPF or DKIM pass)"
    )
    out = dmarc(run, b"alice@none.dkim.test", "enforce")
    assert out.returncode == 0, out.stderr
    assert "X-Qqfilter-DMARC" not in added_headers(out, out.sent)


def test_a_subdomain_without_a_record_gets_the_organizational_sp(run):
    out = dmarc(run, b"alice@sub.dkim.test", "enforce")
    assert out.returncode == 0, out.stderr
    assert (
        "dmarc=fail (p=reject sp=quarantine dis=quarantine) header.from=sub.dkim.test"
        in results(out)
    )
    assert "X-Qqfilter-DMARC" in added_headers(out, out.sent)


def test_the_organizational_domain_itself_gets_p(run):
    out = dmarc(run, b"alice@dkim.test", "enforce")
    assert out.returncode == 31, out.stderr


def test_spf_alone_passes_when_aligned_relaxed(run):
    out = dmarc(run, b"alice@reject.dkim.test", "enforce", sender=b"bounce@dkim.test")
    assert out.returncode == 0, out.stderr
    assert "dmarc=pass (p=reject) header.from=reject.dkim.test" in results(out)
    assert out.field("notes").endswith("dmarc: pass reject.dkim.test (p=reject)")


def test_spf_alone_does_not_pass_strict_alignment_for_a_subdomain(run):
    out = dmarc(run, b"alice@strict.dkim.test", "enforce", sender=b"x@bounce.strict.dkim.test")
    assert out.returncode == 31, out.stderr


def test_dkim_alone_passes_relaxed_and_strict_when_the_domains_match(run, dkim_world):
    relaxed = dkim_world.sign(body(b"alice@reject.dkim.test"), "dkim.test", "rsa")
    out = run(relaxed, b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 0, out.stderr
    strict = dkim_world.sign(body(b"alice@strict.dkim.test"), "strict.dkim.test", "rsa")
    out = run(strict, b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 0, out.stderr
    not_strict = dkim_world.sign(body(b"alice@strict.dkim.test"), "dkim.test", "rsa")
    out = run(not_strict, b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 31, out.stderr


def test_a_passing_signature_of_another_domain_does_not_align(run, dkim_world):
    signed = dkim_world.sign(body(b"alice@reject.dkim.test"), "other.test", "rsa")
    out = run(signed, b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 31, out.stderr


def test_dns_failure_is_temperror_stamped_or_tempfailed_never_refused(run):
    dead = {"QQF_DNS": f"127.0.0.1:{free_port()}", "QQF_DKIMTIMEOUT": ".3", "QQF_SPFTIMEOUT": ".3"}
    out = dmarc(run, b"alice@reject.dkim.test", "stamp", **dead)
    assert out.returncode == 0, out.stderr
    assert "dmarc=temperror" in results(out)
    assert out.field("notes").endswith(
        "dmarc: temperror reject.dkim.test: DNS timeout looking up TXT _dmarc.reject.dkim.test"
    )
    out = dmarc(run, b"alice@reject.dkim.test", "enforce", **dead)
    assert out.returncode == 71, out.stderr
    assert out.field("verdict") == "tempfail"


def test_pct_zero_applies_the_next_milder_policy(run):
    out = dmarc(run, b"alice@sampled.dkim.test", "enforce")
    assert out.returncode == 0, out.stderr
    assert "dmarc=fail (p=reject pct=0 dis=quarantine)" in results(out)


def test_two_dmarc_records_are_a_permanent_error_and_accepted(run):
    out = dmarc(run, b"alice@twice.dkim.test", "enforce")
    assert out.returncode == 0, out.stderr
    assert "dmarc=permerror (2 DMARC records at _dmarc.twice.dkim.test)" in results(out)


def test_a_second_from_domain_cannot_hide_a_rejecting_one(run, dkim_world):
    message = body(b"alice@other.test").replace(
        b"To:", b"From: Bank <service@reject.dkim.test>\nTo:", 1
    )
    signed = dkim_world.sign(message, "other.test", "rsa")
    out = run(signed, b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 31, out.stderr
    assert "reject.dkim.test" in out.field("reason")


def test_a_message_without_from_is_none(run):
    out = run(b"Subject: nobody\n\nhi\n", b"bounce@other.test", QQF_DMARC="enforce")
    assert out.returncode == 0, out.stderr
    assert "dmarc=none (no From domain)" in results(out)


def test_dmarc_uses_the_dkim_checks_signatures_in_one_field(run, dkim_world):
    signed = dkim_world.sign(body(b"alice@reject.dkim.test"), "dkim.test", "rsa")
    out = run(signed, b"bounce@other.test", QQF_DMARC="enforce", QQF_DKIM="verify", SPF="1")
    assert out.returncode == 0, out.stderr
    value = results(out)
    assert value.startswith(f"{RECEIVER}; spf=pass smtp.mailfrom=other.test; dkim=pass")
    assert value.endswith("dmarc=pass (p=reject) header.from=reject.dkim.test")


def test_authenticated_senders_are_not_judged(run):
    out = dmarc(run, b"alice@reject.dkim.test", "enforce", SMTPAUTHUSER="alice")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "dmarc: skipped: SMTP AUTH"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
