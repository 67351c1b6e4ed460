"""Every setting, where it came from, and what makes one invalid.

Three layers, the first that has a value wins: the environment (per connection, from the tcp
rules), the TOML file named by QQF_CONFIG, the built-in default. An environment variable set to
the empty string counts as unset, as tcprules users expect. Nothing here reads the message.
"""

import os

from qqfilter.kinds import BLOCKED_EXTENSIONS, KINDS

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


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if not 0 < seconds <= 86400:
        raise ValueError("must be more than 0 and at most 86400 seconds")
    return seconds


def _exit_status(value: object) -> int:
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError("must be an exit code, 0 to 255")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be text without NUL")
    return value


def _program(value: object) -> str:
    if not isinstance(value, str) or "\0" in value or (value and not value.split()):
        raise ValueError("must name a program")
    return value


def _clamd_servers(value: object) -> tuple[str, ...]:
    from qqfilter.clamd import parse_servers

    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError("must be a comma list of unix:/path or host:port")
    return parse_servers(value) if value.strip() else ()


def _level(value: object) -> int:
    text = str(value)
    if isinstance(value, bool) or text not in ("0", "1", "2", "3", "4", "5", "6"):
        raise ValueError("must be a level from 0 to 6")
    return int(text)


def _dns_servers(value: object) -> tuple[str, ...]:
    from qqfilter.resolver import parse_servers

    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError("must be a comma list of ip or ip:port")
    return parse_servers(value) if value.strip() else ()


def _words(value: object) -> frozenset[str]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a list of words")
    chosen = frozenset(i.strip().lower().lstrip(".") for i in items if i.strip())
    return frozenset() if chosen == {"none"} else chosen


def _flags(value: object) -> str:
    if not isinstance(value, str) or len(value) > 4 or "\0" in value:
        raise ValueError("must be one or a few flag characters")
    return value


