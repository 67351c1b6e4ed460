"""Every setting, where it came from, and what makes one invalid.

Three layers, the first that has a value wins: the environment (per connection, from the tcp
rules), the TOML file named by QQF_CONFIG, the built-in default. An environment variable set to
the empty string counts as unset, as tcprules users expect. Nothing here reads the message.
"""

import os

DEFAULT_CONFIG = "/etc/qqfilter.toml"
CATEGORIES = ("policy", "virus", "spam", "attachment")
"""What a refusal is about; s/qmail codes and QQF_DROP are chosen by it."""


class SettingError(Exception):
    """One invalid setting: which, from where, and why."""

    def __init__(self, name: str, source: str, why: str) -> None:
        super().__init__(f"setting {name} from {source}: {why}")
        self.name = name


def _path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    if "\0" in value:
        raise ValueError("must not hold a NUL")
    return value


def _bytes(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number of bytes")
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of bytes, 0 or more")
    return value


def _choice(*options: str):
    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"must be one of: {', '.join(options)}")
        return value

    return parse


def _errfd(value: object) -> int:
    text = str(value)
    if text not in ("off", "0", "4", "6"):
        raise ValueError("must be off, 4 or 6")
    return 0 if text == "off" else int(text)


def _categories(value: object) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a comma list")
    chosen = frozenset(i.strip() for i in items if i.strip())
    unknown = chosen.difference(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown {', '.join(sorted(unknown))}; known: {', '.join(CATEGORIES)}")
    return chosen


class Setting:
    """One setting: its name in the TOML file, its variable, default, parser and meaning."""

    __slots__ = ("default", "doc", "env", "name", "parse")

    def __init__(self, name: str, env: str, default: object, parse, doc: str) -> None:
        self.name = name
        self.env = env
        self.default = default
        self.parse = parse
        self.doc = doc


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "qmailqueue",
        "QQF_QMAILQUEUE",
        "/var/qmail/bin/qmail-queue",
        _path,
        "the queue program an accepted message is handed to (QMAILQUEUE is ignored)",
    ),
    Setting(
        "qmailhome",
        "QQF_QMAILHOME",
        "/var/qmail",
        _path,
        "qmail's home: control files are read from its control/ directory",
    ),
    Setting(
        "spooldir",
        "QQF_SPOOLDIR",
        os.environ.get("TMPDIR") or "/tmp",
        _path,
        "where the message is held (in files without a name) while it is checked",
    ),
    Setting(
        "maxsize",
        "QQF_MAXSIZE",
        0,
        _bytes,
        "refuse messages larger than this many bytes; 0 = no limit",
    ),
    Setting(
        "codes",
        "QQF_CODES",
        "qmail",
        _choice("qmail", "sqmail"),
        "refusal exit codes: qmail = 31 always; sqmail = 32 virus, 33 spam, 34 attachment",
    ),
    Setting(
        "errfd",
        "QQF_ERRFD",
        0,
        _errfd,
        "descriptor of a patched qmail's custom-reply pipe (4 or 6); off = plain exit codes",
    ),
    Setting(
        "log",
        "QQF_LOG",
        "text",
        _choice("text", "json"),
        "log line format on stderr: text (key=value) or json (one object a line)",
    ),
    Setting(
        "drop",
        "QQF_DROP",
        frozenset(),
        _categories,
        "refusal categories to discard silently instead (reported as queued, always logged)",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """Effective values, by setting name as attributes, with where each came from."""

    def __init__(self, values: dict[str, object], sources: dict[str, str]) -> None:
        self.__dict__.update(values)
        self.sources = sources

    @classmethod
    def defaults(cls) -> "Settings":
        """Built-in defaults only: no environment, no file."""
        return cls({s.name: s.default for s in SETTINGS}, dict.fromkeys(_BY_NAME, "default"))


def load(environ: dict[str, str]) -> tuple[Settings, list[SettingError]]:
    """Effective settings from ``environ``, the TOML file and the defaults.

    Invalid values are returned as errors (the default stands in for each), so a caller can
    show them all or refuse on the first.
    """
    errors: list[SettingError] = []
    table, origin = _read_file(environ, errors)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        name = setting.name
        if environ.get(setting.env):
            raw, source = environ[setting.env], setting.env
        elif name in table:
            raw, source = table[name], origin
        else:
            values[name], sources[name] = setting.default, "default"
            continue
        sources[name] = source
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            errors.append(SettingError(name, source, f"{raw!r} {exc}"))
            values[name] = setting.default
    return Settings(values, sources), errors


def _read_file(environ: dict[str, str], errors: list[SettingError]) -> tuple[dict, str]:
    """The TOML table and its path; absent is fine unless QQF_CONFIG named the file."""
    path = environ.get("QQF_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        if environ.get("QQF_CONFIG"):
            errors.append(SettingError("config", "QQF_CONFIG", f"{path}: no such file"))
        return {}, path
    except OSError as exc:
        errors.append(SettingError("config", path, exc.strerror or str(exc)))
        return {}, path
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(SettingError("config", path, f"not valid TOML: {exc}"))
        return {}, path
    for key in sorted(set(table).difference(_BY_NAME)):
        errors.append(SettingError(key, path, "no such setting"))
        del table[key]
    return table, path
