"""The check interface, and the registry that assembles itself from the check units.

A check unit is a module or a package under ``qqfilter/checks/`` (names starting with ``_`` are
not looked at). In one place it declares:

- ``NAME``: the check's name, in log lines (``check=``, ``notes``) and in its findings;
- ``ORDER``: where it runs; cheap checks first, so a refusal stops before a costly scan;
- ``SETTINGS``: the setting rows it owns (qqfilter.settings.Setting), read with ``load``;
- ``PRELOAD``: the modules the resident server imports at start for it (its helpers, its
  libraries), so no message pays for them;
- ``check(message, settings) -> Finding | None``: it looks, and says what it found;
- optionally ``validate(settings) -> list[SettingError]``, for rules across its settings.

A package without a NAME is a family of units that share settings and helpers (``virus``:
``clamd`` and ``qhpsi``); its own modules and packages are units in turn. A unit's helpers
live in the unit's package, where nobody looks for units; a family keeps what its units share
in its ``__init__``.

A check never decides the SMTP answer or the exit code: that is policy's job. One that cannot
decide (scanner down, DNS timeout) says so with ``Finding.UNKNOWN`` instead of guessing. A
unit's top level imports only what every message needs anyway (qqfilter.settings, this
module, qqfilter.control): its helpers and libraries are imported inside ``check``, so
start-up pays only for the checks that run (docs/architecture.md, "import cost").
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost start-up: the type checker alone reads them
    from collections.abc import Callable
    from types import ModuleType

    from qqfilter.message import Message
    from qqfilter.settings import Setting, SettingError, Settings

    Check = Callable[[Message, Settings], "Finding | None"]


class Finding:
    """What one check found.

    ``outcome`` is CLEAN (nothing against the message; may still add ``headers``), REFUSE
    (the message should not be accepted) or UNKNOWN (the check could not decide).
    ``category`` (see settings.CATEGORIES) chooses s/qmail exit codes and drop rules;
    ``tag`` is the s/qmail log tag where one exists; ``reason`` is shown in the log and, for
    patched qmails, to the client, so it holds nothing private; ``detail`` goes to the log
    only (which server, what failed); ``status`` is the enhanced status code for the reply.
    A CLEAN finding with a ``reason`` is a note for the log ("skipped: ...").
    ``check`` is the unit's NAME. ``edits`` changes the message itself if it is accepted:
    (start, end, new bytes) replaces the spool's bytes [start, end) (an insertion when start
    == end, a removal when the new bytes are empty); the ranges of all findings must not
    overlap. ``results`` are its method results for the one Authentication-Results field
    (shared/authres: ``spf=pass smtp.mailfrom=example.org``), which policy renders once for
    all checks when the message is accepted. A hand-written ``__slots__`` record, like
    every record on the queue path: dataclasses costs ~10 ms of start-up.
    """

    CLEAN = "clean"
    REFUSE = "refuse"
    UNKNOWN = "unknown"

    __slots__ = (
        "category",
        "check",
        "detail",
        "edits",
        "headers",
        "outcome",
        "reason",
        "results",
        "status",
        "tag",
    )

    def __init__(
        self,
        check: str,
        outcome: str,
        reason: str = "",
        *,
        category: str = "policy",
        tag: str = "",
        status: str = "",
        headers: tuple[tuple[str, str], ...] = (),
        detail: str = "",
        edits: tuple[tuple[int, int, bytes], ...] = (),
        results: tuple[str, ...] = (),
    ) -> None:
        self.check = check
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.category = category
        self.tag = tag
        self.status = status
        self.headers = headers
        self.edits = edits
        self.results = results


class Unit:
    """One check unit, as read from its module."""

    __slots__ = ("check", "name", "order", "preload", "settings", "validate")

    def __init__(self, module: ModuleType) -> None:
        where = module.__name__
        try:
            self.name: str = module.NAME
            self.order: int = module.ORDER
            self.settings: tuple[Setting, ...] = module.SETTINGS
            self.preload: tuple[str, ...] = module.PRELOAD
            self.check: Check = module.check
        except AttributeError as exc:
            raise RuntimeError(f"check unit {where} lacks {exc.name}") from None
        self.validate: Callable[[Settings], list[SettingError]] | None = getattr(
            module, "validate", None
        )


_UNITS: tuple[Unit, ...] | None = None


def units() -> tuple[Unit, ...]:
    """Every check unit, in the order the checks run (ORDER, then NAME); found once per
    process by listing this package's directory, so a new unit is one new file or folder."""
    global _UNITS
    if _UNITS is None:
        found = _find(os.path.dirname(__file__), __name__)
        _UNITS = tuple(sorted(found, key=lambda unit: (unit.order, unit.name)))
    return _UNITS


def _find(directory: str, package: str) -> list[Unit]:
    """The units among the modules and packages in ``directory``: a module or package with
    a NAME is one; a package without is a family (qqfilter.checks.virus), whose own modules
    and packages are looked at in turn."""
    found = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith(("_", ".")):
            continue
        if entry.endswith(".py"):
            name = entry[:-3]
        elif os.path.isfile(os.path.join(directory, entry, "__init__.py")):
            name = entry
        else:
            continue
        module = __import__(f"{package}.{name}", fromlist=["__name__"])
        if hasattr(module, "NAME"):
            found.append(Unit(module))
        elif module.__file__ and os.path.basename(module.__file__) == "__init__.py":
            found += _find(os.path.dirname(module.__file__), module.__name__)
    return found
