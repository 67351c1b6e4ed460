"""Benchmark: what DKIM verification, DMARC and DKIM signing cost per message, one-shot and
resident.

    .venv/bin/python bench/dkim_dmarc.py

The tests' DKIM world (tests/dkimworld.py: keys made for the run, a real nsd publishing them)
answers. For each configuration, per message: the wall time (median) and qqfilter's CPU
(mean; resident: the client and the server, from /proc in clock ticks), each run back to
back with an all-off run so the machine's drift cancels ("+ms" is the difference of medians).
One-shot, the first signature costs the imports (dnspython, dkimpy, PyNaCl) and mail without
one costs nothing; resident, those are preloaded and the keys come from the DNS cache.
"""

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import measure  # noqa: E402
from dkimworld import World as Keys  # noqa: E402 (the tests' keys and nsd)
from measure import World, timed  # noqa: E402

ENVELOPE = b"Fbounce@dkim.test\0Tbob@example.org\0\0"
SMTPD = (
    b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 26 Nov 2026 10:00:00 -0000\n"
)
BODY = (
    b"From: Alice <alice@reject.dkim.test>\nTo: bob@example.org\nSubject: dkim\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\nMessage-ID: <b@dkim.test>\n\n"
    + b"A line of an ordinary message.\n"
    * 40
)
RUNS = 30


def submit(env: dict[str, str], message: bytes, expect: bytes) -> None:
    """One message, which must be accepted and its log line hold ``expect``."""
    code, log = measure.submit(env, message, ENVELOPE)
    if code != 0 or expect not in log:
        raise SystemExit(f"not as expected ({code}): {log.decode()}")


def main() -> None:
    keys = Keys()
    home = Path(tempfile.mkdtemp(prefix="qqf-bench-dkim-home-"))
    where = home / "control" / "domainkeys" / "reject.dkim.test"
    where.mkdir(parents=True)
    (where / "default").write_bytes(keys.keys["signer"].pem)
    (where / "default").chmod(0o600)
    signed = SMTPD + keys.sign(BODY, "dkim.test", "rsa")
    both = SMTPD + keys.sign(keys.sign(BODY, "dkim.test", "ed"), "dkim.test", "rsa")
    plain = SMTPD + BODY
    configurations = {
        "verify, no signature": ({"QQF_DKIM": "verify"}, plain, b"dkim: none"),
        "verify, RSA 2048": ({"QQF_DKIM": "verify"}, signed, b"dkim: pass"),
        "verify, RSA + Ed25519": ({"QQF_DKIM": "verify"}, both, b"dkim: pass"),
        "DMARC stamp, no signature": ({"QQF_DMARC": "stamp"}, plain, b"dmarc: pass"),
        "SPF 1 + verify + DMARC enforce": (
            {"SPF": "1", "QQF_DKIM": "verify", "QQF_DMARC": "enforce"},
            signed,
            b"dmarc: pass",
        ),
        "sign (RELAYCLIENT), RSA 2048": (
            {"QQF_DKIMSIGN": "relayclient", "RELAYCLIENT": ""},
            plain,
            b"dkimsign: signed",
        ),
    }
    try:
        with World("dkim", QQF_DNS=keys.address, QQF_QMAILHOME=str(home)) as world:
            world.serve(QQF_DNS=keys.address, QQF_CONFIG="/dev/null", QQF_QMAILHOME=str(home))
            print(
                f"{'configuration':31} {'mode':9} {'off ms':>7} {'on ms':>7} {'+ms':>6} "
                f"{'CPU off':>8} {'CPU on':>7} {'CPU +':>6}"
            )
            for name, (turned_on, message, expect) in configurations.items():
                for mode, (env, server) in world.modes.items():
                    on_env = {**env, **turned_on}
                    submit(env, message, b"verdict=accept")  # warm: caches
                    submit(on_env, message, expect)
                    off, on, cpu_off, cpu_on = [], [], [], []
                    for _ in range(RUNS):
                        wall, cpu = timed(lambda e=env, m=message: submit(e, m, b"accept"), server)
                        off.append(wall * 1000)
                        cpu_off.append(cpu * 1000)
                        wall, cpu = timed(
                            lambda e=on_env, m=message, x=expect: submit(e, m, x), server
                        )
                        on.append(wall * 1000)
                        cpu_on.append(cpu * 1000)
                    o, n = statistics.median(off), statistics.median(on)
                    co, cn = statistics.fmean(cpu_off), statistics.fmean(cpu_on)
                    print(
                        f"{name:31} {mode:9} {o:7.1f} {n:7.1f} {n - o:6.1f} {co:8.1f} "
                        f"{cn:7.1f} {cn - co:6.1f}"
                    )
            print(f"runs: {RUNS} per configuration and mode; message {len(signed)} bytes")
    finally:
        keys.stop()


if __name__ == "__main__":
    main()
