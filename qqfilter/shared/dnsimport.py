"""Importing dnspython for one message without what qqfilter never uses.

dnspython's import is the largest single cost of a one-shot run that looks names up (SPF, the
sender hygiene checks): measured here, about 100 ms of a 160 ms run. Two parts of it are work
for features qqfilter does not use:

- ``dns._features`` asks ``importlib.metadata`` at import whether the optional packages for
  DNS over HTTPS and QUIC (and IDNA 2008) are installed: importing ``importlib.metadata``
  pulls email, zipfile, pathlib and more (about 30 ms), and each answer scans sys.path.
  qqfilter never uses DoH, DoQ, trio, WMI or DNSSEC, so those are answered "no" here; IDNA
  2008 is answered "no" when the ``idna`` package is not on the path at all, else dnspython
  asks as it always does.
- ``dns.resolver`` imports the asynchronous query code and DDR discovery (``dns.asyncquery``,
  ``dns._ddr``: about 10 ms) that a synchronous resolver never calls.

``prepare()`` puts stand-ins for those modules in sys.modules before dnspython is imported: a
stand-in is an empty module that imports the real one on the first use of any of its names
and forwards to it, so nothing can break, only be paid for later. Every place that imports
``dns`` on the queue path calls ``prepare()`` first (tests/test_dns_cache.py checks the
effect on a real one-shot run). A resident server imports dnspython whole at start (its
PRELOAD), before any message: ``prepare()`` then does nothing.
"""

import sys

NEVER_USED = ("doh", "doq", "trio", "wmi", "dnssec")
"""dnspython's optional features qqfilter does not use: answered "not available"."""
DEFERRED = ("importlib.metadata", "dns.asyncquery", "dns._ddr")
"""Modules imported only when something uses one of their names."""

_prepared = False


def prepare() -> None:
    """Make the next import of dnspython skip NEVER_USED and defer DEFERRED (once per
    process; nothing when dnspython is already imported)."""
    global _prepared
    if _prepared:
        return
    import _imp  # the import lock: lookups in threads (the DNS lists) may call this at once

    _imp.acquire_lock()
    try:
        if _prepared:
            return
        _prepared = True
        if "dns._features" in sys.modules:
            return
        import importlib.machinery

        import dns

        for name in DEFERRED:
            _defer(name)
        import dns._features

        for feature in NEVER_USED:
            dns._features.force(feature, False)
        if importlib.machinery.PathFinder.find_spec("idna") is None:
            dns._features.force("idna", False)
    finally:
        _imp.release_lock()


def _defer(name: str) -> None:
    """Put a stand-in for module ``name`` (not imported yet) in sys.modules and on its
    parent package: it imports the real module the first time one of its names is used."""
    if name in sys.modules:
        return
    stand_in = type(sys)(name)

    def __getattr__(attribute: str) -> object:
        import importlib

        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attribute)

    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, stand_in)
