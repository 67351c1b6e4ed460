"""Subcommands for people: ``qqfilter test``, ``config``, ``replay`` and ``stats``."""

import argparse
import os
import sys
from pathlib import Path

from qqfilter import __version__, dryrun, envelope
from qqfilter.message import Connection
from qqfilter.policy import ACCEPT
from qqfilter.settings import SETTINGS, Settings, load

USAGE_ERROR = 2


def dispatch(args: list[str]) -> int:
    """Parse ``args`` and run the subcommand they name."""
    parser = argparse.ArgumentParser(
        prog="qqfilter",
        description="Content filter for qmail. Run with no arguments as QMAILQUEUE.",
    )
    parser.add_argument("--version", action="version", version=f"qqfilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    test = sub.add_parser("test", help="show what the filter would do to one message")
    test.add_argument("message", type=Path, help="the message file")
    test.add_argument(
        "--from", dest="sender", metavar="ADDRESS", help="envelope sender (empty for a bounce)"
    )
    test.add_argument(
        "--to",
        dest="recipients",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="envelope recipient (repeat for more)",
    )
    test.add_argument(
        "--envelope",
        type=Path,
        metavar="FILE",
        help="an envelope file, as qmail writes it (default: MESSAGE's .env file)",
    )
    test.add_argument("--ip", help="the client address (TCPREMOTEIP)")
    test.add_argument("--helo", help="the HELO name the client gave")
    test.add_argument(
        "--relayclient",
        action="store_true",
        help="as if RELAYCLIENT were set (authenticated or trusted client)",
    )
    test.set_defaults(run=_test)

    config = sub.add_parser("config", help="print the effective settings and where they come from")
    config.set_defaults(run=_config)

    replay = sub.add_parser(
        "replay",
        help="what the filter would do to mail already received (never queues)",
        description="Replay message files (with X.env envelopes beside them), directories, "
        "maildirs, mbox files and qmail queue directories through the filter, dry.",
    )
    replay.add_argument("sources", nargs="+", metavar="SOURCE")
    replay.add_argument("--from", dest="sender", metavar="ADDRESS", help="envelope sender for all")
    replay.add_argument(
        "--to",
        dest="recipients",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="envelope recipient for all (repeat for more)",
    )
    replay.add_argument("--ip", help="client address for all (else from the Received line)")
    replay.add_argument("--helo", help="HELO name for all (with --ip)")
    replay.add_argument("--relayclient", action="store_true", help="as if RELAYCLIENT were set")
    replay.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes")
    output = replay.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines, then a summary line")
    output.add_argument("--csv", action="store_true", help="CSV rows, then the summary rows")
    replay.set_defaults(run=_replay)

    stats = sub.add_parser(
        "stats",
        help="counts per verdict and tag over time, from qqfilter's (and qmail-send's) logs",
    )
    stats.add_argument("logs", nargs="+", metavar="LOG", help="log files (.gz too; - = stdin)")
    stats.add_argument("--by", choices=("hour", "day"), default="day", help="the period")
    stats.add_argument("--mrtg", metavar="NAME", help="print the four lines MRTG reads")
    stats.add_argument("--plot", metavar="FILE.png", help="draw the counts (needs matplotlib)")
    stats.add_argument("--json", action="store_true", help="the counts as one JSON object")
    stats.set_defaults(run=_stats)

    serve = sub.add_parser(
        "serve", help="run resident, for QMAILQUEUE clients on a unix socket (QQF_SOCKET)"
    )
    serve.add_argument(
        "--socket", default=os.environ.get("QQF_SOCKET", ""), help="the socket (QQF_SOCKET)"
    )
    serve.add_argument("--max", type=int, default=16, help="messages in work at once (16)")
    serve.add_argument(
        "--wait", type=float, default=10.0, help="seconds a client may wait for a turn (10)"
    )
    serve.add_argument(
        "--users", default="", help="users besides the server's own (and root) who may connect"
    )
    serve.add_argument("--group", default="", help="a group whose members may connect")
    serve.set_defaults(run=_serve)

    options = parser.parse_args(args)
    return options.run(options)


def _test(options: argparse.Namespace) -> int:
    environ = dict(os.environ)
    settings, errors = load(environ)
    if errors:
        for error in errors:
            print(f"qqfilter: {error}", file=sys.stderr)
        print("exit code: 55 (invalid settings)")
        return 1
    try:
        raw_envelope = _envelope(options)
        fd = os.open(options.message, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        print(f"qqfilter: {exc}", file=sys.stderr)
        return USAGE_ERROR
    connection = Connection.from_environ(environ)
    if options.ip:
        connection.remote_ip = options.ip
    if options.helo:
        connection.helo = options.helo
    if options.relayclient:
        connection.relayclient = True
    try:
        result = dryrun.run(fd, raw_envelope, connection, settings)
    finally:
        os.close(fd)
    _show(result, settings)
    return 0


def _envelope(options: argparse.Namespace) -> bytes:
    """The raw envelope from --envelope, from --from/--to, or from MESSAGE's .env file."""
    if options.envelope:
        return options.envelope.read_bytes()
    if options.sender is not None or options.recipients:
        sender = (options.sender or "").encode("utf-8", "surrogateescape")
        recipients = [r.encode("utf-8", "surrogateescape") for r in options.recipients]
        return envelope.serialize(sender, recipients)
    beside = options.message.with_suffix(".env")
    if beside.is_file():
        return beside.read_bytes()
    raise ValueError(f"no envelope for {options.message}: give --to, or --envelope, or {beside}")


def _show(result: dryrun.Result, settings: Settings) -> None:
    verdict = result.verdict
    lines = []
    if verdict is None:
        lines.append(("verdict", f"error: {result.error}"))
    else:
        explained = f" by {verdict.check}: {verdict.reason}" if verdict.check else ""
        lines.append(("verdict", verdict.action + explained))
        if verdict.tag:
            lines.append(("tag", verdict.tag))
        if verdict.detail:
            lines.append(("detail", verdict.detail))
        if verdict.notes:
            lines.append(("notes", "; ".join(verdict.notes)))
    handed = (
        f" (handed to {settings.qmailqueue})"
        if verdict is not None and verdict.action == ACCEPT
        else ""
    )
    lines.append(("exit code", f"{result.code}{handed}"))
    lines.append(("reply", result.reply))
    if verdict is not None and verdict.action == ACCEPT:
        headers = result.headers.decode("ascii").rstrip("\n").replace("\n", "\n" + " " * 11)
        lines.append(("headers", headers or "(none added)"))
    for label, value in lines:
        print(f"{label + ':':<11}{value}")


def _replay(options: argparse.Namespace) -> int:
    """Replay the sources; exit 1 if a source could not be read (the run goes on), 0 else."""
    from qqfilter import replay, sources

    settings, errors = load(dict(os.environ))
    if errors:
        for error in errors:
            print(f"qqfilter: {error}", file=sys.stderr)
        return 1
    how = replay.Options(
        options.sender, options.recipients, options.ip, options.helo, options.relayclient
    )
    found = list(sources.items(options.sources))
    progress = replay.Progress(len(found))
    records = []
    writer = _record_writer(options)
    for record in replay.replay(found, how, settings, max(1, options.jobs)):
        records.append(record)
        writer(record)
        progress.step()
    progress.end()
    _write_summary(options, replay.summary(records))
    return 1 if any(r["verdict"] == "unreadable" for r in records) else 0


def _record_writer(options: argparse.Namespace):
    from qqfilter.replay import FIELDS

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


def _stats(options: argparse.Namespace) -> int:
    """Read the logs; print the counts (or MRTG's lines); draw them if asked."""
    from qqfilter import logread, stats

    counted = stats.Stats(options.by)
    try:
        for line in logread.lines(options.logs):
            counted.feed(line)
    except OSError as exc:
        print(f"qqfilter: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if options.plot:
        try:
            stats.plot(counted, options.plot)
        except ImportError:
            print(
                "qqfilter: --plot needs matplotlib: pip install 'qqfilter[plot]'", file=sys.stderr
            )
            return 1
    if options.mrtg:
        print("\n".join(counted.mrtg(options.mrtg)))
    elif options.json:
        import json

        bounces = counted.bounces
        print(
            json.dumps(
                {
                    "counts": [
                        dict(zip(("period", "verdict", "tag", "count"), row, strict=True))
                        for row in counted.table()
                    ],
                    "totals": dict(counted.totals()),
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


def _print_stats(counted) -> None:
    print(f"{'period':<17} {'verdict':<10} {'tag':<40} {'count':>7}")
    for period, verdict, tag, count in counted.table():
        print(f"{period:<17} {verdict:<10} {tag:<40} {count:>7}")
    totals = counted.totals()
    print(
        f"\ntotal: {sum(totals.values())}  "
        + "  ".join(f"{v}: {n}" for v, n in sorted(totals.items()))
    )
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


def _serve(options: argparse.Namespace) -> int:
    from qqfilter import server

    if not options.socket:
        print("qqfilter serve: give --socket PATH (or QQF_SOCKET)", file=sys.stderr)
        return USAGE_ERROR
    users = [u for u in options.users.split(",") if u]
    return server.serve(
        options.socket,
        limit=max(1, options.max),
        wait=options.wait,
        users=users,
        group=options.group,
    )


def _config(options: argparse.Namespace) -> int:
    """Print the effective settings as a TOML file (it can be saved as one), each with its
    meaning, its variable and where its value came from; invalid ones go to stderr."""
    settings, errors = load(dict(os.environ))
    for setting in SETTINGS:
        value = _toml(getattr(settings, setting.name))
        source = settings.sources[setting.name]
        print(f"# {setting.doc}")
        env = f"{setting.env} or {setting.alias}" if setting.alias else setting.env
        print(f"{setting.name} = {value}  # {env}, from {source}\n")
    for error in errors:
        print(f"qqfilter: {error}", file=sys.stderr)
    return 1 if errors else 0


def _toml(value: object) -> str:
    if isinstance(value, frozenset | tuple):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(_toml(v) for v in items) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
