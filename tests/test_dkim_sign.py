"""DKIM signing of outbound mail (QQF_DKIMSIGN=relayclient), checked by two other verifiers
against the same real nsd: dkimpy's and OpenDKIM's (``opendkim -t``, Debian's opendkim), and
by qqfilter's own verification of what it signed."""

import base64
import os
import shutil
import subprocess

import pytest
from conftest import added_fields, assert_clean_failure, envelope

RELAYED = (
    b"Received: from unknown (HELO laptop) (192.0.2.9)\n"
    b"  by mx.example.org with SMTP; 26 Nov 2026 10:00:00 -0000\n"
)
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"


def outbound(author: bytes = b"alice@signed.dkim.test") -> bytes:
    return (
        b"From: Alice <" + author + b">\nTo: bob@example.org\nCc: carol@example.org\n"
        b"Subject: minutes\nDate: Thu, 26 Nov 2026 10:00:00 +0000\nMessage-ID: <2@dkim.test>\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain\n\nSee you   on Monday.  \n\n\n"
    )


@pytest.fixture
def keys(qq, dkim_world):
    """qmail-dkim's layout in the harness's qmail home: ``put(domain, selector, pem)``."""
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)

    def put(domain: str, selector: str, pem: bytes, selectors: str | None = None):
        where = control / "domainkeys" / domain
        where.mkdir(parents=True, exist_ok=True)
        (where / selector).write_bytes(pem)
        (where / selector).chmod(0o600)
        if selectors is not None:
            (where / "selector").write_text(selectors)
        return where / selector

    put.control = control
    return put


@pytest.fixture
def relay(qq, dkim_world):
    def submit(message: bytes, **env: str):
        settings = {"QQF_DNS": dkim_world.address, "QQF_DKIMSIGN": "relayclient", "RELAYCLIENT": ""}
        settings.update(env)
        out = qq.submit(
            RELAYED + message, envelope(b"alice@signed.dkim.test", b"bob@example.org"), env=settings
        )
        out.sent = RELAYED + message
        return out

    return submit


def signatures(out) -> list[str]:
    return [value for name, value in added_fields(out, out.sent) if name == "DKIM-Signature"]


def dkimpy_verifies(message: bytes, dkim_world, index: int = 0) -> bool:
    """dkimpy's own verifier, asking the test nsd."""
    import dkim
    import dns.message
    import dns.query

    host, port = dkim_world.address.split(":")

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, host, port=int(port), timeout=timeout)
        for rrset in answer.answer:
            for record in rrset:
                return b"".join(record.strings)
        return None

    try:
        return dkim.DKIM(message).verify(index, dnsfunc=txt)
    except dkim.ValidationError:  # a body that does not match
        return False


def opendkim_says(message: bytes, dkim_world, tmp_path) -> str:
    """OpenDKIM's verdict (``opendkim -t``) on ``message``, its keys from the test nsd
    through its Unbound resolver (which answers nothing under ``test.`` unless told)."""
    if not os.path.exists(OPENDKIM):
        pytest.fail("opendkim not installed: apt-get install opendkim (see .ci/run)")
    port = dkim_world.nsd.port
    stubs = "".join(
        f'stub-zone:\n  name: "{zone}"\n  stub-addr: 127.0.0.1@{port}\n'
        for zone in ("dkim.test", "other.test")
    )
    unbound = tmp_path / "unbound.conf"
    unbound.write_text(
        'server:\n  do-not-query-localhost: no\n  module-config: "iterator"\n'
        '  local-zone: "test." nodefault\n' + stubs
    )
    config = tmp_path / "opendkim.conf"
    config.write_text(f"Syslog no\nMode v\nResolverConfiguration {unbound}\n")
    path = tmp_path / "message.eml"
    path.write_bytes(message.replace(b"\n", b"\r\n"))
    done = subprocess.run(
        [OPENDKIM, "-x", str(config), "-t", str(path)], capture_output=True, timeout=60
    )
    return done.stdout.decode() + done.stderr.decode()


def test_relayed_mail_is_signed_and_three_verifiers_agree(relay, keys, dkim_world, qq, tmp_path):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    out = relay(outbound())
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "dkimsign: signed signed.dkim.test (default rsa-sha256)"
    (signature,) = signatures(out)
    assert "a=rsa-sha256; c=relaxed/relaxed; d=signed.dkim.test;" in signature
    assert "s=default;" in signature
    assert dkimpy_verifies(out.message, dkim_world)
    said = opendkim_says(out.message, dkim_world, tmp_path)
    assert "verification (s=default, d=signed.dkim.test, 2048-bit key) succeeded" in said, said
    # and qqfilter's own verification, as the receiving end would run it
    again = qq.submit(
        out.message,
        envelope(b"alice@signed.dkim.test", b"bob@example.org"),
        env={"QQF_DNS": dkim_world.address, "QQF_DKIM": "verify", "TCPREMOTEIP": "192.0.2.1"},
    )
    assert again.field("notes") == "dkim: pass signed.dkim.test"


def test_a_changed_message_no_longer_verifies_anywhere(relay, keys, dkim_world, tmp_path):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    out = relay(outbound())
    changed = out.message.replace(b"Monday", b"Friday")
    assert not dkimpy_verifies(changed, dkim_world)
    assert "signature verification failed" in opendkim_says(changed, dkim_world, tmp_path)


