"""Subcommands for people: ``qqfilter test``, ``config``, ``replay``, ``stats`` and ``serve``.

Each subcommand is one module (or a subpackage, when it has parts of its own) that owns its
sub-parser, its handler and its output writers: ``add_parser(sub)`` adds the sub-parser and
sets ``run=`` to the handler. A subcommand is then read, changed or removed in one place, with
its options beside the code that uses them, and ``dispatch`` only builds the top parser and
asks each in turn. Nothing here is on the queue path: ``qqfilter.cli`` imports it only when
there are arguments, and ``dispatch`` imports the tools, so importing one tool (the dry run,
say) loads no other.
"""

import argparse

from qqfilter import __version__

USAGE_ERROR = 2
"""Exit status when the command line cannot be carried out (argparse's own for a bad one)."""


def dispatch(args: list[str]) -> int:
    """Parse ``args`` and run the subcommand they name."""
    from qqfilter.resident import server
    from qqfilter.tools import config, replay, stats, test

    parser = argparse.ArgumentParser(
        prog="qqfilter",
        description="Content filter for qmail. Run with no arguments as QMAILQUEUE.",
    )
    parser.add_argument("--version", action="version", version=f"qqfilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for tool in (test, config, replay, stats, server):
        tool.add_parser(sub)
    options = parser.parse_args(args)
    return options.run(options)
