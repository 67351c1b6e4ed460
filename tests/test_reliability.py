"""Faults and hostile input not covered elsewhere, and load: every run ends in a defined code
with one log line, nothing is left in the spool, nothing is reported queued that was not.

docs/reliability.md lists every fault tried and the test that keeps its outcome true.
"""

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import time

import pytest
from conftest import QQFILTER, assert_clean_failure, envelope

ENV = envelope(b"alice@example.com", b"bob@example.org")
SMTPD = b"Received: from unknown (HELO mail.spf.test) (192.0.2.1)\n  by mx with SMTP; now\n"

GARBAGE_DNS = """
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    query, peer = sock.recvfrom(4096)
    sock.sendto(query[:2] + os.urandom(40), peer)  # the right id, then noise
"""


@pytest.fixture
def garbage_dns():
    """A UDP server that answers every DNS query with noise behind the query's id."""
    process = subprocess.Popen(
        [sys.executable, "-c", GARBAGE_DNS], stdout=subprocess.PIPE, text=True
    )
    port = int(process.stdout.readline())
    yield f"127.0.0.1:{port}"
    process.kill()
    process.wait()


def test_dns_answering_garbage_is_temperror_within_the_deadline(qq, garbage_dns):
    env = {"SPF": "2", "QQF_DNS": garbage_dns, "QQF_SPFTIMEOUT": "3"}
    started = time.monotonic()
    out = qq.submit(SMTPD + b"Subject: x\n\nhi\n", ENV, env=env)
    assert time.monotonic() - started < 8
    assert_clean_failure(out, 71)
    assert out.field("detail").startswith("temperror")
    out = qq.submit(SMTPD + b"Subject: x\n\nhi\n", ENV, env={**env, "SPF": "1"})
    assert out.returncode == 0, out.stderr
    assert out.message.startswith(b"Received-SPF: temperror")


def test_two_hundred_megabytes_pass_intact_in_bounded_memory(qq, tmp_path):
    big = tmp_path / "big.eml"
    digest = hashlib.sha256()
    with open(big, "wb") as stream:
        block = os.urandom(1 << 20)
        for i in range(200):
            chunk = block[i:] + block[:i]
            stream.write(chunk)
            digest.update(chunk)
    env_file = tmp_path / "big.env"
    env_file.write_bytes(ENV)
    out = qq.submit_files(big, env_file)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256((qq.record / "message").read_bytes()).digest() == digest.digest()
    assert out.field("size") == str(200 << 20)


def test_a_one_megabyte_header_line_is_read_and_passed_on(qq):
    message = b"Subject: " + b"x" * (1 << 20) + b"\nX-Other: y\n\nbody\n"
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == message


def test_ten_thousand_deep_mime_is_refused_quickly(qq):
    message = b"MIME-Version: 1.0\n"
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(10000)
    )
    started = time.monotonic()
    out = qq.submit(message + opening + b"Content-Type: text/plain\n\ndeep\n", ENV)
    assert time.monotonic() - started < 20
    assert_clean_failure(out, 31)
    assert "MIME nesting deeper than 30" in out.field("reason")


def test_invalid_utf8_everywhere(qq, nsd_server):
    sender, recipient = b"\xff\xfe@pass.spf.test", b"b\xc3\x28@example.org"
    message = (
        SMTPD + b"Subject: \xff\xfe caf\xe9\nFrom: \xc0\xaf <x@y>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b"Content-Type: text/plain; charset=utf-8\n\n\xff\xfe\xfd\n--b\n"
        b'Content-Type: application/pdf; name="=?utf-8?B?/w==?=\xff.pdf"\n\n%PDF-1.4\n--b--\n'
    )
    env = {"SPF": "1", "QQF_DNS": nsd_server.address, "HELOHOST": "h\udcffelo"}
    out = qq.submit(message, envelope(sender, recipient), env=env)
    assert out.returncode == 0, out.stderr
    assert out.message.endswith(message)
    added = out.message[: -len(message)]
    assert all(32 <= b < 127 or b in (9, 10) for b in added)
    assert len(out.lines) == 1
    assert out.field("from") == "<\\xff\\xfe@pass.spf.test>"


def _submit_alone(directory, message: bytes, env_bytes: bytes, env: dict) -> tuple[int, str]:
    """One submission with a record directory of its own (for concurrent runs)."""
    directory.mkdir()
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [QQFILTER],
        stdin=subprocess.PIPE,
        stdout=read_end,
        stderr=subprocess.PIPE,
        env={**env, "FAKEQQ_DIR": str(directory)},
    )
    os.close(read_end)
    process.stdin.write(message)
    process.stdin.close()
    with open(write_end, "wb", buffering=0) as out:
        out.write(env_bytes)
    stderr = process.stderr.read().decode()
    return process.wait(60), stderr


def test_fifty_concurrent_submissions_each_queued_once_or_refused(qq):
    """Three rounds of 50 at once: every accepted message reaches qmail-queue exactly once,
    every refused one never, every run writes one line, and the spool is empty after."""
    env = dict(qq.env)
    for round_number in range(3):
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            for i in range(50):
                refused = i % 5 == 0
                size_limit = {"QQF_MAXSIZE": "10"} if refused else {}
                body = b"Subject: %d-%d\n\nmessage number %d\n" % (round_number, i, i)
                directory = qq.tmp / f"load-{round_number}-{i}"
                jobs.append(
                    (
                        refused,
                        body,
                        directory,
                        pool.submit(_submit_alone, directory, body, ENV, {**env, **size_limit}),
                    )
                )
        for refused, body, directory, job in jobs:
            code, stderr = job.result()
            assert len(stderr.splitlines()) == 1, stderr
            queued = (directory / "message").exists()
            if refused:
                assert code == 31 and not queued, stderr
            else:
                assert code == 0, stderr
                assert (directory / "message").read_bytes() == body
                assert (directory / "runs").read_text().count("run") == 1
    assert qq.spool_is_empty()


def test_a_closed_stderr_loses_the_line_not_the_message(qq):
    out = qq.submit(b"Subject: x\n\nhi\n", ENV, preexec_fn=lambda: os.close(2))
    assert out.returncode == 0
    assert out.queued


@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_a_one_megabyte_address_is_11(qq, where):
    huge = b"a" * (1 << 20) + b"@example.com"
    env_bytes = envelope(huge, b"bob@example.org") if where == "sender" else envelope(b"", huge)
    out = qq.submit(b"Subject: x\n\nhi\n", env_bytes)
    assert_clean_failure(out, 11)


def test_a_zero_byte_message_is_handed_on_as_it_is(qq):
    out = qq.submit(b"", ENV)
    assert out.returncode == 0, out.stderr
    assert out.message == b""
