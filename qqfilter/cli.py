"""The ``qqfilter`` command: with no arguments it is the QMAILQUEUE program (a client of the
resident server when QQF_SOCKET names one); subcommands serve people (``test``, ``config``,
``replay``, ``stats``, ``serve``). The queue path imports nothing it does not need."""

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qqfilter`` command; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        environ = dict(os.environ)
        if environ.get("QQF_SOCKET"):
            from qqfilter.resident import client

            code = client.run(environ)
            if code is not None:
                return code
        from qqfilter.qmailqueue import run

        return run(environ)
    from qqfilter.tools import dispatch

    return dispatch(args)
