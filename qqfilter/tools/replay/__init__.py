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
import contextlib
import io
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable

from qqfilter.logline import escape
from qqfilter.message import Connection
from qqfilter.settings import Settings, count
from qqfilter.tools import dryrun
from qqfilter.tools.replay import sources

FIELDS = (
    "source",
    "verdict",
    "code",
    "check",
    "tag",
    "reason",
    "notes",
    "derived",
    "sender",
    "subject",
)
"""A record's fields, in CSV's column order (``sender`` and ``subject`` last: added later)."""
SHOWN = 60
"""The most characters of a sender or subject shown (escapes included; ``...`` when cut)."""
RAW_SHOWN = 1024
"""The most bytes of a Subject decoded: enough for SHOWN characters in any encoding."""
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
    # a subject the terminal's charset cannot show is escaped, not a UnicodeEncodeError
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    progress = Progress()
    counts = Summary()
    writer = _record_writer(options)
    found = sources.items(options.sources)
    # the pool of --jobs ends with the run, also when it ends early (Ctrl-C, a closed pipe)
    with contextlib.closing(replay(found, how, settings, max(1, options.jobs))) as records:
        try:
            progress.count(options.sources)
            for record in records:
                counts.add(record)
                progress.before_output()
                writer(record)
                progress.step()
        finally:
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
        if record["verdict"] not in NOT_REPLAYED:
            words += [f"<{record['sender']}>", f'"{record["subject"]}"']
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
        record["sender"] = shown(_sender(facts.envelope))
        record["subject"] = shown(decoded(facts.subject or b""))
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


def _sender(raw_envelope: bytes) -> str:
    """The sender of an envelope as qmail writes it (``F<sender>\\0...``), read leniently:
    one the dry run refuses as malformed is still named."""
    if not raw_envelope.startswith(b"F"):
        return ""
    return raw_envelope[1:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decoded(raw: bytes) -> str:
    """A header field's value for a person: RFC 2047 encoded words decoded (a charset Python
    does not know, or a broken word, read as UTF-8 with replacements), other bytes as UTF-8
    with those that are not kept as surrogate escapes (``shown`` writes them ``\\xNN``)."""
    text = raw[:RAW_SHOWN].decode("utf-8", "surrogateescape")
    if "=?" not in text:
        return text
    from email.header import decode_header

    try:
        parts = decode_header(text)
    except Exception:  # a header the decoder cannot split: shown as it is
        return text
    words = []
    for part, charset in parts:
        if isinstance(part, str):
            words.append(part)
            continue
        try:
            words.append(part.decode(charset or "raw-unicode-escape", "replace"))
        except LookupError:
            words.append(part.decode("utf-8", "replace"))
    return "".join(words)


def shown(text: str, limit: int = SHOWN) -> str:
    """``text`` safe to print on one line, at most ``limit`` characters: backslash, double
    quote, controls, format characters (bidi overrides), line separators and odd spaces
    escaped as logline escapes them (a byte that was not UTF-8 as ``\\xNN``), letters of any
    script kept; cut with ``...`` past the limit."""
    pieces = [_escape(char) for char in text.strip()[: limit + 1]]
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept, size = [], 0
    for piece in pieces:
        if size + len(piece) > limit - 3:
            break
        kept.append(piece)
        size += len(piece)
    return "".join(kept) + "..."


def _escape(char: str) -> str:
    if char in '\\"':
        return "\\" + char
    # not printable: Unicode's "other" and "separator" characters but the space
    return char if char.isprintable() else escape(char)


_WORKER: tuple[Options, Settings] | None = None


def _start_worker(options: Options, settings: Settings) -> None:
    global _WORKER
    _WORKER = (options, settings)
    # Ctrl-C reaches the whole process group: the parent says so once and ends the pool
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(batch: list[sources.Item]) -> list[dict[str, object]]:
    assert _WORKER is not None
    return [replay_one(item, *_WORKER) for item in batch]


def replay(
    found: Iterable[sources.Item], options: Options, settings: Settings, jobs: int = 1
) -> Generator[dict[str, object], None, None]:
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
    """On a terminal's stderr, one line redrawn in place: a bar, ``N/M``, the rate and the
    time left (``replay [#######........] 250/1000  83/s  0:09 left``); nothing at all when
    stderr is not a terminal. The total is counted in a pass over the sources of its own
    (only on a terminal, with a count shown while it runs), so the replay itself never holds
    the list. When stdout is a terminal too (the same screen, as a rule), the bar is taken
    off before each result line is written and drawn again below it: a result line never
    starts behind the bar. It is redrawn at most every INTERVAL seconds otherwise, never
    wider than the terminal (a wrapped line could not be redrawn in place), and taken off at
    the end: the summary starts on a clean line."""

    INTERVAL = 0.1

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.shown = sys.stderr.isatty()
        self.over_output = self.shown and sys.stdout.isatty()
        self.on_screen = False
        self.drawn = 0.0
        self.started = time.monotonic()

    def count(self, named: list[str]) -> None:
        """Count the messages of ``named`` (on a terminal only), and start the clock."""
        if self.shown:
            for _ in sources.items(named):
                self.total += 1
                if self.total % 1000 == 0:
                    self._draw(f"replay: counting messages: {self.total}")
            self.shown = self.total > 1
        self.started = time.monotonic()

    def before_output(self) -> None:
        """Take the bar off the screen before a result line is written to it."""
        if self.on_screen and self.over_output:
            self._clear()

    def step(self) -> None:
        """One more message done (its line written)."""
        self.done += 1
        self.total = max(self.total, self.done)  # sources may grow while replayed
        if not self.shown:
            return
        now = time.monotonic()
        if self.on_screen and now - self.drawn < self.INTERVAL and self.done < self.total:
            return
        if self.over_output:
            sys.stdout.flush()  # the result line on the screen before the bar below it
        self._draw(self.line(now - self.started, _columns()))

    def line(self, elapsed: float, columns: int = 80) -> str:
        """The bar's text after ``elapsed`` seconds, for a terminal ``columns`` wide: the bar
        narrows first (from 30 marks to 5, then none), the numbers stay."""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f"{_duration((self.total - self.done) / rate)} left" if rate else "--:-- left"
        speed = f"{rate:.1f}/s" if rate < 10 else f"{rate:.0f}/s"
        numbers = f"{self.done}/{self.total}  {speed}  {left}"
        width = min(30, columns - 1 - len(f"replay [] {numbers}"))
        if width < 5:
            return f"replay {numbers}"
        filled = width * self.done // self.total
        return f"replay [{'#' * filled}{'.' * (width - filled)}] {numbers}"

    def end(self) -> None:
        """Take the bar off the screen, if it is on it."""
        if self.on_screen:
            self._clear()

    def _draw(self, text: str) -> None:
        # never to the last column: a line that wraps cannot be redrawn in place
        sys.stderr.write("\r" + text[: max(_columns() - 1, 1)] + "\033[K")
        sys.stderr.flush()
        self.on_screen = True
        self.drawn = time.monotonic()

    def _clear(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        self.on_screen = False


def _columns() -> int:
    """The width of the terminal on stderr (80 when it does not say)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80  # 0: never set
    except (OSError, ValueError):
        return 80


def _duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
