"""Every setting, where it came from, and what makes one invalid.

Three layers, the first that has a value wins: the environment (per connection, from the tcp
rules), the TOML file named by QQF_CONFIG, the built-in default. An environment variable set to
the empty string counts as unset, as tcprules users expect, except s/qmail's own names (rows
with ``empty_means_set``), which keep s/qmail's reading: set, even empty, is set. Nothing here
reads the message.

The rows are not kept in one table: the contract's own settings are below (CORE), and each
check unit declares the rows it owns in its ``SETTINGS`` (qqfilter.checks). ``load`` reads them
all. A value is read with its row as the key, ``settings[MAXSIZE]``: the row is a typed key
(``Setting[int]``), so a type checker sees every value's type without a central list of
attribute names, and a check cannot read a setting it has not imported.

Hand-written ``__slots__`` classes here and on the whole queue path: ``dataclasses`` costs
about 10 ms of start-up, paid by every message.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~20 ms of start-up: the type checker alone reads it
    from collections.abc import Callable
    from typing import Generic, TypeVar

    T = TypeVar("T")
else:

    class Generic:
        """At run time ``Setting[int]`` need only be ``Setting``."""

        def __class_getitem__(cls, _item: object) -> type:
            return cls

    T = None

DEFAULT_CONFIG = "/etc/qqfilter.toml"
CATEGORIES = ("policy", "virus", "spam", "attachment")
"""What a refusal is about; s/qmail codes and QQF_DROP are chosen by it ("spam" is for the
spam-scoring check to come)."""


class SettingError(Exception):
    """One invalid setting: which, from where, and why."""

    def __init__(self, name: str, source: str, why: str) -> None:
        super().__init__(f"setting {name} from {source}: {why}")
        self.name = name


class Setting(Generic[T]):
    """One setting: its name in the TOML file, its variable, default, parser and meaning.

    ``alias`` is another variable read when ``env`` is unset (s/qmail's and other patches'
    names); ``formerly`` an older TOML name, still read, that ``alias`` usually goes with.

    ``empty_means_set`` gives the row s/qmail's reading of its variables: s/qmail tests a
    variable for presence, so one set to the empty string is set, and it is read as
    ``empty_as`` (the text s/qmail's reading of "" amounts to, handed to the parser like any
    value). Rows without it (every ``QQF_*`` name) follow tcprules' "empty = unset".

    ``server_only`` marks a row whose value is a program, its arguments, a path or a server,
    or one that lends the server's own secrets (DKIM signing with its keys): the resident
    server takes it from its own settings only, never from a peer that is not its own user
    (docs/security.md, "Who may set what").
    """

    __slots__ = (
        "alias",
        "default",
        "doc",
        "empty_as",
        "empty_means_set",
        "env",
        "formerly",
        "name",
        "parse",
        "server_only",
    )

    def __init__(
        self,
        name: str,
        env: str,
        default: T,
        parse: Callable[[object], T],
        doc: str,
        *,
        alias: str = "",
        formerly: str = "",
        empty_means_set: bool = False,
        empty_as: str = "",
        server_only: bool = False,
    ) -> None:
        self.name = name
        self.env = env
        self.default = default
        self.parse = parse
        self.doc = doc
        self.alias = alias
        self.formerly = formerly
        self.empty_means_set = empty_means_set
        self.empty_as = empty_as
        self.server_only = server_only


# Parsers: each takes what the environment (a string) or TOML (any type) gave, returns the
# value, or raises ValueError with the words the log line shows after the value.


def path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    if "\0" in value:
        raise ValueError("must not hold a NUL")
    return value


def byte_count(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number of bytes")
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of bytes, 0 or more")
    return value


def count(value: object) -> int:
    number = byte_count(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def bounded(minimum: int, maximum: int) -> Callable[[object], int]:
    """A parser for a whole number from ``minimum`` to ``maximum`` (a depth the code
    recurses to has a ceiling, whoever sets it)."""

    def parse(value: object) -> int:
        number = byte_count(value)
        if not minimum <= number <= maximum:
            raise ValueError(f"must be from {minimum} to {maximum}")
        return number

    return parse


def seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 < number <= 86400:
        raise ValueError("must be more than 0 and at most 86400 seconds")
    return number


def exit_status(value: object) -> int:
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError("must be an exit code, 0 to 255")
    return value


def text(value: object) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be text without NUL")
    return value


def program(value: object) -> str:
    if not isinstance(value, str) or "\0" in value or (value and not value.split()):
        raise ValueError("must name a program")
    return value


def flags(value: object) -> str:
    if not isinstance(value, str) or len(value) > 4 or "\0" in value:
        raise ValueError("must be one or a few flag characters")
    return value


def words(value: object) -> frozenset[str]:
    """A list of words (commas or spaces in a variable), lowercased, leading dots dropped;
    ``none`` alone is the empty list."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a list of words")
    chosen = frozenset(i.strip().lower().lstrip(".") for i in items if i.strip())
    return frozenset() if chosen == {"none"} else chosen


