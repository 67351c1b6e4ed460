"""Subcommands for people: ``qqfilter test``, ``config``, ``replay``, ``stats``, ``serve``,
``setup`` (and its ``install-wrapper`` and ``samples``), ``dkim``, ``quarantine``.

Each subcommand is one module (or a subpackage, when it has parts of its own) that owns its
sub-parser, its handler and its output writers: ``add_parser(sub)`` adds the sub-parser and
sets ``run=`` to the handler. A subcommand is then read, changed or removed in one place, with
its options beside the code that uses them, and ``dispatch`` only builds the top parser and
asks each in turn. Nothing here is on the queue path: ``qqfilter.cli`` imports it only when
there are arguments, and ``dispatch`` imports the tools, so importing one tool (the dry run,
say) loads no other.
"""

import argparse
import os
import select
import sys

from qqfilter import __version__

USAGE_ERROR = 2
"""Exit status when the command line cannot be carried out (argparse's own for a bad one)."""
PIPE_CLOSED = 128 + 13
"""Exit status when the reader of the output went away (``qqfilter stats LOG | head``): the
status a shell shows for a coreutils program ended by SIGPIPE (128 + 13)."""
INTERRUPTED = 128 + 2
"""Exit status on Ctrl-C (SIGINT), as a shell shows it for a program ended by it."""
FAILED = 1
"""Exit status when what was asked could not be done (a Refusal's, unless it says another)."""


class Refusal(Exception):
    """What a tool cannot do, in one line for a person, and the exit status: FAILED, or
    USAGE_ERROR when an argument names nothing (no such user, directory, entry or program)."""

    def __init__(self, text: str, code: int = FAILED) -> None:
        super().__init__(text)
        self.code = code


def dispatch(args: list[str]) -> int:
    """Parse ``args`` and run the subcommand they name; return the exit status.

    Never a traceback for what a person does at a terminal: when the output's reader goes
    away (a pipe into ``head``), the command stops quietly with PIPE_CLOSED, as ``cat`` does
    (the rest of the output is thrown away, so nothing fails again at exit); on Ctrl-C it
    says ``qqfilter: interrupted`` and exits INTERRUPTED."""
    try:
        try:
            return _run(args)
        finally:
            if sys.stdout is not None:  # None when started with fd 1 closed
                sys.stdout.flush()  # here, not at exit: a closed pipe is a BrokenPipeError
    except BrokenPipeError:
        gone = [fd for fd in (1, 2) if _reader_gone(fd)]
        if not gone:
            raise  # not the output's pipe: a fault to show, not to hide
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in gone:
            os.dup2(devnull, fd)
        os.close(devnull)
        return PIPE_CLOSED
    except KeyboardInterrupt:
        try:
            # on a terminal, over the ^C it echoed (on a line of its own, or a cleared bar)
            start = "\r\033[K" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{start}qqfilter: interrupted\n")
            sys.stderr.flush()
        except (AttributeError, OSError):  # no stderr (None: fd 2 closed), or a broken one
            pass
        return INTERRUPTED


def _reader_gone(fd: int) -> bool:
    """Whether ``fd`` is a pipe or socket whose reader has gone (poll says POLLERR/POLLHUP)."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False


def _run(args: list[str]) -> int:
    """Parse ``args`` and run the subcommand they name."""
    from qqfilter.resident import server
    from qqfilter.tools import config, dkim, quarantine, replay, setup, stats, test

    parser = argparse.ArgumentParser(
        prog="qqfilter",
        description="Content filter for qmail. Run with no arguments as QMAILQUEUE.",
    )
    parser.add_argument("--version", action="version", version=f"qqfilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for tool in (test, config, replay, stats, server, setup, dkim, quarantine):
        tool.add_parser(sub)
    options = parser.parse_args(args)
    return options.run(options)
