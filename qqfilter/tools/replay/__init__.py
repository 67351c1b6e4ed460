"""``qqfilter replay``: what the QMAILQUEUE pipeline would do to mail already received.

Each message goes through exactly the dry run ``qqfilter test`` uses (same spool, checks,
policy and exit codes, nothing queued, no source changed), in worker processes when asked.
Results come back in source order, so two runs over the same sources compare line by line.
Sources are read as they are found and each result is written as it comes, with counters for
the summary: a million messages cost what one does. Only regular files are read, links only
when named on the command line, and no message past ``--max-size``: what is left out is said.

Like every tool (qqfilter.tools), the package holds its sub-parser, handler and writers (text,
JSON lines, CSV); finding and reading the sources is a module of its own (``sources``).
"""

import argparse
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator

from qqfilter.message import Connection
from qqfilter.settings import Settings, count
from qqfilter.tools import dryrun
from qqfilter.tools.replay import sources

FIELDS = ("source", "verdict", "code", "check", "tag", "reason", "notes", "derived")
MAX_SIZE = 64 << 20
"""The largest message replayed when --max-size does not say. (A message over QQF_MAXSIZE
is replayed, and refused by the size check as the QMAILQUEUE program refuses it, having read
only the limit + 1 bytes of it.)"""
NOT_REPLAYED = ("unreadable", "skipped")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``replay`` to the subcommands ``sub``."""
    parser = sub.add_parser(
        "replay",
        help="what the filter would do to mail already received (never queues)",
        description="Replay message files (with X.env envelopes beside them), directories, "
        "maildirs, mbox files and qmail queue directories through the filter, dry. What the "
        "options below do not give and a source does not hold (envelope, client) comes from "
        "each message's headers.",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    dryrun.add_client_options(parser, every=" for all")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes")
    parser.add_argument(
        "--max-size",
        type=_byte_count,
        metavar="BYTES",
        help=f"skip larger messages unread (default: {MAX_SIZE})",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines, then a summary line")
    output.add_argument("--csv", action="store_true", help="CSV rows, then the summary rows")
    parser.set_defaults(run=_replay)


def _byte_count(value: str) -> int:
    try:
        return count(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replay(options: argparse.Namespace) -> int:
    """Replay the sources; exit 1 if a message was not replayed (unreadable or skipped: the
    run goes on), 0 else."""
    settings = dryrun.settings_or_say()
    if settings is None:
        return 1
    limit = options.max_size or MAX_SIZE
    how = Options(
        sender=options.sender,
        recipients=options.recipients,
        ip=options.ip,
        helo=options.helo,
        relayclient=options.relayclient,
        limit=limit,
    )
    progress = Progress(options.sources)
    counts = Summary()
    writer = _record_writer(options)
    for record in replay(sources.items(options.sources), how, settings, max(1, options.jobs)):
        counts.add(record)
        writer(record)
        progress.step()
    progress.end()
    _write_summary(options, counts.tables())
    return 1 if any(counts.verdicts[v] for v in NOT_REPLAYED) else 0


def _record_writer(options: argparse.Namespace):
    if options.json:
        import json

        return lambda record: print(json.dumps(record, ensure_ascii=True))
    if options.csv:
        import csv

        out = csv.writer(sys.stdout)
        out.writerow(FIELDS)
        return lambda record: out.writerow([record[f] for f in FIELDS])

    def text(record: dict[str, object]) -> None:
        words = [str(record["verdict"]), str(record["source"])]
        words += [str(record[f]) for f in ("tag", "reason") if record[f]]
        print("  ".join(words))

    return text


def _write_summary(options: argparse.Namespace, counts: dict[str, dict[str, int]]) -> None:
    if options.json:
        import json

        print(json.dumps({"summary": counts}, ensure_ascii=True))
        return
    if options.csv:
        import csv

        out = csv.writer(sys.stdout)
        out.writerow(["summary", "name", "count"])
        for kind, table in counts.items():
            for name, count in sorted(table.items()):
                out.writerow([kind, name, count])
        return
    for kind, title in (("verdicts", "verdict"), ("tags", "tag"), ("derived", "derived")):
        if not counts[kind]:
            continue
        print(f"\n{title:<60} {'count':>7}")
        for name, count in sorted(counts[kind].items(), key=lambda pair: (-pair[1], pair[0])):
            print(f"{name:<60} {count:>7}")


class Options:
    """What the command line says about messages that do not say it themselves."""

    __slots__ = ("helo", "ip", "limit", "recipients", "relayclient", "sender")

    def __init__(
        self,
        sender: str | None = None,
        recipients: Iterable[str] = (),
        ip: str | None = None,
        helo: str | None = None,
        relayclient: bool = False,
        limit: int = MAX_SIZE,
    ) -> None:
        self.sender = sender
        self.recipients = list(recipients)
        self.ip = ip
        self.helo = helo
        self.relayclient = relayclient
        self.limit = limit


def replay_one(item: sources.Item, options: Options, settings: Settings) -> dict[str, object]:
    """One message through the dry run; a dict with FIELDS. Never raises."""
    record: dict[str, object] = dict.fromkeys(FIELDS, "")
    record["source"] = item.label
    if item.why:
        return _unreadable(record, item.why)
    if item.skip:
        record.update(verdict="skipped", reason=item.skip)
        return record
    try:
        fd = sources.open_message(item, options.limit)
    except sources.Skipped as exc:
        record.update(verdict="skipped", reason=str(exc))
        return record
    except OSError as exc:
        return _unreadable(record, exc.strerror or str(exc))
    try:
        facts = sources.complete(
            item, fd, options.sender, options.recipients, options.ip, options.helo
        )
        record["derived"] = "; ".join(x for x in (item.origin, facts.said) if x)
        connection = Connection(
            remote_ip=facts.ip,
            helo=options.helo or facts.helo,
            relayclient=options.relayclient,
        )
        outcome = dryrun.run(fd, facts.envelope, connection, settings)
    except Exception as exc:  # a bug must cost one line of the report, not the run
        record.update(verdict="error", reason=f"internal error: {type(exc).__name__}: {exc}")
        return record
    finally:
        os.close(fd)
    record["code"] = outcome.code
    verdict = outcome.verdict
    if verdict is None:
        record.update(verdict="error", reason=outcome.error)
    else:
        record.update(
            verdict=verdict.action,
            check=verdict.check,
            tag=verdict.tag,
            reason=verdict.reason,
            notes="; ".join(verdict.notes),
        )
    return record


def _unreadable(record: dict[str, object], why: str) -> dict[str, object]:
    record.update(verdict="unreadable", reason=why)
    return record


_WORKER: tuple[Options, Settings] | None = None


def _start_worker(options: Options, settings: Settings) -> None:
    global _WORKER
    _WORKER = (options, settings)


def _work(batch: list[sources.Item]) -> list[dict[str, object]]:
    assert _WORKER is not None
    return [replay_one(item, *_WORKER) for item in batch]


def replay(
    found: Iterable[sources.Item], options: Options, settings: Settings, jobs: int = 1
) -> Iterator[dict[str, object]]:
    """The records of ``found``, in order; ``jobs`` worker processes when more than one.
    ``found`` is read as the records are taken: a few batches per worker ahead, no more."""
    if jobs <= 1:
        for item in found:
            yield replay_one(item, options, settings)
        return
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=_start_worker, initargs=(options, settings)) as pool:
        pending: deque = deque()
        batch: list[sources.Item] = []
        for item in found:
            batch.append(item)
            if len(batch) == BATCH:
                pending.append(pool.apply_async(_work, (batch,)))
                batch = []
                if len(pending) >= 4 * jobs:
                    yield from pending.popleft().get()
        if batch:
            pending.append(pool.apply_async(_work, (batch,)))
        while pending:
            yield from pending.popleft().get()


BATCH = 8
"""Messages a worker takes at a time."""


class Summary:
    """Counts per verdict, per tag, and per way the envelope or client was derived."""

    def __init__(self) -> None:
        self.verdicts: Counter[str] = Counter()
        self.tags: Counter[str] = Counter()
        self.derived: Counter[str] = Counter()

    def add(self, record: dict[str, object]) -> None:
        self.verdicts[str(record["verdict"])] += 1
        if record["tag"]:
            self.tags[str(record["tag"])] += 1
        self.derived.update(part for part in str(record["derived"]).split("; ") if part)

    def tables(self) -> dict[str, dict[str, int]]:
        return {
            "verdicts": dict(self.verdicts),
            "tags": dict(self.tags),
            "derived": dict(self.derived),
        }


def summary(records: Iterable[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Counts per verdict, per tag, and per way the envelope or client was derived."""
    counts = Summary()
    for record in records:
        counts.add(record)
    return counts.tables()


class Progress:
    """A bar with ``N/M`` on a terminal's stderr, redrawn in place; nothing when piped. The
    total is counted in a pass over the sources of its own (only on a terminal), so the
    replay itself never holds the list."""

    def __init__(self, named: list[str]) -> None:
        self.done = 0
        self.total = 0
        self.shown = sys.stderr.isatty()
        if self.shown:
            self.total = sum(1 for _ in sources.items(named))
            self.shown = self.total > 1

    def step(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)  # sources may grow while replayed
        if self.shown and (self.done % 25 == 0 or self.done == self.total):
            filled = 30 * self.done // self.total
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\rreplay [{bar}] {self.done}/{self.total}")
            sys.stderr.flush()

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
