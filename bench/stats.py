"""Benchmark: ``qqfilter stats`` on a month of a busy server's log (~480,000 lines).

    .venv/bin/python bench/stats.py [--lines N] [--format tai64n|tai64nlocal|syslog|iso]
                                    [--repeat N] [--keep DIR] [--no-plot]

Writes a multilog-style log: TAI64N-stamped lines (or, with ``--format``, as tai64nlocal or
syslog would have them), 30 days from 2026-11-01, with qqfilter's own lines (mixed verdicts,
tags and checks, a reason quoted where it has spaces or quotes, recipients and a Message-ID
(quoted when it holds a ``=``), an address with an apostrophe now and then, some resident
fallbacks, one in fifty as JSON) between tcpserver's lines, and an outage (two days
without mail, one of them whole) for the charts to show. Then times
``qqfilter stats`` (the text table), ``--by hour --json``, ``--mrtg`` (the whole file,
``--window 0``) and, unless ``--no-plot``, the daily and hourly charts of the month (``--by
hour --plot``: 720 periods): the best of ``--repeat`` runs (3) after a warm-up, wall time and
the CPU time the command used (less disturbed by other load). With ``--keep DIR`` the log and
the PNGs are left in DIR.
"""

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qqfilter.logline import format_line  # noqa: E402

QQFILTER = str(Path(sys.executable).with_name("qqfilter"))
START = 1_793_491_200  # 2026-11-01 00:00 UTC
DAYS = 30
OUTAGE = (START + 86400 * 17 + 3600 * 6, START + 86400 * 19 + 3600 * 12)  # all of Nov 19
TAI64_EPOCH = 2**62 + 10
FALLBACK = "resident server unreachable, handled in-process"

# (weight, verdict, code, check, tag, reason)
KINDS = [
    (600, "accept", 0, "", "", ""),
    (60, "reject", 31, "spf", "Reject::SPF::Fail", "SPF fail for {domain}: not permitted"),
    (50, "reject", 31, "mime", "Reject::DATA::MIME_Attach", 'attachment "{file}": blocked name'),
    (45, "reject", 31, "dnsbl", "Reject::SNDR::DNSBL", "listed in zen.spamhaus.org"),
    (40, "reject", 31, "helo", "Reject::SNDR::Bad_Helo", "HELO {ip} is a bare address"),
    (30, "reject", 31, "rdns", "Reject::SNDR::DNS_Rhost", "no reverse DNS for {ip}"),
    (25, "reject", 31, "sender", "Reject::ORIG::DNS_MF", "{domain} has no MX and no A"),
    (25, "reject", 31, "recipients", "Reject::RCPT::Failed_Rcptto", "no such user"),
    (20, "drop", 0, "spamd", "Reject::DATA::Spam_Message", "spam, score 14.2"),
    (15, "reject", 31, "clamd", "Reject::DATA::Virus_Infected", "Win.Trojan.Agent-1"),
    (10, "reject", 31, "mime", "Reject::DATA::Bad_Loader", "a Windows loader in base64"),
    (5, "reject", 31, "size", "Reject::DATA::Invalid_Size", "message over 10485760 bytes"),
    (8, "tempfail", 71, "clamd", "", "clamd unreachable: connection refused"),
    (2, "error", 81, "", "", "internal error"),
]
WEIGHTS = [k[0] for k in KINDS]
RECIPIENTS = ["bob", "carol", "dave", "postmaster", "sales"]


def stamp(seconds: float, style: str) -> str:
    """``seconds`` as the chosen log format stamps a line (before the program's text)."""
    whole = int(seconds)
    if style == "tai64n":
        return f"@{whole + TAI64_EPOCH:016x}{int((seconds - whole) * 1e9):08x} "
    if style == "tai64nlocal":
        nanos = int((seconds - whole) * 1e9)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + f".{nanos:09d} "
    if style == "iso":
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00 mx1 ", time.gmtime(whole))
    return time.strftime("%b %e %H:%M:%S mx1 ", time.gmtime(whole))


def program(style: str, name: str, pid: int) -> str:
    """Syslog names the program in its prefix (``qqfilter[123]: ``); multilog does not."""
    return f"{name}[{pid}]: " if style in ("syslog", "iso") else ""


