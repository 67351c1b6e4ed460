"""``python -m qqfilter`` is the same as the ``qqfilter`` command."""

import sys

from qqfilter.cli import main

sys.exit(main())