def test_an_rsa_and_an_ed25519_selector_sign_twice(relay, keys, dkim_world, tmp_path):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem, "default\ned\n")
    keys("signed.dkim.test", "ed", dkim_world.keys["signer-ed"].pem)
    out = relay(outbound())
    assert out.field("notes") == (
        "dkimsign: signed signed.dkim.test (default rsa-sha256, ed ed25519-sha256)"
    )
    first, second = signatures(out)
    assert "a=rsa-sha256" in first and "a=ed25519-sha256" in second
    assert dkimpy_verifies(out.message, dkim_world, 0)
    assert dkimpy_verifies(out.message, dkim_world, 1)
    # OpenDKIM reports the first signature only: show it the second alone
    rest = out.message.partition(b"\nDKIM-Signature:")[2]
    said = opendkim_says(b"DKIM-Signature:" + rest, dkim_world, tmp_path)
    assert "verification (s=ed, d=signed.dkim.test, 0-bit key) succeeded" in said, said


def test_from_subject_and_to_are_oversigned(relay, keys, dkim_world):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    out = relay(outbound())
    (signature,) = signatures(out)
    signed = [name.strip() for name in signature.split("h=")[1].split(";")[0].split(":")]
    assert signed.count("from") == 2 and signed.count("subject") == 2 and signed.count("to") == 2
    assert signed.count("cc") == 1 and "received" not in signed
    added = out.message.replace(b"Subject: minutes", b"Subject: minutes\nSubject: prize", 1)
    assert not dkimpy_verifies(added, dkim_world)


def test_the_percent_directory_signs_for_our_domains_only(relay, keys, dkim_world):
    keys("%", "default", dkim_world.keys["signer"].pem)
    (keys.control / "rcpthosts").write_text("signed.dkim.test\n")
    out = relay(outbound())
    assert out.field("notes") == "dkimsign: signed signed.dkim.test (default rsa-sha256)"
    assert dkimpy_verifies(out.message, dkim_world)
    out = relay(outbound(b"alice@gmail.test"))
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "dkimsign: not signed: no key for gmail.test"
    assert signatures(out) == []


def test_keys_in_pkcs8_and_as_a_dkimpy_seed_are_read(relay, keys, dkim_world):
    from cryptography.hazmat.primitives import serialization

    rsa = serialization.load_pem_private_key(dkim_world.keys["signer"].pem, password=None)
    pkcs8 = rsa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keys("signed.dkim.test", "default", pkcs8, "default ed")
    keys("signed.dkim.test", "ed", dkim_world.keys["signer-ed"].private + b"\n")
    out = relay(outbound())
    assert out.returncode == 0, out.stderr
    assert dkimpy_verifies(out.message, dkim_world, 0)
    assert dkimpy_verifies(out.message, dkim_world, 1)


def test_mail_from_the_internet_is_not_signed(qq, keys, dkim_world):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    env = {"QQF_DNS": dkim_world.address, "QQF_DKIMSIGN": "relayclient", "TCPREMOTEIP": "192.0.2.9"}
    message = RELAYED + outbound()
    out = qq.submit(message, envelope(b"a@signed.dkim.test", b"b@example.org"), env=env)
    assert out.returncode == 0, out.stderr
    assert out.message == message and out.field("notes") is None


def test_an_authenticated_session_is_signed_and_an_ident_answer_is_not(qq, keys, dkim_world):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    env = {"QQF_DNS": dkim_world.address, "QQF_DKIMSIGN": "relayclient", "TCPREMOTEIP": "192.0.2.9"}
    plain = RELAYED + outbound()
    out = qq.submit(
        plain,
        envelope(b"a@signed.dkim.test", b"b@example.org"),
        env={**env, "TCPREMOTEINFO": "alice"},
    )
    assert out.message == plain and out.field("notes") is None
    authed = plain.replace(b"with SMTP;", b"with ESMTPA;")
    out = qq.submit(
        authed,
        envelope(b"a@signed.dkim.test", b"b@example.org"),
        env={**env, "TCPREMOTEINFO": "alice"},
    )
    assert out.field("notes") == "dkimsign: signed signed.dkim.test (default rsa-sha256)"
    out = qq.submit(
        plain,
        envelope(b"a@signed.dkim.test", b"b@example.org"),
        env={**env, "SMTPAUTHUSER": "alice"},
    )
    assert out.field("notes") == "dkimsign: signed signed.dkim.test (default rsa-sha256)"


def test_no_key_or_no_from_domain_is_sent_unsigned_and_noted(relay, keys):
    out = relay(outbound())
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "dkimsign: not signed: no key for signed.dkim.test"
    out = relay(b"Subject: no author\n\nhi\n")
    assert out.field("notes") == "dkimsign: not signed: no From domain"


def test_a_key_others_may_write_is_a_configuration_error(relay, keys, dkim_world):
    path = keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    path.chmod(0o666)
    assert_clean_failure(relay(outbound()), 55)


def test_a_file_that_is_no_key_is_a_configuration_error(relay, keys):
    keys(
        "signed.dkim.test",
        "default",
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    out = relay(outbound())
    assert_clean_failure(out, 55)
    assert "not an RSA or Ed25519 private key" in out.field("reason")


def test_a_selector_file_cannot_reach_outside_the_domain_directory(relay, keys, dkim_world):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem, "../../me\n/etc/passwd\n")
    (keys.control / "me").write_text("mx.example.org\n")
    out = relay(outbound())
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "dkimsign: not signed: no key for signed.dkim.test"


def test_the_signature_field_is_folded_and_plain_ascii(relay, keys, dkim_world):
    keys("signed.dkim.test", "default", dkim_world.keys["signer"].pem)
    out = relay(outbound())
    added = out.message[: len(out.message) - len(out.sent)]
    assert all(len(line) <= 80 for line in added.split(b"\n"))
    b = signatures(out)[0].split("b=")[-1].replace(" ", "")
    assert len(base64.b64decode(b)) == 256
