"""``qqfilter stats``: what the filter did, from its log lines; and what qmail-send bounced.

Counts per verdict and tag per hour or day, and refusals by group as s/qmail's qmail-mrtg
groups them (``groups``); MRTG's four lines (as qmail-mrtg prints them), for all mail or for
one group; a PNG of accepted and refused mail over time (matplotlib, the ``plot`` extra), by
tag or by group, with the plotted numbers also stored in the PNG as a text chunk so they can
be read back. Lines that cannot be read are counted and said, a compressed log cut short is
counted as far as it goes: whatever a log holds, the counts come out (exit 0), and only a log
that cannot be opened or read is an error (exit 1).

Like every tool (qqfilter.tools), the package holds its sub-parser, handler and writers;
reading logs back (``logread``) and following qmail-send's bounces (``sendlog``) are modules
of their own, each about one kind of log; which refusal counts in which group (``groups``) is
one table of its own.
"""

import argparse
import json
import sys
import time
from collections import Counter, defaultdict

from qqfilter.tools.stats import groups, logread, sendlog

ACCEPTED = ("accept",)

PLOT_TAGS_MAX = 10
"""``--plot-by auto`` draws by tag up to this many kinds of bar (matplotlib's default colour
cycle has 10: past it colours repeat and the legend cannot tell them apart), by group past it."""


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``stats`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "stats",
        help="counts per verdict and tag over time, from qqfilter's (and qmail-send's) logs",
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="log files (.gz too; - = stdin)")
    parser.add_argument("--by", choices=("hour", "day"), default="day", help="the period")
    parser.add_argument(
        "--mrtg",
        metavar="NAME",
        help="print the four lines MRTG reads: accepted and not; for a group ("
        + ", ".join(f"{g.name} or {g.letter}" for g in groups.GROUPS)
        + ") its first two series",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the counts (needs matplotlib)")
    parser.add_argument(
        "--plot-by",
        choices=("auto", "tag", "group"),
        default="auto",
        help=f"refusals in the plot by tag, or by group (auto: by tag up to {PLOT_TAGS_MAX} kinds)",
    )
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
            plot(counted, options.plot, options.plot_by)
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
                    "groups": counted.grouped(),
                    "groups_by_period": counted.grouped_by_period(),
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
    _print_groups(counted)
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


def _print_groups(counted: "Stats") -> None:
    """Refusals by group: per period the groups that had any, then ``all`` the log, every
    group with every series. Nothing when the logs hold no line of qqfilter's."""
    if not counted.counts:
        return
    print(f"\nrefusals by group (verdicts {' and '.join(groups.REFUSED)}):")
    print(f"{'period':<17} {'group':<11} series")
    for period, found in counted.grouped_by_period().items():
        for group, series in found.items():
            print(f"{period:<17} {group:<11} {_said(series)}")
    for group, series in counted.grouped().items():
        print(f"{'all':<17} {group:<11} {_said(series)}")


def _said(series: dict[str, int]) -> str:
    return "  ".join(f"{name} {count}" for name, count in series.items())


class Stats:
    """Counts from log lines, by period ("2026-11-24" or "2026-11-24 10:00", UTC)."""

    def __init__(self, by: str = "day") -> None:
        self.by = by
        self.counts: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.refusals: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
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
        tag, check = fields.get("tag", ""), fields.get("check", "")
        self.counts[period][(verdict, tag or check)] += 1
        if groups.refused(verdict):
            self.refusals[period][groups.place(tag, check)] += 1

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

    def grouped(self) -> dict[str, dict[str, int]]:
        """Refusals over all periods: every group with every series (0 too), in order; the
        ``other`` series and group when anything was counted there."""
        total: Counter[tuple[str, str]] = Counter()
        for counter in self.refusals.values():
            total.update(counter)
        return _ordered(total, zeros=True)

    def grouped_by_period(self) -> dict[str, dict[str, dict[str, int]]]:
        """Refusals per period, periods in order: only the groups and series counted in it,
        in the order of ``grouped``."""
        return {
            period: _ordered(self.refusals[period], zeros=False) for period in sorted(self.refusals)
        }

    def span(self) -> str:
        """The time the log covers, ``hours:minutes`` (MRTG's third line)."""
        seconds = int((self.last or 0) - (self.first or 0))
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}"

    def mrtg(self, name: str) -> list[str]:
        """MRTG's four lines: accepted, not accepted, the span the log covers, the name. For
        ``name`` a group (or qmail-mrtg's letter for it): that group's first two series, and
        the group's name as the fourth line."""
        group = groups.find(name)
        if group is not None:
            counts = self.grouped()[group.name]
            first, second = (s.name for s in group.series[:2])
            return [str(counts[first]), str(counts[second]), self.span(), group.name]
        totals = self.totals()
        accepted = sum(totals[v] for v in ACCEPTED)
        return [str(accepted), str(sum(totals.values()) - accepted), self.span(), name]

    def series(self) -> dict[str, dict[str, int]]:
        """For the plot: per period, accepted and each refusal (by tag, else check)."""
        data: dict[str, dict[str, int]] = {}
        for period in sorted(self.counts):
            row: Counter[str] = Counter()
            for (verdict, tag), count in self.counts[period].items():
                row["accepted" if verdict in ACCEPTED else f"{verdict} {tag}".strip()] += count
            data[period] = dict(row)
        return data

    def series_by_group(self) -> dict[str, dict[str, int]]:
        """For the plot by group: per period, accepted, the refusals of each group, and the
        rest by verdict (tempfail, error)."""
        data: dict[str, dict[str, int]] = {}
        for period in sorted(self.counts):
            row: Counter[str] = Counter()
            for (verdict, _tag), count in self.counts[period].items():
                if verdict in ACCEPTED:
                    row["accepted"] += count
                elif not groups.refused(verdict):
                    row[verdict or "no verdict"] += count
            for (group, _series), count in self.refusals[period].items():
                row[group] += count
            data[period] = dict(row)
        return data


def _ordered(counter: Counter[tuple[str, str]], zeros: bool) -> dict[str, dict[str, int]]:
    """``counter`` of (group, series) as {group: {series: count}} in the order of
    groups.GROUPS, ``other`` last (its names sorted); without ``zeros``, only what was counted."""
    found = groups.empty()
    for (group, series), count in sorted(counter.items()):
        row = found.setdefault(group, {})
        row[series] = row.get(series, 0) + count
    if zeros:
        return found
    return {
        group: {name: count for name, count in row.items() if count}
        for group, row in found.items()
        if any(row.values())
    }


GROUP_COLOURS = {
    "accepted": "#009E73",
    "sender": "#E69F00",
    "originator": "#56B4E9",
    "recipient": "#0072B2",
    "base64": "#CC79A7",
    "data": "#D55E00",
    groups.OTHER: "#999999",
    "tempfail": "#F0E442",
}
"""Colours of the plot by group (Okabe and Ito's, told apart with colour blindness too); the
same group has the same colour in every plot. Anything else is black."""


def plot(stats: Stats, path: str, by: str = "auto") -> None:
    """Stacked bars per period: accepted, and refusals by tag (each verdict and tag, or check)
    or by group; ``auto`` is by tag up to PLOT_TAGS_MAX kinds of bar. Needs matplotlib."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib import pyplot

    data = stats.series()
    labels = _labels(data)
    colours: dict[str, str] = {}
    if by == "group" or (by == "auto" and len(labels) > PLOT_TAGS_MAX):
        data = stats.series_by_group()
        labels = _labels(data, order=list(GROUP_COLOURS))
        colours = {label: GROUP_COLOURS.get(label, "#000000") for label in labels}
        title = "qqfilter: accepted mail, and refusals by group"
    else:
        title = "qqfilter: accepted and refused mail"
    periods = list(data)
    # the legend right of the bars, never over them: the figure is widened by its width
    legend = 0.6 + 0.075 * max((len(label) for label in labels), default=0)
    figure, axes = pyplot.subplots(
        figsize=(max(6, len(periods) * 0.6) + legend, 4.5), layout="constrained"
    )
    bottom = [0] * len(periods)
    for label in labels:
        values = [data[p].get(label, 0) for p in periods]
        axes.bar(
            periods,
            values,
            bottom=bottom,
            label=label,
            color=colours.get(label),
            edgecolor="white",
            linewidth=0.5,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("messages")
    axes.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_title(title)
    handles, names = axes.get_legend_handles_labels()
    # top to bottom as the bars are stacked
    figure.legend(handles[::-1], names[::-1], loc="outside right upper", fontsize="small")
    pyplot.setp(axes.get_xticklabels(), rotation=30, ha="right")
    figure.savefig(path, format="png", metadata={"qqfilter": json.dumps(data, sort_keys=True)})
    pyplot.close(figure)


def _labels(data: dict[str, dict[str, int]], order: list[str] | None = None) -> list[str]:
    """The bars' labels: ``accepted`` first, then those in ``order``, then the rest sorted."""
    found = {label for row in data.values() for label in row}
    first = [label for label in order or ["accepted"] if label in found]
    return first + sorted(found - set(first))
