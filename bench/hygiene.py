"""Benchmark: what the sender hygiene checks cost per message, one-shot and resident.

    .venv/bin/python bench/hygiene.py

The tests' DNS server (nsd on loopback, fixtures/zones) answers; the client is 192.0.2.10
(ok.rdns.test, forward-confirmed), its HELO a.helo.test, its sender alice@mx.sender.test, and
it is on no DNS list. For each configuration (all off; each check alone; all four on), per
message: the wall time (median) and qqfilter's CPU (mean; resident: the client and the
server, from /proc in clock ticks), with every run of a configuration back to back with an
"all off" run so the machine's drift cancels ("+ms" is the difference of medians). One-shot
pays dnspython's import and asks nsd every time; a resident server imports once and answers
repeated questions from its cache, which is the point of running resident.
"""

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import measure  # noqa: E402
from measure import World, timed  # noqa: E402
from nameserver import Nsd  # noqa: E402 (the tests' helper starts nsd)

ENVELOPE = b"Falice@mx.sender.test\0Tbob@example.org\0\0"
MESSAGE = (
    b"Received: from ok.rdns.test (HELO a.helo.test) (192.0.2.10)\n"
    b"  by mx.example.org with SMTP; 26 Nov 2026 10:00:00 -0000\n"
    b"From: alice@mx.sender.test\nTo: bob@example.org\nSubject: hygiene\n\n"
    + b"A line of an ordinary message.\n"
    * 40
)
CONFIGURATIONS = {
    "helo (HELOCHECK=A)": {"HELOCHECK": "A"},
    "sender (MFDNSCHECK)": {"MFDNSCHECK": ""},
    "rdns (fcrdns)": {"QQF_RDNS": "fcrdns"},
    "dnsbl (1 list + 1 allow list)": {"QQF_DNSBL": "dnsbl.test", "QQF_DNSWL": "dnswl.test"},
}
CONFIGURATIONS["all four"] = {k: v for env in CONFIGURATIONS.values() for k, v in env.items()}
RUNS = 30


def submit(env: dict[str, str]) -> None:
    """One message, which must be accepted with no note of a skip."""
    code, log = measure.submit(env, MESSAGE, ENVELOPE)
    if code != 0 or b"verdict=accept" not in log or b"skipped" in log:
        raise SystemExit(f"not judged and queued ({code}): {log.decode()}")


def main() -> None:
    nsd = Nsd()
    try:
        with World("hygiene", "192.0.2.10", QQF_DNS=nsd.address) as world:
            world.serve(QQF_DNS=nsd.address, QQF_CONFIG="/dev/null")
            print(
                f"{'checks on':31} {'mode':9} {'off ms':>7} {'on ms':>7} {'+ms':>6} "
                f"{'CPU off':>8} {'CPU on':>7} {'CPU +':>6}"
            )
            for name, turned_on in CONFIGURATIONS.items():
                for mode, (env, server) in world.modes.items():
                    on_env = {**env, **turned_on}
                    submit(env)  # warm: the page cache, and the resident server's DNS cache
                    submit(on_env)
                    off, on, cpu_off, cpu_on = [], [], [], []
                    for _ in range(RUNS):
                        wall, cpu = timed(lambda env=env: submit(env), server)
                        off.append(wall * 1000)
                        cpu_off.append(cpu * 1000)
                        wall, cpu = timed(lambda env=on_env: submit(env), server)
                        on.append(wall * 1000)
                        cpu_on.append(cpu * 1000)
                    o, n = statistics.median(off), statistics.median(on)
                    co, cn = statistics.fmean(cpu_off), statistics.fmean(cpu_on)
                    print(
                        f"{name:31} {mode:9} {o:7.1f} {n:7.1f} {n - o:6.1f} {co:8.1f} "
                        f"{cn:7.1f} {cn - co:6.1f}"
                    )
            print(f"runs: {RUNS} per configuration and mode; message {len(MESSAGE)} bytes")
    finally:
        nsd.stop()


if __name__ == "__main__":
    main()
