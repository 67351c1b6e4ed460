"""``qqfilter stats``: what the filter did, from its log lines; and what qmail-send bounced.

Counts per verdict and tag per hour or day; MRTG's four lines (as qmail-mrtg prints them);
a PNG of accepted and refused mail over time (matplotlib, the ``plot`` extra), with the
plotted numbers also stored in the PNG as a text chunk so they can be read back. Lines that
cannot be read are counted and said, a compressed log cut short is counted as far as it goes:
whatever a log holds, the counts come out (exit 0), and only a log that cannot be opened or
read is an error (exit 1).

Like every tool (qqfilter.tools), the package holds its sub-parser, handler and writers;
reading logs back (``logread``) and following qmail-send's bounces (``sendlog``) are modules
of their own, each about one kind of log.
"""

import argparse
import json
import sys
import time
from collections import Counter, defaultdict

from qqfilter.tools.stats import logread, sendlog

ACCEPTED = ("accept",)


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``stats`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "stats",
        help="counts per verdict and tag over time, from qqfilter's (and qmail-send's) logs",
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="log files (.gz too; - = stdin)")
    parser.add_argument("--by", choices=("hour", "day"), default="day", help="the period")
    parser.add_argument("--mrtg", metavar="NAME", help="print the four lines MRTG reads")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the counts (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="the counts as one JSON object")
    parser.set_defaults(run=_stats)


def _stats(options: argparse.Namespace) -> int:
    """Read the logs; print the counts (or MRTG's lines); draw them if asked. Exit 1 when a
    log cannot be opened or read; 0 else, also when lines were unreadable or a compressed log
    was cut short (both said: a rotation being compressed is read as far as it goes)."""
    counted = Stats(options.by)
    logs = logread.Logs(options.logs)
    try:
        for line in logs:
            counted.feed(line)
    except OSError as exc:
        print(f"qqfilter: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for note in logs.cut:
        print(f"qqfilter: {note}: counted the lines before", file=sys.stderr)
    if options.plot:
        try:
            plot(counted, options.plot)
        except ImportError:
            print(
                "qqfilter: --plot needs matplotlib: pip install 'qqfilter[plot]'", file=sys.stderr
            )
            return 1
    if options.mrtg:
        print("\n".join(counted.mrtg(options.mrtg)))
        if counted.unreadable:
            print(f"qqfilter: {counted.said_unreadable()}", file=sys.stderr)
    elif options.json:
        bounces = counted.bounces
        print(
            json.dumps(
                {
                    "counts": [
                        dict(zip(("period", "verdict", "tag", "count"), row, strict=True))
                        for row in counted.table()
                    ],
                    "totals": dict(counted.totals()),
                    "unreadable": dict(counted.unreadable),
                    "cut_short": logs.cut,
                    "bounces": {
                        "generated": dict(bounces.generated),
                        "results": {p: dict(c) for p, c in bounces.results.items()},
                        "recipients": dict(bounces.recipients.most_common(20)),
                    },
                },
                ensure_ascii=True,
            )
        )
    else:
        _print_stats(counted)
    return 0


def _print_stats(counted: "Stats") -> None:
    print(f"{'period':<17} {'verdict':<10} {'tag':<40} {'count':>7}")
    for period, verdict, tag, count in counted.table():
        print(f"{period:<17} {verdict:<10} {tag:<40} {count:>7}")
    totals = counted.totals()
    print(
        f"\ntotal: {sum(totals.values())}  "
        + "  ".join(f"{v}: {n}" for v, n in sorted(totals.items()))
    )
    if counted.unreadable:
        print(counted.said_unreadable())
    bounces = counted.bounces
    if not bounces.seen:
        return
    print(f"\n{'period':<17} {'bounces sent':>12} {'delivered':>10} {'failed':>7} {'deferred':>9}")
    for period in sorted(set(bounces.generated) | set(bounces.results)):
        results = bounces.results[period]
        print(
            f"{period:<17} {bounces.generated[period]:>12} {results['success']:>10} "
            f"{results['failure']:>7} {results['deferral']:>9}"
        )
    if bounces.recipients:
        print("\nbounces went to (most first):")
        for recipient, count in bounces.recipients.most_common(10):
            print(f"  {count:>6}  {recipient}")


class Stats:
    """Counts from log lines, by period ("2026-11-24" or "2026-11-24 10:00", UTC)."""

    def __init__(self, by: str = "day") -> None:
        self.by = by
        self.counts: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.first: float | None = None
        self.last: float | None = None
        self.bounces = sendlog.Bounces()
        self.unreadable: Counter[str] = Counter()

    def period(self, when: float | None) -> str:
        if when is None:
            return "no time"
        pattern = "%Y-%m-%d %H:00" if self.by == "hour" else "%Y-%m-%d"
        return time.strftime(pattern, time.gmtime(when))

    def feed(self, line: logread.Line) -> None:
        """Count one line; one that cannot be read is counted under why (never raises)."""
        if line.why:
            self.unreadable[line.why] += 1
            return
        period = self.period(line.time)
        try:
            fields = logread.qqfilter_fields(line.text)
        except logread.Unreadable as exc:
            self.unreadable[str(exc)] += 1
            return
        if fields is None:
            self.bounces.feed(line.text, period)
            return
        if line.time is not None:
            self.first = line.time if self.first is None else min(self.first, line.time)
            self.last = line.time if self.last is None else max(self.last, line.time)
        verdict = fields.get("verdict", "")
        tag = fields.get("tag") or fields.get("check") or ""
        self.counts[period][(verdict, tag)] += 1

    def said_unreadable(self) -> str:
        """The unreadable lines in words: how many, and why."""
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.unreadable.items()))
        return f"unreadable lines: {sum(self.unreadable.values())} ({reasons})"

    def totals(self) -> Counter[str]:
        """Messages per verdict, over all periods."""
        found: Counter[str] = Counter()
        for counter in self.counts.values():
            for (verdict, _tag), count in counter.items():
                found[verdict] += count
        return found

    def table(self) -> list[tuple[str, str, str, int]]:
        """(period, verdict, tag, count) rows, periods in order."""
        return [
            (period, verdict, tag, count)
            for period in sorted(self.counts)
            for (verdict, tag), count in sorted(self.counts[period].items())
        ]

    def mrtg(self, name: str) -> list[str]:
        """MRTG's four lines: accepted, not accepted, the span the log covers, the name."""
        totals = self.totals()
        accepted = sum(totals[v] for v in ACCEPTED)
        span = int((self.last or 0) - (self.first or 0))
        hours, minutes = span // 3600, span % 3600 // 60
        return [str(accepted), str(sum(totals.values()) - accepted), f"{hours}:{minutes:02d}", name]

    def series(self) -> dict[str, dict[str, int]]:
        """For the plot: per period, accepted and each refusal (by tag, else check)."""
        data: dict[str, dict[str, int]] = {}
        for period in sorted(self.counts):
            row: Counter[str] = Counter()
            for (verdict, tag), count in self.counts[period].items():
                row["accepted" if verdict in ACCEPTED else f"{verdict} {tag}".strip()] += count
            data[period] = dict(row)
        return data


def plot(stats: Stats, path: str) -> None:
    """Stacked bars per period: accepted, and each kind of refusal. Needs matplotlib."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib import pyplot

    data = stats.series()
    periods = list(data)
    labels = sorted({label for row in data.values() for label in row})
    if "accepted" in labels:
        labels.remove("accepted")
        labels.insert(0, "accepted")
    figure, axes = pyplot.subplots(figsize=(max(6, len(periods) * 0.6), 4.5))
    bottom = [0] * len(periods)
    for label in labels:
        values = [data[p].get(label, 0) for p in periods]
        axes.bar(periods, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("messages")
    axes.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_title("qqfilter: accepted and refused mail")
    axes.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"qqfilter": json.dumps(data, sort_keys=True)})
    pyplot.close(figure)
