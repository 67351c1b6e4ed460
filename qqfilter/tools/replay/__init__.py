"""``qqfilter replay``: what the QMAILQUEUE pipeline would do to mail already received.

Each message goes through exactly the dry run ``qqfilter test`` uses (same spool, checks,
policy and exit codes, nothing queued, no source changed), in worker processes when asked.
Results come back in source order, so two runs over the same sources compare line by line.

Like every tool (qqfilter.tools), the package holds its sub-parser, handler and writers (text,
JSON lines, CSV); finding and reading the sources is a module of its own (``sources``).
"""

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from qqfilter.message import Connection
from qqfilter.settings import Settings
from qqfilter.tools import dryrun
from qqfilter.tools.replay import sources

FIELDS = ("source", "verdict", "code", "check", "tag", "reason", "notes", "derived")


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
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines, then a summary line")
    output.add_argument("--csv", action="store_true", help="CSV rows, then the summary rows")
    parser.set_defaults(run=_replay)


def _replay(options: argparse.Namespace) -> int:
    """Replay the sources; exit 1 if a source could not be read (the run goes on), 0 else."""
    settings = dryrun.settings_or_say()
    if settings is None:
        return 1
    how = Options(
        sender=options.sender,
        recipients=options.recipients,
        ip=options.ip,
        helo=options.helo,
        relayclient=options.relayclient,
    )
    found = list(sources.items(options.sources))
    progress = Progress(len(found))
    records = []
    writer = _record_writer(options)
    for record in replay(found, how, settings, max(1, options.jobs)):
        records.append(record)
        writer(record)
        progress.step()
    progress.end()
    _write_summary(options, summary(records))
    return 1 if any(r["verdict"] == "unreadable" for r in records) else 0


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

    __slots__ = ("helo", "ip", "recipients", "relayclient", "sender")

    def __init__(
        self,
        sender: str | None = None,
        recipients: Iterable[str] = (),
        ip: str | None = None,
        helo: str | None = None,
        relayclient: bool = False,
    ) -> None:
        self.sender = sender
        self.recipients = list(recipients)
        self.ip = ip
        self.helo = helo
        self.relayclient = relayclient


def replay_one(item: sources.Item, options: Options, settings: Settings) -> dict[str, object]:
    """One message through the dry run; a dict with FIELDS. Never raises."""
    record: dict[str, object] = dict.fromkeys(FIELDS, "")
    record["source"] = item.label
    if item.why:
        return _unreadable(record, item.why)
    try:
        fd = sources.open_message(item)
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


def _work(item: sources.Item) -> dict[str, object]:
    assert _WORKER is not None
    return replay_one(item, *_WORKER)


def replay(
    found: list[sources.Item], options: Options, settings: Settings, jobs: int = 1
) -> Iterator[dict[str, object]]:
    """The records of ``found``, in order; ``jobs`` worker processes when more than one."""
    if jobs <= 1 or len(found) < 2:
        for item in found:
            yield replay_one(item, options, settings)
        return
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=_start_worker, initargs=(options, settings)) as pool:
        yield from pool.imap(_work, found, chunksize=8)


def summary(records: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Counts per verdict, per tag, and per way the envelope or client was derived."""
    verdicts = Counter(str(r["verdict"]) for r in records)
    tags = Counter(str(r["tag"]) for r in records if r["tag"])
    derived = Counter(part for r in records for part in str(r["derived"]).split("; ") if part)
    return {"verdicts": dict(verdicts), "tags": dict(tags), "derived": dict(derived)}


class Progress:
    """A bar with ``N/M`` on a terminal's stderr, redrawn in place; nothing when piped."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.shown = sys.stderr.isatty() and total > 1

    def step(self) -> None:
        self.done += 1
        if self.shown and (self.done % 25 == 0 or self.done == self.total):
            filled = 30 * self.done // self.total
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\rreplay [{bar}] {self.done}/{self.total}")
            sys.stderr.flush()

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