def _count(value: object) -> int:
    number = _bytes(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


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


def _subset(*known: str):
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


class Setting:
    """One setting: its name in the TOML file, its variable (and an older name for it, read
    when the variable is unset), default, parser and meaning."""

    __slots__ = ("alias", "default", "doc", "env", "name", "parse")

    def __init__(
        self, name: str, env: str, default: object, parse, doc: str, alias: str = ""
    ) -> None:
        self.name = name
        self.env = env
        self.default = default
        self.parse = parse
        self.doc = doc
        self.alias = alias


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
        _subset(*CATEGORIES),
        "refusal categories to discard silently instead (reported as queued, always logged)",
    ),
    Setting(
        "clamd",
        "QQF_CLAMD",
        (),
        _clamd_servers,
        "clamd servers to scan with, tried in order: comma list of unix:/path or host:port",
    ),
    Setting(
        "clamdconnect",
        "QQF_CLAMDCONNECT",
        5.0,
        _seconds,
        "seconds to wait for a connection to one clamd before trying the next",
    ),
    Setting(
        "clamdtimeout",
        "QQF_CLAMDTIMEOUT",
        60.0,
        _seconds,
        "seconds a clamd may go without taking data or answering before the next is tried",
    ),
    Setting(
        "clamdmaxsize",
        "QQF_CLAMDMAXSIZE",
        0,
        _bytes,
        "skip clamd (logged) for messages larger than this many bytes; 0 = scan all",
    ),
    Setting(
        "qhpsi",
        "QHPSI",
        "",
        _program,
        "s/qmail QHPSI scanner program, run on the message file; %s marks the file's place",
    ),
    Setting("qhpsiarg1", "QHPSIARG1", "", _text, "first extra argument for the QHPSI scanner"),
    Setting("qhpsiarg2", "QHPSIARG2", "", _text, "second extra argument for the QHPSI scanner"),
    Setting("qhpsiarg3", "QHPSIARG3", "", _text, "third extra argument for the QHPSI scanner"),
    Setting(
        "qhpsirc",
        "QHPSIRC",
        1,
        _exit_status,
        "the QHPSI scanner's exit code for infected",
    ),
    Setting(
        "qhpsirn",
        "QHPSIRN",
        0,
        _exit_status,
        "the QHPSI scanner's exit code for clean; any other code means it could not decide",
    ),
    Setting(
        "qhpsiminsize",
        "QHPSIMINSIZE",
        0,
        _bytes,
        "skip the QHPSI scanner (logged) for messages smaller than this; 0 = no lower limit",
    ),
    Setting(
        "qhpsimaxsize",
        "QHPSIMAXSIZE",
        0,
        _bytes,
        "skip the QHPSI scanner (logged) for messages larger than this; 0 = no upper limit",
    ),
    Setting(
        "scantimeout",
        "QQF_SCANTIMEOUT",
        120.0,
        _seconds,
        "seconds the virus scan of one message may take in all, clamd failover included",
    ),
    Setting(
        "scanerror",
        "QQF_SCANERROR",
        "tempfail",
        _choice("tempfail", "accept"),
        "when no scanner can decide: tempfail (451, retried) or accept with X-Virus-Status",
    ),
    Setting(
        "scanskip",
        "QQF_SCANSKIP",
        frozenset(),
        _subset("relayclient", "local"),
        "skip virus scans (logged) for: relayclient (RELAYCLIENT set), local (no TCPREMOTEIP)",
    ),
    Setting(
        "spf",
        "SPF",
        0,
        _level,
        "SPF level (s/qmail): 0 off, 1 stamp headers only, 2 also 451 on DNS/record errors, "
        "3 reject fail, 4 also softfail, 5 also neutral, 6 also none and permerror",
        alias="SPFBEHAVIOR",
    ),
    Setting(
        "dns",
        "QQF_DNS",
        (),
        _dns_servers,
        "DNS servers for SPF: comma list of ip or ip:port; empty = those of /etc/resolv.conf",
    ),
    Setting(
        "spftimeout",
        "QQF_SPFTIMEOUT",
        20.0,
        _seconds,
        "seconds all DNS lookups of one message's SPF check may take; then it is temperror",
    ),
    Setting(
        "rcptcheck",
        "QQF_RCPTCHECK",
        "off",
        _choice("off", "any", "all"),
        "refuse mail for local mailboxes that do not exist: any (one unknown recipient is "
        "enough) or all (only when every recipient is unknown); off",
    ),
    Setting(
        "rcptlist",
        "QQF_RCPTLIST",
        "",
        _text,
        "a file of valid addresses (and @domain for whole domains) for domains whose "
        "mailboxes live elsewhere; the domains in it are judged by it alone",
    ),
    Setting(
        "bouncercpts",
        "QQF_BOUNCERCPTS",
        1,
        _bytes,
        "refuse bounces (empty sender) to more recipients than this; 0 = no limit",
    ),
    Setting(
        "blockext",
        "QQF_BLOCKEXT",
        frozenset(BLOCKED_EXTENSIONS),
        _words,
        "attachment file name extensions to refuse (also in archives); none = no name check",
    ),
    Setting(
        "blockkinds",
        "QQF_BLOCKKINDS",
        frozenset(KINDS),
        _subset(*KINDS, "none"),
        "content kinds to refuse in any encoding or archive: " + ", ".join(KINDS),
    ),
    Setting(
        "attachskip",
        "QQF_ATTACHSKIP",
        frozenset(),
        _subset("relayclient", "local"),
        "skip the attachment checks (logged) for: relayclient, local (no TCPREMOTEIP)",
    ),
    Setting(
        "badmimetype",
        "BADMIMETYPE",
        "",
        _flags,
        "s/qmail WarLord: any value turns control/badmimetypes on; ! also refuses white space "
        "in base64, + skips RELAYCLIENT, - is off",
    ),
    Setting(
        "badloadertype",
        "BADLOADERTYPE",
        "",
        _flags,
        "s/qmail WarLord: the loader character (e.g. M) for control/badloadertypes; "
        "+ skips RELAYCLIENT, - is off",
    ),
    Setting(
        "mimedepth",
        "QQF_MIMEDEPTH",
        30,
        _count,
        "refuse messages whose MIME nesting is deeper than this (they cannot be checked)",
    ),
    Setting(
        "mimeparts",
        "QQF_MIMEPARTS",
        1000,
        _count,
        "refuse messages with more MIME parts than this (they cannot be checked)",
    ),
    Setting(
        "archivedepth",
        "QQF_ARCHIVEDEPTH",
        2,
        _bytes,
        "zip archives looked into, nested up to this depth; 0 = do not open archives",
    ),
    Setting(
        "archivemembers",
        "QQF_ARCHIVEMEMBERS",
        1000,
        _count,
        "archive members looked at per message; past it, the rest is noted, not checked",
    ),
    Setting(
        "archivemaxsize",
        "QQF_ARCHIVEMAXSIZE",
        50_000_000,
        _bytes,
        "zip attachments larger than this (decoded) are not opened (noted)",
    ),
    Setting(
        "archiveexpand",
        "QQF_ARCHIVEEXPAND",
        100_000_000,
        _bytes,
        "bytes decompressed from archives per message, at most (zip bombs stop here)",
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
        elif setting.alias and environ.get(setting.alias):
            raw, source = environ[setting.alias], setting.alias
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
    if values["qhpsirc"] == values["qhpsirn"]:
        errors.append(SettingError("qhpsirn", sources["qhpsirn"], "must differ from QHPSIRC"))
    return Settings(values, sources), errors


def _read_file(environ: dict[str, str], errors: list[SettingError]) -> tuple[dict, str]:
    """The TOML table and its path; absent is fine unless QQF_CONFIG named the file."""
    path = environ.get("QQF_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, "rb") as stream:
            from qqfilter.control import unsafe

            why = unsafe(os.fstat(stream.fileno()))
            if why:
                errors.append(SettingError("config", path, why))
                return {}, path
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