def write_log(path: Path, lines: int, style: str, rng: random.Random) -> int:
    """Write about ``lines`` lines; return how many of them are qqfilter's."""
    busy = [t for t in range(START, START + DAYS * 86400, 60) if not OUTAGE[0] <= t < OUTAGE[1]]
    # one qqfilter line and (on average) a fifth of a tcpserver line per message
    messages = int(lines / 1.2)
    times = sorted(busy[n * len(busy) // messages] + rng.random() * 60 for n in range(messages))
    ours = 0
    with open(path, "w", encoding="ascii") as out:
        for n, when in enumerate(times):
            pid = 10_000 + n % 50_000
            if rng.random() < 0.2:
                out.write(f"{stamp(when, style)}tcpserver: status: {rng.randint(0, 40)}/40\n")
            _, verdict, code, check, tag, reason = rng.choices(KINDS, WEIGHTS)[0]
            ip = f"198.51.100.{rng.randint(1, 254)}"
            sender = rng.choices(
                ["<alice@example.com>", "<>", "<news@lists.example>", "<o'brien@example.ie>"],
                [60, 20, 19, 1],
            )[0]
            fields: dict[str, object] = {
                "pid": pid,
                "verdict": verdict,
                "code": code,
                "check": check,
                "tag": tag,
                "reason": reason.format(domain="forged.example", file="invoice.pdf.exe", ip=ip),
                "ip": ip,
                "from": sender,
                "rcpts": (rcpts := rng.randint(1, 3)),
                "size": rng.randint(800, 200_000),
                "ms": rng.randint(2, 400),
            }
            fields["to"] = ",".join(
                f"<{name}@example.org>" for name in rng.sample(RECIPIENTS, rcpts)
            )
            fields["msgid"] = rng.choice(
                [
                    f"<{int(when)}.{pid}@mail.example.com>",
                    f"<CAF{pid:x}=Xq+{n % 977}_w@mail.gmail.com>",  # '=': quoted
                    "",
                ]
            )
            if rng.random() < 0.01:
                fields["fallback"] = FALLBACK
            json_line = rng.random() < 0.02
            text = format_line(fields, "json" if json_line else "text")
            out.write(f"{stamp(when, style)}{program(style, 'qqfilter', pid)}{text}\n")
            ours += 1
    return ours


def timed(*args: str) -> tuple[float, float]:
    """Run ``qqfilter stats`` with ``args``: its wall time and CPU time (user and system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([QQFILTER, "stats", *args], capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"qqfilter stats {' '.join(args)} failed: {out.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return took, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=480_000)
    parser.add_argument(
        "--format", choices=("tai64n", "tai64nlocal", "syslog", "iso"), default="tai64n"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, the best shown")
    parser.add_argument("--keep", metavar="DIR", help="write the log and the PNGs here")
    parser.add_argument("--no-plot", action="store_true", help="time the counting only")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(options.keep or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        log = directory / "current"
        ours = write_log(log, options.lines, options.format, random.Random(21))
        if options.format == "syslog":  # the year of a syslog stamp is the file's
            os.utime(log, (START + DAYS * 86400,) * 2)
        with open(log, "rb") as stream:
            total = sum(1 for _ in stream)
        print(f"{total:,} lines ({ours:,} of qqfilter's), {log.stat().st_size / 1e6:.0f} MB,")
        print(f"{options.format} stamps, {DAYS} days; the best of {options.repeat} runs:")
        timed("--mrtg", "mx1", "--window", "0", str(log))  # warm the page cache and .pyc files
        runs = [
            ("stats (text table, by day)", [str(log)]),
            ("stats --by hour --json", ["--by", "hour", "--json", str(log)]),
            ("stats --mrtg mx1 --window 0", ["--mrtg", "mx1", "--window", "0", str(log)]),
        ]
        if not options.no_plot:
            runs += [
                ("stats --plot (by day)", ["--plot", str(directory / "day.png"), str(log)]),
                (
                    "stats --by hour --plot (720 hours)",
                    ["--by", "hour", "--plot", str(directory / "hour.png"), str(log)],
                ),
            ]
        for name, args in runs:
            took, cpu = min(timed(*args) for _ in range(options.repeat))
            print(
                f"  {name:<36} {took:6.2f} s wall {cpu:6.2f} s CPU"
                f"  ({took / total * 1e6:.1f} us a line)"
            )


if __name__ == "__main__":
    main()
