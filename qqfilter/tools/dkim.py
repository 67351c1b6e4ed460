"""``qqfilter dkim keygen`` and ``qqfilter dkim check``: a signing key, and its DNS record.

``keygen DOMAIN`` writes a new private key where the signer (qqfilter.checks.dkim.sign, in
qmail-dkim's layout: control/domainkeys/<domain>/<selector>) reads it, lists its selector in
the domain's ``selector`` file, and prints the TXT record to publish. ``check DOMAIN`` asks
DNS, through the project's resolver (QQF_DNS), for the record of each selector the signer
would use, and says whether it publishes the local key: a signature whose key is not
published is worse than none, since DMARC then fails.

The reading and writing rules are the signer's own (sign/keys.py): the file formats, the
selectors' file and its ``default``, the ``%`` directory, and who may own a key (root or the
account the checks run as, qmaild: the key is written 0600 for that account, as setup's
``checking_account`` finds it). So this module holds only what a person needs on top: the
atomic writes (a running signer never reads half a key), the record in zone-file form, and
the comparison with what DNS says. Like every tool module (qqfilter.tools), it holds its
sub-parser, handlers and output together; every failure is one line and an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import sys
import tempfile

from qqfilter import control
from qqfilter.checks.dkim import DKIMTIMEOUT, valid_domain
from qqfilter.checks.dkim.sign import keys
from qqfilter.exitcodes import CONFIG_ERROR, QueueError
from qqfilter.settings import QMAILHOME, Settings, load
from qqfilter.shared.lookups import Lookups, Undecided
from qqfilter.shared.resolver import DNS
from qqfilter.tools import FAILED, USAGE_ERROR, Refusal, setup

MIN_BITS = 1024
"""RSA keys shorter than this are refused (RFC 8301: verifiers must not accept them)."""
MAX_BITS = 4096
"""RSA keys longer than this are refused: RFC 8301 asks verifiers to take up to 4096 bits."""
DEFAULT_BITS = 2048
TXT_STRING = 255
"""The longest string in a TXT record: a longer record is several strings, joined by readers."""
KEY_LIMIT = 1 << 16
"""Bytes of a key file read (as the signer reads them)."""
SETTINGS_USED = frozenset({"config", QMAILHOME.name, DNS.name, DKIMTIMEOUT.name})
"""The settings an invalid value of which stops these commands (others do not concern them)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dkim`` (with its actions ``keygen`` and ``check``) to the subcommands ``sub``."""
    parser = sub.add_parser(
        "dkim",
        help="make a DKIM signing key, or check that DNS publishes it",
        description="DKIM signing keys in qmail-dkim's layout (control/domainkeys), which "
        "QQF_DKIMSIGN=relayclient signs with.",
    )
    actions = parser.add_subparsers(dest="action", required=True)

    keygen = actions.add_parser(
        "keygen",
        help="write a new signing key for a domain and print its DNS record",
        description="Write a new private key to control/domainkeys/DOMAIN/SELECTOR (0600, for "
        "the account the checks run as), list SELECTOR in the domain's selector file, and "
        "print the TXT record to publish.",
    )
    keygen.add_argument("domain", help="the domain that signs (the From domain of its mail)")
    keygen.add_argument(
        "--selector",
        metavar="S",
        help="the key's name in DNS (default for RSA, ed25519 with --ed25519)",
    )
    keygen.add_argument(
        "--ed25519", action="store_true", help="an Ed25519 key (RFC 8463) instead of RSA"
    )
    keygen.add_argument(
        "--bits",
        type=int,
        metavar="N",
        help=f"RSA key size ({DEFAULT_BITS}; {MIN_BITS} to {MAX_BITS})",
    )
    keygen.add_argument(
        "--user",
        metavar="NAME",
        help=f"the account the checks run as, who gets the key ({setup.QMAIL_USER}; without one, "
        "ourselves)",
    )
    _qmailhome_option(keygen)
    keygen.add_argument("--force", action="store_true", help="replace a key that exists")
    keygen.set_defaults(run=_keygen)

    check = actions.add_parser(
        "check",
        help="check that DNS publishes a domain's signing keys",
        description="For each selector the signer uses for DOMAIN (or --selector), compare the "
        "public half of the local key with the TXT record SELECTOR._domainkey.DOMAIN. Exits 0 "
        "only when every one matches.",
    )
    check.add_argument("domain", help="the domain that signs")
    check.add_argument(
        "--selector", metavar="S", help="only this one (default: every one the signer uses)"
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long all the DNS questions may take (QQF_DKIMTIMEOUT, 10)",
    )
    check.add_argument(
        "--user",
        metavar="NAME",
        help=f"the account the checks run as, whose key files are trusted besides root's "
        f"({setup.QMAIL_USER})",
    )
    _qmailhome_option(check)
    check.set_defaults(run=_check)


def _qmailhome_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--qmailhome",
        metavar="DIR",
        help="qmail's home, whose control/domainkeys holds the keys (QQF_QMAILHOME, /var/qmail)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


# --- keygen ---------------------------------------------------------------------------------


def _keygen(options: argparse.Namespace) -> int:
    try:
        settings = _settings()
        qmailhome = options.qmailhome or settings[QMAILHOME]
        domain = _domain(options.domain)
        algorithm = keys.ED25519 if options.ed25519 else keys.RSA
        selector = _selector(options.selector or ("ed25519" if options.ed25519 else "default"))
        bits = _bits(options.bits, options.ed25519)
        written, lines, notes = _make_key(options, qmailhome, domain, selector, algorithm, bits)
    except Refusal as exc:
        _say(str(exc))
        return exc.code
    for note in notes:
        _say(note)
    print(written)
    for line in lines:
        print(line)
    return 0


def _bits(bits: int | None, ed25519: bool) -> int:
    if bits is None:
        return DEFAULT_BITS
    if ed25519:
        raise Refusal("--bits is for RSA keys: an Ed25519 key has no size to choose", USAGE_ERROR)
    if bits < MIN_BITS:
        raise Refusal(f"--bits {bits}: an RSA key needs at least {MIN_BITS} bits", USAGE_ERROR)
    if bits > MAX_BITS:
        raise Refusal(
            f"--bits {bits}: verifiers need not take keys over {MAX_BITS} bits (RFC 8301)",
            USAGE_ERROR,
        )
    return bits


def _make_key(
    options: argparse.Namespace,
    qmailhome: str,
    domain: str,
    selector: str,
    algorithm: str,
    bits: int,
) -> tuple[str, list[str], list[str]]:
    """Write the key and list its selector; (what was written, the lines that tell what to
    publish, notes). Raises Refusal, leaving any key that was there as it was."""
    from pathlib import Path

    top = os.path.join(qmailhome, "control", keys.DIRECTORY)
    notes: list[str] = []
    # refuses when control/ is not there: no qmail to sign for
    account = setup.checking_account(options.user, Path(top), notes)
    me = os.geteuid()
    if me not in (0, account.pw_uid):
        raise Refusal(
            f"only root may give a key to {account.pw_name}: run this as root, or name "
            f"yourself with --user {_name(me)}"
        )
    where = keys.directory(qmailhome, domain)
    path = os.path.join(where, selector)
    if os.path.lexists(path) and not options.force:
        raise Refusal(f"{path} exists: --force replaces it (then publish its new record)")
    owners = _owners(account.pw_uid)
    listing = os.path.join(where, keys.SELECTORS)
    try:
        listed = _trusted(listing, _shown(domain, keys.SELECTORS), owners, 1 << 20)
    except QueueError as exc:
        raise Refusal(exc.reason) from None
    data = keys.generate(algorithm, bits)
    try:
        for directory in (top, where):
            _directory(directory)
        _write(path, data, 0o600, (account.pw_uid, account.pw_gid), replace=options.force)
    except FileExistsError:
        raise Refusal(f"{path} exists: --force replaces it (then publish its new record)") from None
    except OSError as exc:
        raise Refusal(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
    written = f"wrote {path} ({_described(algorithm, bits)}, mode 0600, owner {account.pw_name})"
    names = listed.decode("utf-8", "replace").split() if listed is not None else []
    if selector not in names:
        if listed is None:  # with no file the signer uses ``default``: keep a key there signing
            keep = selector != "default" and os.path.exists(os.path.join(where, "default"))
            text, added = "", ["default", selector] if keep else [selector]
        else:
            text, added = listed.decode("utf-8", "replace"), [selector]
            text += "\n" if text and not text.endswith("\n") else ""
        text += "".join(f"{name}\n" for name in added)
        try:
            _write(listing, text.encode("utf-8"), 0o644, _owner_of(listing), replace=True)
        except OSError as exc:
            raise Refusal(
                f"wrote {path}, but cannot list it in {listing}: {exc.strerror or exc}"
            ) from None
        written += f"\nlisted {selector} in {listing}"
    record = keys.public_record(*keys.readable(data, path))
    hint = f"qqfilter dkim check {domain} --selector {selector}"
    if options.qmailhome:
        hint += f" --qmailhome {options.qmailhome}"
    lines = [
        f"Publish this TXT record in the DNS of {domain}:",
        *zone_record(f"{selector}._domainkey.{domain}.", record),
        f"Once it is published (DNS may take a while): {hint}",
    ]
    return written, lines, notes


def _described(algorithm: str, bits: int) -> str:
    return "Ed25519" if algorithm == keys.ED25519 else f"RSA {bits} bits"


def zone_record(name: str, record: str) -> list[str]:
    """The TXT ``record`` of ``name`` in zone-file form, over lines: its tags, then p= cut into
    strings of at most TXT_STRING characters (the resolver joins them again)."""
    head, tag, key = record.partition("p=")
    rest = tag + key
    strings = [head] if head else []
    strings += [rest[i : i + TXT_STRING] for i in range(0, len(rest), TXT_STRING)]
    quoted = [f'"{s}"' for s in strings]
    if len(quoted) == 1:
        return [f"{name} IN TXT {quoted[0]}"]
    return [
        f"{name} IN TXT ( {quoted[0]}",
        *(f"    {q}" for q in quoted[1:-1]),
        f"    {quoted[-1]} )",
    ]


def _directory(path: str) -> None:
    """Make ``path`` (0755) when it is not there; one that is stays as it is."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(20, "Not a directory", path) from None
        return
    os.chmod(path, 0o755)  # the umask may have taken bits off


