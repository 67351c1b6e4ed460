"""``qqfilter stats``: what the filter did, from its log lines; and what qmail-send bounced.

Counts per verdict and tag per hour or day; MRTG's four lines (as qmail-mrtg prints them);
a PNG of accepted and refused mail over time (matplotlib, the ``plot`` extra), with the
plotted numbers also stored in the PNG as a text chunk so they can be read back.
"""

import json
import time
from collections import Counter, defaultdict

from qqfilter.logread import Line, qqfilter_fields
from qqfilter.sendlog import Bounces

ACCEPTED = ("accept",)


class Stats:
    """Counts from log lines, by period ("2026-11-24" or "2026-11-24 10:00", UTC)."""

    def __init__(self, by: str = "day") -> None:
        self.by = by
        self.counts: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.first: float | None = None
        self.last: float | None = None
        self.bounces = Bounces()

    def period(self, when: float | None) -> str:
        if when is None:
            return "no time"
        pattern = "%Y-%m-%d %H:00" if self.by == "hour" else "%Y-%m-%d"
        return time.strftime(pattern, time.gmtime(when))

    def feed(self, line: Line) -> None:
        period = self.period(line.time)
        fields = qqfilter_fields(line.text)
        if fields is None:
            self.bounces.feed(line.text, period)
            return
        if line.time is not None:
            self.first = line.time if self.first is None else min(self.first, line.time)
            self.last = line.time if self.last is None else max(self.last, line.time)
        verdict = fields.get("verdict", "")
        tag = fields.get("tag") or fields.get("check") or ""
        self.counts[period][(verdict, tag)] += 1

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
