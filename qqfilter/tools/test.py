"""``qqfilter test``: what the filter would do to one message, shown to a person.

Like every tool module (qqfilter.tools), it holds the sub-parser, the handler and the writer
together. The work itself is the dry run (qqfilter.tools.dryrun) that ``replay`` runs too:
this module only finds the envelope and the client, and shows the outcome.
"""

import argparse
import errno
import os
import stat
import sys
from pathlib import Path

from qqfilter import envelope
from qqfilter.message import Connection
from qqfilter.policy import ACCEPT
from qqfilter.settings import QMAILQUEUE, Settings
from qqfilter.tools import USAGE_ERROR, dryrun


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``test`` to the subcommands ``sub``."""
    parser = sub.add_parser("test", help="show what the filter would do to one message")
    parser.add_argument("message", type=Path, help="the message file")
    parser.add_argument(
        "--envelope",
        type=Path,
        metavar="FILE",
        help="an envelope file, as qmail writes it (default: MESSAGE's .env file)",
    )
    dryrun.add_client_options(parser)
    parser.set_defaults(run=_test)


def _test(options: argparse.Namespace) -> int:
    settings = dryrun.settings_or_say()
    if settings is None:
        print("exit code: 55 (invalid settings)")
        return 1
    try:
        raw_envelope = _envelope(options)
        fd = _open(options.message)
    except OSError as exc:
        print(f"qqfilter: {_words(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except ValueError as exc:
        print(f"qqfilter: {exc}", file=sys.stderr)
        return USAGE_ERROR
    connection = Connection.from_environ(_environ(options))
    try:
        outcome = dryrun.run(fd, raw_envelope, connection, settings)
    finally:
        os.close(fd)
    _show(outcome, settings)
    return 0


def _open(path: Path) -> int:
    """A descriptor on the message file ``path``: a file, or a pipe or device to read to its
    end (``/dev/stdin``), never a directory. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return fd


def _words(exc: OSError) -> str:
    """``FILE: what went wrong`` for a person (``m.eml: no such file or directory``)."""
    why = exc.strerror or str(exc) or type(exc).__name__
    why = why[:1].lower() + why[1:]
    return f"{exc.filename}: {why}" if exc.filename is not None else why


def _environ(options: argparse.Namespace) -> dict[str, str]:
    """The environment as tcpserver would have set it for the client --ip, --helo and
    --relayclient describe (what they do not say comes from this process's environment)."""
    environ = dict(os.environ)
    if options.ip:
        environ["TCPREMOTEIP"] = options.ip
    if options.helo:
        environ["HELOHOST"] = options.helo
    if options.relayclient:
        environ["RELAYCLIENT"] = ""
    return environ


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


def _show(outcome: dryrun.DryRun, settings: Settings) -> None:
    verdict = outcome.verdict
    lines = []
    if verdict is None:
        lines.append(("verdict", f"error: {outcome.error}"))
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
        f" (handed to {settings[QMAILQUEUE]})"
        if verdict is not None and verdict.action == ACCEPT
        else ""
    )
    lines.append(("exit code", f"{outcome.code}{handed}"))
    lines.append(("reply", outcome.reply))
    if verdict is not None and verdict.action == ACCEPT:
        headers = outcome.headers.decode("ascii").rstrip("\n").replace("\n", "\n" + " " * 11)
        lines.append(("headers", headers or "(none added)"))
    for label, value in lines:
        print(f"{label + ':':<11}{value}")
