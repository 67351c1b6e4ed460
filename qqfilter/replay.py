"""``qqfilter replay``: what the QMAILQUEUE pipeline would do to mail already received.

Each message goes through exactly the dry run ``qqfilter test`` uses (same spool, checks,
policy and exit codes, nothing queued, no source changed), in worker processes when asked.
Results come back in source order, so two runs over the same sources compare line by line.
"""

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from qqfilter import dryrun, sources
from qqfilter.message import Connection
from qqfilter.settings import Settings

FIELDS = ("source", "verdict", "code", "check", "tag", "reason", "notes", "derived")


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
        if options.ip:
            item.ip, item.helo = options.ip, options.helo
        derived = sources.complete(item, fd, options.sender, options.recipients)
        record["derived"] = "; ".join(x for x in (item.origin, derived) if x)
        connection = Connection(remote_ip=item.ip, helo=options.helo or item.helo)
        connection.relayclient = options.relayclient
        result = dryrun.run(fd, item.envelope or b"", connection, settings)
    except Exception as exc:  # a bug must cost one line of the report, not the run
        record.update(verdict="error", reason=f"internal error: {type(exc).__name__}: {exc}")
        return record
    finally:
        os.close(fd)
    record["code"] = result.code
    verdict = result.verdict
    if verdict is None:
        record.update(verdict="error", reason=result.error)
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