def _owner_of(path: str) -> tuple[int, int] | None:
    """The owner of the file ``path`` (kept when it is written again); None when absent."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return status.st_uid, status.st_gid


def _write(
    path: str, data: bytes, mode: int, owner: tuple[int, int] | None, *, replace: bool
) -> None:
    """``data`` into ``path`` whole or not at all: a new file beside it, given its mode and
    owner before anything is written and synced to disk, then renamed over ``path``
    (``replace``) or linked to it (which fails with FileExistsError if ``path`` appeared
    meanwhile). No reader ever sees half a file; no temporary file is left behind."""
    where = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=where)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            _link(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk
        directory = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _link(temp: str, path: str) -> None:
    """Put ``temp`` at ``path`` unless something is there (FileExistsError)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: look, then rename
        if os.path.lexists(path):
            raise FileExistsError(17, "File exists", path) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


# --- check ----------------------------------------------------------------------------------


def _check(options: argparse.Namespace) -> int:
    try:
        settings = _settings()
        qmailhome = options.qmailhome or settings[QMAILHOME]
        domain = _domain(options.domain)
        wanted = _selector(options.selector) if options.selector else None
        owners = _owners(_user_uid(options.user))
        where, selectors, notes = _where(qmailhome, domain, wanted, owners)
    except Refusal as exc:
        _say(str(exc))
        return exc.code
    for note in notes:
        _say(note)
    timeout = options.timeout if options.timeout is not None else settings[DKIMTIMEOUT]
    lookups: Lookups | Undecided
    try:  # one deadline for all the questions, as for the checks of one message
        lookups = Lookups(settings[DNS], timeout)
    except Undecided as exc:  # no server to ask: each selector says so
        lookups = exc
    status = 0
    for selector in selectors:
        name = f"{selector}._domainkey.{domain}"
        ok, said = _check_one(lookups, name, os.path.join(where, selector), owners)
        print(f"{name}: {said}")
        status = status if ok else FAILED
    return status


