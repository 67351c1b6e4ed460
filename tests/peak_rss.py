"""Run a command as the child of this small process and record its peak RSS.

A process forked from pytest starts with pytest's pages counted in its peak RSS, so the
measured command must be forked from something small: this. Usage:
``PEAK_RSS_FILE=out python peak_rss.py CMD...``; the exit status is the command's.
"""

import os
import resource
import sys

pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
with open(os.environ["PEAK_RSS_FILE"], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