def choice(*options: str) -> Callable[[object], str]:
    """A parser that takes one of ``options``."""

    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"must be one of: {', '.join(options)}")
        return value

    return parse


def subset(*known: str) -> Callable[[object], frozenset[str]]:
    """A parser that takes a comma list (a TOML array) of some of ``known``."""

    def parse(value: object) -> frozenset[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError("must be a comma list")
        chosen = frozenset(i.strip() for i in items if i.strip())
        unknown = chosen.difference(known)
        if unknown:
            raise ValueError(f"unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
        return chosen

    return parse


def server_list(
    read: Callable[[str], tuple[str, ...]], words_: str
) -> Callable[[object], tuple[str, ...]]:
    """A parser for a comma list (a TOML array) of servers, each checked by ``read``;
    ``words_`` describes an entry for the error."""

    def parse(value: object) -> tuple[str, ...]:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise ValueError(f"must be a comma list of {words_}")
        return read(value) if value.strip() else ()

    return parse


def _errfd(value: object) -> int:
    spelled = str(value)
    if spelled not in ("off", "0", "4", "6"):
        raise ValueError("must be off, 4 or 6")
    return 0 if spelled == "off" else int(spelled)


# The contract's own settings: the pipeline, policy and hand-off read these.

QMAILQUEUE = Setting(
    "qmailqueue",
    "QQF_QMAILQUEUE",
    "/var/qmail/bin/qmail-queue",
    path,
    "the queue program an accepted message is handed to (QMAILQUEUE is ignored)",
    server_only=True,
)
QMAILHOME = Setting(
    "qmailhome",
    "QQF_QMAILHOME",
    "/var/qmail",
    path,
    "qmail's home: control files are read from its control/ directory",
    server_only=True,
)
SPOOLDIR = Setting(
    "spooldir",
    "QQF_SPOOLDIR",
    os.environ.get("TMPDIR") or "/tmp",
    path,
    "where the message is held (in files without a name) while it is checked",
    server_only=True,
)
CODES = Setting(
    "codes",
    "QQF_CODES",
    "qmail",
    choice("qmail", "sqmail"),
    "refusal exit codes: qmail = 31 always; sqmail = 32 virus, 33 spam, 34 attachment",
)
ERRFD = Setting(
    "errfd",
    "QQF_ERRFD",
    0,
    _errfd,
    "descriptor of a patched qmail's custom-reply pipe (4 or 6); off = plain exit codes",
)
LOG = Setting(
    "log",
    "QQF_LOG",
    "text",
    choice("text", "json"),
    "log line format on stderr: text (key=value) or json (one object a line)",
)
DROP_CATEGORIES = Setting(
    "drop",
    "QQF_DROP",
    frozenset[str](),
    subset(*CATEGORIES),
    "refusal categories to discard silently instead (reported as queued, always logged)",
)
SCANERROR = Setting(
    "scanerror",
    "QQF_SCANERROR",
    "tempfail",
    choice("tempfail", "accept"),
    "when no scanner can decide: tempfail (451, retried) or accept with X-Virus-Status",
)


def _directory_or_none(value: object) -> str:
    text = path(value) if value != "" else ""
    if text and not text.startswith("/"):
        raise ValueError("must be an absolute path (or empty)")
    return text


QUARANTINE = Setting(
    "quarantine",
    "QQF_QUARANTINE",
    "",
    _directory_or_none,
    "directory where refused messages of QQF_QUARANTINECATS are kept (made 0700 if missing; "
    "qqfilter.quarantine); empty = keep none",
    server_only=True,
)
QUARANTINE_CATEGORIES = Setting(
    "quarantinecats",
    "QQF_QUARANTINECATS",
    frozenset({"virus", "attachment", "spam"}),
    subset(*CATEGORIES),
    "refusal categories kept in QQF_QUARANTINE (kept also when QQF_DROP drops them)",
)


def _address(value: object) -> str:
    address = text(value)
    if address.startswith("-") or any(c <= " " or c == "\x7f" for c in address):
        raise ValueError("must be one mail address (no spaces, not starting with -)")
    return address


NOTIFY = Setting(
    "notify",
    "QQF_NOTIFY",
    "",
    _address,
    "address told of each message kept in QQF_QUARANTINE (through qmail-inject; never the "
    "sender); empty = no notices",
)
NOTIFY_DIGEST = Setting(
    "notifydigest",
    "QQF_NOTIFYDIGEST",
    "off",
    choice("off", "daily"),
    "daily: no notice per kept message; `qqfilter quarantine digest --send` (cron) tells "
    "QQF_NOTIFY what was kept",
)
CORE: tuple[Setting, ...] = (
    QMAILQUEUE,
    QMAILHOME,
    SPOOLDIR,
    CODES,
    ERRFD,
    LOG,
    DROP_CATEGORIES,
    SCANERROR,
    QUARANTINE,
    QUARANTINE_CATEGORIES,
    NOTIFY,
    NOTIFY_DIGEST,
)


CONFIG_VARIABLE = "QQF_CONFIG"
"""Names the TOML file: a path, so a server-only variable like the rows marked so."""


def server_only_variables() -> frozenset[str]:
    """The variables a resident server never takes from a peer that is not its own user:
    those of every ``server_only`` row (and their aliases), and QQF_CONFIG."""
    rows = every_setting()
    names = {CONFIG_VARIABLE}
    for row in rows:
        if row.server_only:
            names.update(name for name in (row.env, row.alias) if name)
    return frozenset(names)


def every_setting() -> tuple[Setting, ...]:
    """The contract's rows, then each check unit's, in the order the checks run; a row that
    two units share (the same object) once. Assembled once per process."""
    global _ROWS, _NAMES
    if _ROWS is None:
        from qqfilter.checks import units

        rows: dict[str, Setting] = {}
        for row in (*CORE, *(row for unit in units() for row in unit.settings)):
            if rows.setdefault(row.name, row) is not row:
                raise RuntimeError(f"two settings are called {row.name}")
        _ROWS = tuple(rows.values())
        _NAMES = frozenset(name for row in _ROWS for name in (row.name, row.formerly) if name)
    return _ROWS


_ROWS: tuple[Setting, ...] | None = None
_NAMES: frozenset[str] = frozenset()
"""Every name the TOML file may use (those of today, and older ones still read)."""


class Settings:
    """Effective values, read with their row as the key (``settings[MAXSIZE]``), and where
    each came from (``sources[name]``: a variable, the TOML file's path, or "default")."""

    __slots__ = ("sources", "values")

    def __init__(self, values: dict[str, object], sources: dict[str, str]) -> None:
        self.values = values
        self.sources = sources

    def __getitem__(self, setting: Setting[T]) -> T:
        return self.values[setting.name]  # type: ignore[return-value]  # load parsed it

    @classmethod
    def defaults(cls) -> Settings:
        """Built-in defaults only: no environment, no file."""
        rows = every_setting()
        return cls({s.name: s.default for s in rows}, {s.name: "default" for s in rows})

    def but(self, setting: Setting[T], value: T) -> Settings:
        """A copy with ``setting`` set to ``value`` (for tools and tests)."""
        return Settings({**self.values, setting.name: value}, {**self.sources})


def load(environ: dict[str, str]) -> tuple[Settings, list[SettingError]]:
    """Effective settings from ``environ``, the TOML file and the defaults.

    A variable set to "" counts as unset, except for rows with ``empty_means_set`` (s/qmail's
    names), where it is set and read as the row's ``empty_as``. Invalid values are returned
    as errors (the default stands in for each), so a caller can show them all or refuse on
    the first.
    """
    rows = every_setting()
    errors: list[SettingError] = []
    table, origin = _read_file(environ, errors)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in rows:
        name = setting.name
        raw: object
        given = [  # the variable, else its alias; "" is unset, or s/qmail's "set" (empty_as)
            (environ[variable] or setting.empty_as, variable)
            for variable in (setting.env, setting.alias)
            if variable
            and (environ.get(variable) or (setting.empty_means_set and variable in environ))
        ]
        if given:
            raw, source = given[0]
        elif name in table:
            raw, source = table[name], origin
        elif setting.formerly in table:
            raw, source = table[setting.formerly], origin
        else:
            values[name], sources[name] = setting.default, "default"
            continue
        sources[name] = source
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            errors.append(SettingError(name, source, f"{raw!r} {exc}"))
            values[name] = setting.default
    settings = Settings(values, sources)
    from qqfilter.checks import units

    for unit in units():
        if unit.validate is not None:
            errors += unit.validate(settings)
    return settings, errors


def _read_file(
    environ: dict[str, str], errors: list[SettingError]
) -> tuple[dict[str, object], str]:
    """The TOML table and its path; absent is fine unless QQF_CONFIG named the file."""
    from qqfilter import control

    path = environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG
    try:
        data = control.trusted_bytes(path)
    except control.Untrusted as exc:
        errors.append(SettingError("config", path, str(exc)))
        return {}, path
    except OSError as exc:
        errors.append(SettingError("config", path, exc.strerror or str(exc)))
        return {}, path
    if data is None:
        if environ.get(CONFIG_VARIABLE):
            errors.append(SettingError("config", CONFIG_VARIABLE, f"{path}: no such file"))
        return {}, path
    if not data.strip():  # an empty file (QQF_CONFIG=/dev/null) needs no TOML reader
        return {}, path
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except RecursionError:  # tomllib recurses per nested table or array
        errors.append(SettingError("config", path, "not valid TOML: nested too deep"))
        return {}, path
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(SettingError("config", path, f"not valid TOML: {exc}"))
        return {}, path
    for key in sorted(set(table).difference(_NAMES)):  # load has called every_setting
        errors.append(SettingError(key, path, "no such setting"))
        del table[key]
    return table, path