def _where(
    qmailhome: str, domain: str, wanted: str | None, owners: frozenset[int]
) -> tuple[str, list[str], list[str]]:
    """The directory whose keys sign ``domain``'s mail, as the signer chooses it (its own
    when a selector listed there has a key, else ``%``), the selectors to check in it
    (``wanted``, else those listed there), and notes. ``wanted`` with a key file in the
    domain's own directory is checked there, listed or not (a note says the signer skips
    it). Refusal when there is no key to check."""
    own = keys.directory(qmailhome, domain)
    fallback = keys.directory(qmailhome, keys.DEFAULT)
    notes = []
    try:
        listed = _selectors(own, domain, owners)
        if wanted and os.path.lexists(os.path.join(own, wanted)):
            if wanted not in listed:
                notes.append(
                    f"{wanted} is not listed in {os.path.join(own, keys.SELECTORS)}: "
                    "the signer does not use it"
                )
            return own, [wanted], notes
        if not _with_keys(own, listed):
            listed = _selectors(fallback, keys.DEFAULT, owners)
            if not _with_keys(fallback, listed):
                raise Refusal(
                    f"no DKIM key for {domain} in {own} (nor in {fallback}): "
                    f"qqfilter dkim keygen {domain}"
                )
            own = fallback
            notes.append(f"{domain} has no keys of its own: checking those in {fallback}")
            notes += _not_ours(qmailhome, domain)
    except QueueError as exc:
        raise Refusal(exc.reason) from None
    return own, [wanted] if wanted else listed, notes


