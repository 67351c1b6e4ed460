"""The ``qqfilter`` command: with no arguments it is the QMAILQUEUE program; subcommands
serve people (``test``, ``config``). The queue path imports nothing it does not need."""

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qqfilter`` command; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        from qqfilter.qmailqueue import run

        return run(dict(os.environ))
    from qqfilter.commands import dispatch

    return dispatch(args)
