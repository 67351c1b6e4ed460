"""``qqfilter stats``: what the filter did, from its log lines; and what qmail-send bounced.

Counts per verdict and tag per hour or day, refusals by group as s/qmail's qmail-mrtg
groups them (``groups``), and the messages a resident client handled in-process (its line's
``fallback`` field); MRTG's four lines (as qmail-mrtg prints them: the last 305 seconds), for
all mail or for one group; a PNG of accepted and refused mail over time (matplotlib, the
``plot`` extra), by tag or by group, every period on its time axis (those without mail shaded)
and the share refused beside the counts, with the plotted numbers also stored in the PNG as
text chunks so they can be read back. Lines that cannot be read are counted and said, a
compressed log cut short is counted as far as it goes: whatever a log holds, the counts come
out (exit 0), and only a log that cannot be opened or read is an error (exit 1).

Like every tool (qqfilter.tools), the package holds its sub-parser, handler and writers;
reading logs back (``logread``) and following qmail-send's bounces (``sendlog``) are modules
of their own, each about one kind of log; which refusal counts in which group (``groups``) is
one table of its own.
"""

import argparse
import calendar
import datetime
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from qqfilter.tools.stats import groups, logread, sendlog

if TYPE_CHECKING:
    import matplotlib.dates

ACCEPTED = ("accept",)

MRTG_WINDOW = 305
"""``--window`` with ``--mrtg`` unless given: the last 305 seconds, as s/qmail's qmail-mrtg
counts them (MRTG polls every 5 minutes: each poll sees the rate since the one before, not a
count that grows until the log is rotated)."""