def _with_keys(where: str, selectors: list[str]) -> bool:
    """Whether one of ``selectors`` has a key file in ``where`` (the signer then uses it)."""
    return any(os.path.lexists(os.path.join(where, s)) for s in selectors)


def _not_ours(qmailhome: str, domain: str) -> list[str]:
    """A note when the signer would not use ``%``'s keys for ``domain`` (not in rcpthosts)."""
    from qqfilter.checks.hygiene import ours

    try:
        if ours(qmailhome, domain):
            return []
    except QueueError as exc:
        return [exc.reason]
    return [f"{domain} is not in rcpthosts: the signer uses {keys.DEFAULT}'s keys only for ours"]


def _selectors(where: str, directory: str, owners: frozenset[int]) -> list[str]:
    """keys.selectors, the file read as _trusted reads it: ``default`` when there is none."""
    listing = os.path.join(where, keys.SELECTORS)
    data = _trusted(listing, _shown(directory, keys.SELECTORS), owners)
    if data is None:
        return ["default"]
    return [n for n in data.decode("utf-8", "replace").split() if keys.valid_name(n)]


def _check_one(
    lookups: Lookups | Undecided, name: str, path: str, owners: frozenset[int]
) -> tuple[bool, str]:
    """(whether DNS publishes the key in ``path`` at ``name``, the words that say so)."""
    where, selector = os.path.split(path)
    try:
        data = _trusted(path, _shown(os.path.basename(where), selector), owners, KEY_LIMIT)
        if data is None:
            return False, f"no key file {path}"
        want = _tags(keys.public_record(*keys.readable(data, path)))
    except QueueError as exc:
        return False, exc.reason
    except Exception as exc:  # a key's markers around something else: cryptography says
        return False, f"cannot read the key in {path}: {exc or type(exc).__name__}"
    if isinstance(lookups, Undecided):
        return False, f"DNS failed: {lookups}"
    try:
        records = lookups.ask(name, "TXT")
    except Undecided as exc:
        return False, f"DNS failed: {exc}"
    return judge(records, want, path)


def judge(records: list[str], want: dict[str, str], path: str) -> tuple[bool, str]:
    """Whether the TXT ``records`` publish the key whose record's tags are ``want``, and the
    words for it. Several key records at one name: a verifier may take any of them."""
    if not records:
        return False, "is not published (no TXT record)"
    published = [t for t in map(_tags, records) if _is_key(t)]
    if not published:
        shown = records[0] if len(records[0]) <= 40 else records[0][:40] + "..."
        return False, f"is not published (a TXT record, but no DKIM key: {shown!r})"
    kind = want.get("k", "rsa")
    same = [t for t in published if t["p"] == want["p"] and t.get("k", "rsa").lower() == kind]
    if same and len(published) == 1:
        return True, f"matches the key in {path}"
    if same:
        return False, (
            f"{len(published)} key records are published, one of them the key in {path}: "
            "a verifier may take another"
        )
    if all(not t["p"] for t in published):
        return False, "key revoked (empty p=)"
    other = next(t for t in published if t["p"])
    if other["p"] == want["p"]:
        return False, f"publishes the key as k={other.get('k', 'rsa')}, not k={kind} ({path})"
    return False, f"publishes a different key (p={_short(other['p'])}): not the key in {path}"


def _tags(record: str) -> dict[str, str]:
    """A DKIM record's tags, read leniently: tag names in lower case, spaces dropped (also
    inside a value: p= may be folded), the first of a tag given twice."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        tag, equals, value = part.partition("=")
        if equals:
            tags.setdefault(tag.strip().lower(), "".join(value.split()))
    if "k" in tags:
        tags["k"] = tags["k"].lower()
    return tags


def _is_key(tags: dict[str, str]) -> bool:
    """Whether a TXT record's tags are a DKIM key record (p=, and v= DKIM1 if any)."""
    return "p" in tags and tags.get("v", "DKIM1").upper() == "DKIM1"


def _short(value: str) -> str:
    """A p= value to tell it by: its start and end (keys of one size share a long start)."""
    return value if len(value) <= 24 else f"{value[:8]}...{value[-12:]}"


# --- shared ---------------------------------------------------------------------------------


def _settings() -> Settings:
    """This process's settings; Refusal when one of those these commands use is invalid."""
    settings, errors = load(dict(os.environ))
    bad = [error for error in errors if error.name in SETTINGS_USED]
    if bad:
        raise Refusal(str(bad[0]), USAGE_ERROR)
    return settings


def _domain(text: str) -> str:
    """The domain as the signer names it: lower case, in ASCII (IDNA), no final dot."""
    name = text.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    if not valid_domain(name):
        raise Refusal(f"not a domain name: {text!r}", USAGE_ERROR)
    return name


def _selector(name: str) -> str:
    """A selector that is a file name in the domain's directory and a DNS label (or more)."""
    usable = keys.valid_name(name) and all(name.split(".")) and name != keys.SELECTORS
    if not usable:
        raise Refusal(
            f"not a selector: {name!r} (letters, digits, '-', '_' and inner dots; "
            f"not {keys.SELECTORS!r})",
            USAGE_ERROR,
        )
    return name


def _user_uid(user: str | None) -> int | None:
    """The uid of the account the checks run as: ``user``, else qmaild (None without one)."""
    try:
        if user is None:
            return pwd.getpwnam(setup.QMAIL_USER).pw_uid
        return pwd.getpwuid(int(user)).pw_uid if user.isdigit() else pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        if user is None:
            return None
        raise Refusal(f"no user {user}: name the account the checks run as", USAGE_ERROR) from None


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owners(uid: int | None) -> frozenset[int]:
    """Whose files are believed: root, ourselves, and the account the checks run as."""
    return frozenset({0, os.geteuid(), *(() if uid is None else (uid,))})


def _trusted(path: str, shown: str, owners: frozenset[int], limit: int = 1 << 20) -> bytes | None:
    """control.read_trusted, where a file of ``owners`` is believed too: the signer runs as
    the account the checks run as and believes its files, and this tool, run as root, must
    read what keygen wrote for it. Other rules (a regular file, writable by its owner only)
    are control's. None when absent; QueueError 55 when refused or unreadable."""
    try:
        with open(path, "rb") as stream:
            status = os.fstat(stream.fileno())
            why = control.unsafe(status)
            if why and status.st_uid in owners:
                as_ours = (*status[:4], os.geteuid(), *status[5:10])
                why = control.unsafe(os.stat_result(as_ours))
            if why and status.st_uid not in owners:
                why += " (--user NAME: the account the checks run as, whose files are trusted)"
            if why:
                raise QueueError(CONFIG_ERROR, f"{shown}: {path} {why}")
            return stream.read(limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise control.unreadable(shown, path, exc) from None


def _shown(directory: str, name: str) -> str:
    return f"control/{keys.DIRECTORY}/{directory}/{name}"


def _say(text: str) -> None:
    print(f"qqfilter dkim: {text}", file=sys.stderr)