FALLBACK_SAID = "resident server unreachable, handled in-process"

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
    parser.add_argument(
        "--window",
        metavar="SECONDS",
        type=_seconds,
        help=f"count only lines stamped in the last SECONDS before now (0: the whole log; "
        f"default {MRTG_WINDOW} with --mrtg, as qmail-mrtg, else 0)",
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


def _seconds(text: str) -> int:
    """``--window``'s value: whole seconds, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _stats(options: argparse.Namespace) -> int:
    """Read the logs; print the counts (or MRTG's lines); draw them if asked. Exit 1 when a
    log cannot be opened or read; 0 else, also when lines were unreadable or a compressed log
    was cut short (both said: a rotation being compressed is read as far as it goes)."""
    window = options.window
    if window is None:
        window = MRTG_WINDOW if options.mrtg else 0
    counted = Stats(options.by, window=window)
    logs = logread.Logs(options.logs)
    try:
        counted.count(logs.read())
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
                    "fallbacks": sum(counted.fallbacks.values()),
                    "fallbacks_by_period": dict(sorted(counted.fallbacks.items())),
                    "window": counted.said_window(),
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
    if counted.counts:
        print(f"fallbacks: {sum(counted.fallbacks.values())}  ({FALLBACK_SAID})")
    if counted.window:
        print(f"window: {counted.said_window()}")
    if counted.unreadable:
        print(counted.said_unreadable())
    if counted.fallbacks:
        print(f"\n{'period':<17} {'fallbacks':>9}")
        for period, count in sorted(counted.fallbacks.items()):
            print(f"{period:<17} {count:>9}")
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
    """Counts from log lines, by period ("2026-11-24" or "2026-11-24 10:00", UTC). With a
    ``window`` (seconds, 0 for none), only lines stamped in the last ``window`` seconds up to
    ``now`` (the call's time by default) count: not those stamped later, nor lines without a
    time; unreadable lines are counted all the same."""

    def __init__(self, by: str = "day", window: int = 0, now: float | None = None) -> None:
        self.by = by
        self.window = window
        self.until = time.time() if now is None else now
        self.since = self.until - window if window else None
        self.counts: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.refusals: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.fallbacks: Counter[str] = Counter()
        self.first: float | None = None
        self.last: float | None = None
        self.bounces = sendlog.Bounces()
        self.unreadable: Counter[str] = Counter()
        self.step = 3600 if by == "hour" else 86400
        self._pattern = "%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d"
        self._periods: dict[int, str] = {}

    def period(self, when: float | None) -> str:
        if when is None:
            return "no time"
        start = int(when // self.step)
        found = self._periods.get(start)
        if found is None:
            found = time.strftime(self._pattern, time.gmtime(start * self.step))
            self._periods[start] = found
        return found

    def feed(self, line: logread.Line) -> None:
        """Count one line; one that cannot be read is counted under why (never raises)."""
        self.count([(line.time, line.text, line.why)])

    def count(self, lines: Iterable[logread.Read]) -> None:
        """Count lines read as (time, text, why) (``logread.Logs.read``), as ``feed`` does one
        by one: the loop that takes the time, every name it uses held locally."""
        unreadable, counts, refusals = self.unreadable, self.counts, self.refusals
        since, until, fields_of, period_of = (
            self.since,
            self.until,
            logread.counted_fields,
            self.period,
        )
        periods, step = self._periods, self.step
        bounces, refused, place = self.bounces, groups.REFUSED, groups.place
        first, last = self.first, self.last
        for when, text, why in lines:
            if why:
                unreadable[why] += 1
                continue
            if since is not None and (when is None or not since <= when <= until):
                continue
            try:
                fields = fields_of(text)
            except logread.Unreadable as exc:
                unreadable[str(exc)] += 1
                continue
            if when is None:
                period = "no time"
            else:
                known = periods.get(int(when // step))
                period = period_of(when) if known is None else known
            if fields is None:
                bounces.feed(text, period)
                continue
            verdict, tag, check, fallback = fields
            if when is not None:
                if first is None or when < first:
                    first = when
                if last is None or when > last:
                    last = when
            counts[period][(verdict, tag or check)] += 1
            if verdict in refused:
                refusals[period][place(tag, check)] += 1
            if fallback:
                self.fallbacks[period] += 1
        self.first, self.last = first, last

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
        """The time counted, ``hours:minutes`` (MRTG's third line): the window, or without
        one the time from the first line of qqfilter's to the last."""
        seconds = self.window or int((self.last or 0) - (self.first or 0))
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}"

    def said_window(self) -> str:
        """The window in words ("" without one)."""
        if not self.window or self.since is None:
            return ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.since))
        return f"the last {self.window} s, from {since} UTC"

    def mrtg(self, name: str) -> list[str]:
        """MRTG's four lines: accepted, not accepted, the time counted (``span``), the name. For
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

    def timeline(self) -> list[int]:
        """The start (Unix time) of every period from the first with a line of qqfilter's to
        the last, those without one too (for the plot, where an outage must show)."""
        timed = [
            calendar.timegm(time.strptime(period, self._pattern))
            for period in self.counts
            if period != "no time"
        ]
        if not timed:
            return []
        return list(range(min(timed), max(timed) + self.step, self.step))

    def refused_share(self) -> dict[str, float]:
        """Per period with messages: the percentage of them refused (reject and drop)."""
        shares = {}
        for period, counter in self.counts.items():
            total = sum(counter.values())
            refused = sum(n for (verdict, _tag), n in counter.items() if verdict in groups.REFUSED)
            shares[period] = round(100 * refused / total, 1)
        return shares

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


PLOT_WIDTH_MAX = 16.0
"""Widest the bars' part of a plot gets, in inches (1,600 pixels): a month by the hour is 720
bars, each 0.6 inch would make it 43,200 pixels wide."""

BARS_APART_MAX = 120
"""Up to this many periods, bars stand apart with a white edge; past it they touch (at a
pixel or two a bar, a gap would only blur them)."""

NO_MAIL = "#DDDDDD"
"""The shade over periods between the first and the last without a line of qqfilter's."""


def plot(stats: Stats, path: str, by: str = "auto") -> None:
    """Stacked bars per period: accepted, and refusals by tag (each verdict and tag, or check)
    or by group; ``auto`` is by tag up to PLOT_TAGS_MAX kinds of bar. Every period from the
    first to the last is on the time axis: those without mail (an outage) are shaded and said
    in the legend, never left out. On a second axis, the share of messages refused (reject and
    drop) per period as a line, broken where there was no mail. The width is capped
    (PLOT_WIDTH_MAX) and each kind of bar is one collection, so a month by the hour draws as
    fast as a week by the day. Lines without a time cannot be placed: they are not drawn, and
    the title says how many. The numbers drawn are stored in the PNG's text chunks:
    ``qqfilter`` ({period: {bar: count}}, every period drawn, ``{}`` for one without mail) and
    ``qqfilter-refused`` ({period: percent refused, or null}). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.ticker
    from matplotlib import pyplot
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    data = stats.series()
    labels = _labels(data)
    colours: dict[str, str] = {}
    if by == "group" or (by == "auto" and len(labels) > PLOT_TAGS_MAX):
        data = stats.series_by_group()
        labels = _labels(data, order=list(GROUP_COLOURS))
        colours = {label: GROUP_COLOURS.get(label, "#000000") for label in labels}
        title = "qqfilter: accepted mail, and refusals by group"
    else:
        cycle = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
        colours = {label: cycle[n % len(cycle)] for n, label in enumerate(labels)}
        title = "qqfilter: accepted and refused mail"
    untimed = sum(data.pop("no time", {}).values())
    if untimed:
        title += f" ({untimed} without a time, not drawn)"
    starts = stats.timeline()
    periods = [stats.period(start) for start in starts]
    drawn = {period: data.get(period, {}) for period in periods}
    shares = stats.refused_share()
    refused = {period: shares.get(period) for period in periods}

    step = stats.step / 86400  # matplotlib's dates are in days
    count = len(periods)
    apart = count <= BARS_APART_MAX
    width = step * (0.8 if apart else 1.0)
    # a bar is centred on its period's start, where the date axis puts its tick
    centres = [float(matplotlib.dates.date2num(_utc(start))) for start in starts]
    lefts = [x - width / 2 for x in centres]
    legend = 0.6 + 0.075 * max((len(label) for label in [*labels, "% refused"]), default=0)
    figure, axes = pyplot.subplots(
        figsize=(min(PLOT_WIDTH_MAX, max(6.0, count * 0.6)) + legend, 4.5), layout="constrained"
    )
    bottom = [0] * count
    handles: list[object] = []
    for label in labels:
        values = [drawn[period].get(label, 0) for period in periods]
        boxes = [
            ((x, b), (x, b + v), (x + width, b + v), (x + width, b))
            for x, b, v in zip(lefts, bottom, values, strict=True)
            if v
        ]
        bars = PolyCollection(
            boxes,
            facecolors=colours[label],
            edgecolors="white" if apart else "none",
            linewidths=0.5 if apart else 0,
            label=label,
        )
        axes.add_collection(bars)
        handles.append(bars)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for first, last in _runs([not row for row in drawn.values()]):
        axes.axvspan(
            centres[first] - step / 2,
            centres[last] + step / 2,
            color=NO_MAIL,
            zorder=0,
            linewidth=0,
        )
    if any(not row for row in drawn.values()):
        handles.append(Patch(color=NO_MAIL, label="no mail logged"))
    if count:
        axes.set_xlim(centres[0] - step * 0.7, centres[-1] + step * 0.7)
    axes.set_ylim(0, max(max(bottom, default=0), 1) * 1.05)
    axes.set_ylabel("messages")
    axes.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    locator, formatter = _ticks(stats.by, count)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(formatter)
    pyplot.setp(axes.get_xticklabels(), rotation=30, ha="right")
    axes.set_title(title)
    share = axes.twinx()
    percent = [math.nan if (value := refused[p]) is None else value for p in periods]
    (line,) = share.plot(
        centres,
        percent,
        color="black",
        linewidth=1.2 if apart else 0.8,
        marker="o",
        markersize=3 if apart else 1,
        label="% refused",
    )
    share.set_ylim(0, 100)
    share.set_ylabel("refused (reject, drop), % of messages")
    share.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter())
    handles.append(line)
    # the legend right of the bars, never over them; top to bottom as the bars are stacked
    bars_first = handles[: len(labels)][::-1] + handles[len(labels) :]
    figure.legend(handles=bars_first, loc="outside right upper", fontsize="small")
    figure.savefig(
        path,
        format="png",
        metadata={
            "qqfilter": json.dumps(drawn, sort_keys=True),
            "qqfilter-refused": json.dumps(refused, sort_keys=True),
        },
    )
    pyplot.close(figure)


def _ticks(
    by: str, count: int
) -> tuple["matplotlib.dates.DateLocator", "matplotlib.dates.DateFormatter"]:
    """Where the time axis of ``count`` periods has its labels, and how they read: at most a
    dozen, each at the start of a period (under its bar); every n-th hour, up to two days by
    the hour, else every n-th day."""
    import matplotlib.dates

    if by == "hour" and count <= 48:
        every = range(0, 24, max(1, math.ceil(count / 12)))
        return (
            matplotlib.dates.HourLocator(byhour=every),
            matplotlib.dates.DateFormatter("%Y-%m-%d %H:00"),
        )
    days = count if by == "day" else math.ceil(count / 24)
    return (
        matplotlib.dates.DayLocator(interval=max(1, math.ceil(days / 12))),
        matplotlib.dates.DateFormatter("%Y-%m-%d"),
    )


def _utc(start: int) -> "datetime.datetime":
    return datetime.datetime.fromtimestamp(start, datetime.UTC)


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The (first, last) indexes of each run of true ``flags``."""
    runs: list[tuple[int, int]] = []
    begun: int | None = None
    for at, flag in enumerate([*flags, False]):
        if flag and begun is None:
            begun = at
        elif not flag and begun is not None:
            runs.append((begun, at - 1))
            begun = None
    return runs


def _labels(data: dict[str, dict[str, int]], order: list[str] | None = None) -> list[str]:
    """The bars' labels: ``accepted`` first, then those in ``order``, then the rest sorted."""
    found = {label for row in data.values() for label in row}
    first = [label for label in order or ["accepted"] if label in found]
    return first + sorted(found - set(first))
