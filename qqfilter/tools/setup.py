"""``qqfilter install-wrapper``, ``samples`` and ``setup``: putting qqfilter into qmail.

install.sh runs ``install-wrapper``, and a wheel user runs all three, so both get the same files:

- ``install-wrapper PATH`` writes the QMAILQUEUE program: a script run with ``python3 -IS``
  (qmail starts it once per message) that puts this installation's directories on the path
  itself, the source directory of an editable install included, since ``-S`` reads no .pth
  file. Before it takes the place of PATH it must run ``config`` as qmail's user: a wrapper
  qmaild cannot run (an interpreter under /root, a venv it cannot enter) would turn every
  message into ``451 qq temporary problem`` without a log line.
- ``install-client PATH --wrapper WRAPPER`` compiles the resident client in C
  (qqfilter/resident/client.c) with the system's C compiler into PATH, for that wrapper: the
  QMAILQUEUE program without Python's start-up. It forwards everything it cannot do itself
  (one-shot, commands, its own failures) to the wrapper, so it can stand wherever the wrapper
  is named. The same check as qmail's user, the same rename into place.
- ``samples DIR`` copies s/qmail's WarLord sample control files (qqfilter/samples/, the same
  files as docs/control/).
- ``setup [daemontools|systemd]`` writes a service for ``qqfilter serve``: a daemontools
  service directory (``run`` and ``log/run`` with multilog) or a hardened systemd unit, and
  prints the tcp rules line with QQF_SOCKET.

Every failure a person can meet here is one line and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from qqfilter.tools import FAILED, USAGE_ERROR, Refusal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

QMAIL_USER = "qmaild"
"""The user qmail-smtpd runs as, hence the QMAILQUEUE program and the resident server."""
LOG_USER = "qmaill"
"""The user qmail's loggers (multilog) run as."""
QMAILHOME = "/var/qmail"
SOCKET = "/run/qqfilter/qqfilter.sock"
LOG_DIR = "/var/log/qqfilter"
SERVICE_DIR = "/var/qmail/supervise/qqfilter"
"""Where the daemontools service is written (qmail's own services live beside it); it starts
when it is linked into the directory svscan watches (/service or /etc/service)."""
UNIT = "/etc/systemd/system/qqfilter.service"
SAMPLES = ("badmimetypes", "badloadertypes")
"""The WarLord sample control files in qqfilter/samples/ (copies of docs/control/)."""
SHARED_DIRS = frozenset(
    {"/", "/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm", "/var", "/var/log", "/etc", "/usr"}
    | {"/home", "/root", "/opt", "/srv", "/var/qmail"}
)
"""Directories a run script must never chown: the socket and log directories are its own."""
GRACE = 60
"""``qqfilter serve``'s default --grace: systemd's stop timeout leaves room past it."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-wrapper``, ``samples`` and ``setup`` to the subcommands ``sub``."""
    wrapper = sub.add_parser(
        "install-wrapper",
        help="write the QMAILQUEUE program (what install.sh --qmail writes) for this installation",
    )
    wrapper.add_argument("path", help="where to write it, e.g. /var/qmail/bin/qqfilter")
    wrapper.add_argument(
        "--user",
        metavar="NAME",
        help=f"qmail-smtpd's user, who must run it ({QMAIL_USER}; without one, ourselves)",
    )
    wrapper.set_defaults(run=_install_wrapper)

    client = sub.add_parser(
        "install-client",
        help="compile the resident client in C (what install.sh --qmail builds when it can)",
        description="Compile qqfilter's resident client (client.c) with the system's C "
        f"compiler ($CC, else cc) into PATH, e.g. {QMAILHOME}/bin/qqfilter-queue, for the "
        "wrapper install-wrapper wrote: name it in QMAILQUEUE and in setup's --program. It "
        "passes one-shot work, commands and its own failures to the wrapper.",
    )
    client.add_argument("path", help=f"where to write it, e.g. {QMAILHOME}/bin/qqfilter-queue")
    client.add_argument(
        "--wrapper",
        required=True,
        metavar="PATH",
        help=f"the wrapper install-wrapper wrote, e.g. {QMAILHOME}/bin/qqfilter",
    )
    client.add_argument(
        "--user",
        metavar="NAME",
        help=f"qmail-smtpd's user, who must run it ({QMAIL_USER}; without one, ourselves)",
    )
    client.set_defaults(run=_install_client)

    samples = sub.add_parser(
        "samples", help="copy the WarLord sample control files (badmimetypes, badloadertypes)"
    )
    samples.add_argument("directory", help="where to copy them, e.g. /var/qmail/control")
    samples.add_argument("--force", action="store_true", help="replace files that exist")
    samples.set_defaults(run=_samples)

    setup = sub.add_parser(
        "setup",
        help="write a service for the resident server (daemontools or systemd)",
        description="Write a service that runs `qqfilter serve` as qmail's user, and print the "
        "tcp rules line that sends qmail-smtpd's messages to it. Files that exist and differ "
        "are kept unless --force.",
    )
    setup.add_argument("kind", nargs="?", choices=("daemontools", "systemd"), default="daemontools")
    setup.add_argument(
        "--service-dir",
        default=SERVICE_DIR,
        metavar="DIR",
        help=f"daemontools: the service ({SERVICE_DIR})",
    )
    setup.add_argument("--unit", default=UNIT, metavar="FILE", help=f"systemd: the unit ({UNIT})")
    setup.add_argument(
        "--user", default=QMAIL_USER, metavar="NAME", help=f"the server's user ({QMAIL_USER})"
    )
    setup.add_argument(
        "--log-user",
        default=LOG_USER,
        metavar="NAME",
        help=f"daemontools: multilog's user ({LOG_USER})",
    )
    setup.add_argument(
        "--log-dir", default=LOG_DIR, metavar="DIR", help=f"daemontools: the log ({LOG_DIR})"
    )
    setup.add_argument(
        "--socket", default=SOCKET, metavar="PATH", help=f"the server's socket ({SOCKET})"
    )
    setup.add_argument(
        "--program",
        default=f"{QMAILHOME}/bin/qqfilter",
        metavar="PATH",
        help="the qqfilter the server runs, and QMAILQUEUE in the rules line: the wrapper "
        "install.sh or install-wrapper wrote (/var/qmail/bin/qqfilter), or the compiled client "
        "install-client built for it (/var/qmail/bin/qqfilter-queue, what install.sh names "
        "when it could build one)",
    )
    setup.add_argument("--force", action="store_true", help="replace files that differ")
    setup.set_defaults(run=_setup)


# --- the wrapper ---------------------------------------------------------------------------

WRAPPER = """\
#!{interpreter} -IS
# qqfilter for qmail, written by qqfilter install-wrapper (install.sh --qmail runs it): name
# it in QMAILQUEUE. -IS: no site, no user paths, no PYTHON* variables: start-up is the cost
# of every message. So it puts the installation's directories on the path itself.
# qmail's user: {user} (it ran this file before the file was put here)
import os
import sys

PATHS = {paths}
sys.path[0:0] = PATHS
try:
    from qqfilter.cli import main
except Exception as exc:
    where = ":".join(PATHS)
    os.write(2, f"qqfilter: cannot load the qqfilter package from {{where}}: {{exc}}\\n".encode())
    os._exit(81)
sys.exit(main())
"""


def wrapper_text(user: str) -> str:
    """The wrapper for this installation, for qmail's ``user``: this interpreter, and the
    directories it imports qqfilter and its libraries from that ``-IS`` leaves off the path."""
    interpreter = _interpreter()
    if any(c.isspace() for c in interpreter) or len(interpreter) > 200:
        raise Refusal(
            f"{interpreter} cannot be a script's interpreter (a space in its path, or longer "
            "than a #! line allows): install into a venv with a short plain path"
        )
    return WRAPPER.format(interpreter=interpreter, paths=repr(_paths(interpreter)), user=user)


def _interpreter() -> str:
    """This installation's interpreter: the venv's bin/python3 (what install.sh names), else
    the running one."""
    if sys.prefix != sys.base_prefix:
        venv_python = Path(sys.prefix, "bin", "python3")
        if venv_python.exists():
            return str(venv_python)
    return os.path.abspath(sys.executable)


def _paths(interpreter: str) -> list[str]:
    """The directory qqfilter is imported from (an editable install's source), then those on
    this process's path that ``interpreter -IS`` does not have (site-packages, .pth entries)."""
    import qqfilter

    bare = subprocess.run(
        [interpreter, "-IS", "-c", "import sys; print('\\0'.join(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    baseline = set(bare.stdout.rstrip("\n").split("\0")) if bare.returncode == 0 else set()
    here = sys.path[1:] if not sys.flags.safe_path else sys.path  # [0]: the script's dir or cwd
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(qqfilter.__file__)))]
    seen = {os.path.realpath(paths[0])}
    for entry in here:
        wanted = entry and entry not in baseline and entry not in extra
        if wanted and os.path.isdir(entry) and os.path.realpath(entry) not in seen:
            seen.add(os.path.realpath(entry))
            paths.append(entry)
    return paths


def _install_wrapper(options: argparse.Namespace) -> int:
    try:
        path = Path(options.path)
        if path.is_dir():
            path = path / "qqfilter"
        notes: list[str] = []
        account = checking_account(options.user, path, notes)
        text = wrapper_text(account.pw_name)
        notes += install_wrapper(path, text, account)
    except Refusal as exc:
        _say("install-wrapper", str(exc))
        return exc.code
    for note in notes:
        _say("install-wrapper", note)
    print(f"qmail wrapper: {path} (it runs as {account.pw_name})")
    return 0


def checking_account(user: str | None, path: Path, notes: list[str]) -> pwd.struct_passwd:
    """The account a program written at ``path`` is checked as: ``user``, else qmail's; with
    no qmail users at all (a scratch home) ourselves, noted. Refusal when ``path``'s
    directory is not there or the user does not exist."""
    if user is None and not _exists(QMAIL_USER):
        account = pwd.getpwuid(os.geteuid())
        notes.append(f"no user {QMAIL_USER}: checking as {account.pw_name} (--user NAME)")
    else:
        account = _account(user or QMAIL_USER)
    if not path.parent.is_dir():
        raise Refusal(f"no directory {path.parent}: is qmail installed there?", USAGE_ERROR)
    return account


def install_wrapper(path: Path, text: str, account: pwd.struct_passwd) -> list[str]:
    """Write ``text`` beside ``path``, run it as ``account`` (``config``), and only then put it
    in place of ``path`` (a rename: a running qmail never sees half a file). Returns notes;
    raises Refusal, leaving ``path`` as it was, when ``account`` cannot run it."""

    def write(name: str) -> None:
        with open(name, "w") as file:
            file.write(text)

    return _put_in_place(path, account, write)


def _put_in_place(path: Path, account: pwd.struct_passwd, make: Callable[[str], None]) -> list[str]:
    """``make`` the program in a new file beside ``path``, run it as ``account``
    (``check_runs``), and only then rename it over ``path`` (a running qmail never sees half
    a file, nor one its user cannot run). Returns check_runs' notes; raises Refusal, leaving
    ``path`` as it was and no file behind, when it cannot be made or run."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise Refusal(f"cannot write in {path.parent}: {exc.strerror}") from None
    os.close(fd)
    try:
        make(name)
        os.chmod(name, 0o755)
        notes = check_runs(name, account, shown=str(path))
        os.replace(name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise Refusal(f"cannot write {path}: {exc.strerror}") from None
    except Refusal as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise Refusal(f"{exc}; {path} left as it was") from None
    return notes


# --- the compiled client ------------------------------------------------------------------

CLIENT_SOURCE = "client.c"
"""The compiled client's source, in qqfilter/resident/ (a wheel ships it: package-data)."""
CFLAGS = (
    "-std=c11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wformat=2",
    "-Wshadow",
    "-Wconversion",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wvla",
    "-Wwrite-strings",
    "-Wundef",
    "-Wpointer-arith",
    "-Wnull-dereference",
)
"""How it is built (the tests' sanitizer build adds to these): warnings are errors."""
MARK = b"qqfilter-client-wrapper="
"""What precedes the wrapper's path in a compiled client (client.c's MARK)."""


def client_source() -> Path:
    """Where client.c is in this installation."""
    import qqfilter.resident

    return Path(qqfilter.resident.__file__).resolve().parent / CLIENT_SOURCE


def compiler() -> list[str] | None:
    """The system's C compiler as a command ($CC, else cc), None when there is none."""
    words = shlex.split(os.environ.get("CC") or "cc")
    if not words or not shutil.which(words[0]):
        return None
    return words


def compile_client(output: str, wrapper: str, flags: tuple[str, ...] = ()) -> None:
    """Compile client.c into ``output``, for ``wrapper`` (its absolute path, built in), with
    CFLAGS and ``flags``; raises Refusal, with the compiler's first error, when it cannot."""
    command = compiler()
    if command is None:
        raise Refusal(f"no C compiler ({os.environ.get('CC') or 'cc'}): install one (gcc)")
    literal = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\?' else f"\\{b:03o}"
        for b in os.fsencode(wrapper)
    )
    try:
        built = subprocess.run(
            [
                *command,
                *CFLAGS,
                *flags,
                f'-DQQF_WRAPPER="{literal}"',
                "-o",
                output,
                str(client_source()),
            ],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Refusal(f"{command[0]} could not build {client_source()}: {exc}") from None
    if built.returncode != 0:
        said = [line for line in built.stderr.splitlines() if "error" in line] or [
            f"exit status {built.returncode}"
        ]
        raise Refusal(f"{command[0]} could not build {client_source()}: {said[0]}")


def _install_client(options: argparse.Namespace) -> int:
    try:
        path = Path(options.path)
        if path.is_dir():
            path = path / "qqfilter-queue"
        wrapper = os.path.abspath(options.wrapper)
        if not os.access(wrapper, os.X_OK) or os.path.isdir(wrapper):
            raise Refusal(
                f"no program {wrapper}: write it first (qqfilter install-wrapper {wrapper})",
                USAGE_ERROR,
            )
        try:
            with open(wrapper, "rb") as file:
                script = file.read(2) == b"#!"
        except OSError as exc:
            raise Refusal(f"cannot read {wrapper}: {exc.strerror}") from None
        if not script:  # a compiled client there would run itself for ever
            raise Refusal(f"--wrapper {wrapper} is not the script install-wrapper writes")
        notes: list[str] = []
        account = checking_account(options.user, path, notes)
        notes += install_client(path, wrapper, account)
    except Refusal as exc:
        _say("install-client", str(exc))
        return exc.code
    for note in notes:
        _say("install-client", note)
    print(f"compiled client: {path} (for {wrapper}; it runs as {account.pw_name})")
    return 0


def install_client(path: Path, wrapper: str, account: pwd.struct_passwd) -> list[str]:
    """Compile the client beside ``path``, run it as ``account`` (``config``, through the
    wrapper), and only then put it in place of ``path``. Returns notes; raises Refusal,
    leaving ``path`` as it was, when it cannot be built or run."""
    return _put_in_place(path, account, lambda name: compile_client(name, wrapper))


def check_runs(program: str, account: pwd.struct_passwd, *, shown: str) -> list[str]:
    """Run ``program config`` as ``account`` (its uid and group, no others, as tcpserver runs
    qmail-smtpd), in qmail's clean environment. Returns notes (settings it reports invalid, or
    that it could only be run as ourselves); raises Refusal when it does not run."""
    notes = []
    me = os.geteuid()
    switch: dict[str, object] = {}
    if account.pw_uid != me:
        if me == 0:
            switch = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        else:
            notes.append(
                f"not root: checked that {pwd.getpwuid(me).pw_name} runs {shown}, not "
                f"{account.pw_name}; as root: setuidgid {account.pw_name} {shown} config"
            )
    who = account.pw_name
    try:
        proc = subprocess.run(
            [program, "config"],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            check=False,
            **switch,  # type: ignore[call-overload]
        )
    except OSError as exc:
        hint = _closed_hint(program, account, shown)
        raise Refusal(f"{who} cannot run {shown}: {exc.strerror}{hint}") from None
    except subprocess.TimeoutExpired:
        raise Refusal(f"{shown} config did not finish in 120 s as {who}") from None
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode == 0:
        return notes
    if proc.returncode == 1 and proc.stdout and all(e.startswith("qqfilter:") for e in errors):
        # it runs; the settings it reads (/etc/qqfilter.toml) have errors of their own
        notes += [f"it runs, but as {who} `config` reports: {e}" for e in errors]
        return notes
    said = errors[-1] if errors else f"exit status {proc.returncode}"
    raise Refusal(f"{who} cannot run {shown}: {said}{_closed_hint(program, account, shown)}")


def _closed_hint(program: str, account: pwd.struct_passwd, shown: str) -> str:
    """Which directory on the way to the program (``shown`` by that name), its interpreter or
    its paths is closed to ``account``, in words (empty when none is)."""
    for what, path in _wrapper_parts(program):
        path = shown if path == program else path
        closed = closed_directory(path, account)
        if closed:
            return (
                f" ({closed} is closed to {account.pw_name}, and {what} {path} is under it: "
                "install where it can enter every directory, e.g. a venv in /opt/qqfilter made "
                "with /usr/bin/python3)"
            )
    return ""


def _wrapper_parts(program: str, follow: bool = True) -> list[tuple[str, str]]:
    """The program, its interpreter (real path too) and a wrapper's PATHS, named; for a
    compiled client (``follow``), the wrapper it runs and that wrapper's parts too."""
    parts = [("the program", program)]
    try:
        with open(program, "rb") as binary:
            data = binary.read(1 << 20)
    except OSError:
        return parts
    if follow and data.startswith(b"\x7fELF") and MARK in data:
        wrapper = os.fsdecode(data.split(MARK, 1)[1].split(b"\0", 1)[0])
        return [*parts, ("the wrapper", wrapper), *_wrapper_parts(wrapper, False)[1:]]
    head = data[:65536].decode("utf-8", "replace")
    first = head.split("\n", 1)[0]
    if first.startswith("#!") and first[2:].split():
        interpreter = first[2:].split()[0]
        parts.append(("the interpreter", interpreter))
        parts.append(("the interpreter", os.path.realpath(interpreter)))
    for line in head.splitlines():
        if line.startswith("PATHS = "):
            import ast

            with contextlib.suppress(ValueError, SyntaxError):
                parts += [("the package path", p) for p in ast.literal_eval(line[8:])]
    return parts


def closed_directory(path: str, account: pwd.struct_passwd) -> str | None:
    """The first directory on the way to ``path`` (``path`` too, when it is one) that
    ``account``, with its own group only (as tcpserver runs qmail-smtpd), may not enter;
    None when it may enter them all. Symbolic links are followed: give the real path too."""
    if account.pw_uid == 0:
        return None
    target = Path(os.path.abspath(path))
    way = [*reversed(target.parents), *([target] if target.is_dir() else [])]
    for directory in way:
        try:
            info = directory.stat()
        except OSError:
            return None
        if info.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return str(directory)
    return None


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _account(
    user: str, option: str = "--user", who: str = "qmail-smtpd's user"
) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise Refusal(f"no user {user}: name {who} with {option} NAME", USAGE_ERROR) from None


# --- the samples ----------------------------------------------------------------------------


def samples_dir() -> Path:
    """Where the WarLord samples are in this installation."""
    import qqfilter

    return Path(qqfilter.__file__).resolve().parent / "samples"


def _samples(options: argparse.Namespace) -> int:
    target = Path(options.directory)
    if not target.is_dir():
        _say("samples", f"no directory {target}: give qmail's control directory")
        return USAGE_ERROR
    status = 0
    for name in SAMPLES:
        source = samples_dir() / name
        dest = target / name
        try:
            data = source.read_bytes()
            if dest.exists() and not options.force:
                same = dest.read_bytes() == data
                print(f"kept {dest}" + ("" if same else " (it differs: --force replaces it)"))
                continue
            _write_file(dest, data, 0o644)
        except OSError as exc:
            _say("samples", f"cannot copy {name} to {target}: {exc.strerror}")
            status = FAILED
            break
        print(f"wrote {dest}")
    if status == 0:
        print(
            "They are read when their variable is set: BADMIMETYPE (set, even empty) and "
            'BADLOADERTYPE="M" in the tcp rules; read badloadertypes\'s note on text first.'
        )
    return status


# --- the services ---------------------------------------------------------------------------

RUN = """\
#!/bin/sh
# qqfilter's resident server, written by qqfilter setup: supervise runs it.
exec 2>&1
# the socket's directory, made at each start (/run is emptied at boot) for {user}
mkdir -p {socket_dir} && chown {owner} {socket_dir} && chmod 0755 {socket_dir} || exit 111
exec setuidgid {user} {program} serve --socket {socket}
"""

LOG_RUN = """\
#!/bin/sh
# qqfilter's resident server's log, written by qqfilter setup: multilog as {log_user}.
mkdir -p {log_dir} && chown {log_owner} {log_dir} && chmod 0750 {log_dir} || exit 111
exec setuidgid {log_user} multilog t s1000000 n10 {log_dir}
"""

UNIT_TEXT = """\
# qqfilter's resident server, written by qqfilter setup systemd.
[Unit]
Description=qqfilter resident server (qmail's QMAILQUEUE filter)
After=network.target

[Service]
Type=simple
User={user}
Group={group}
ExecStart={exec_start}
{socket_dir}
Restart=always
RestartSec=1
TimeoutStopSec={stop}
UMask=0077
LimitNOFILE=4096
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp={private_tmp}
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
{read_write}
[Install]
WantedBy=multi-user.target
"""


def _setup(options: argparse.Namespace) -> int:
    try:
        account = _account(options.user)
        program = os.path.abspath(options.program)
        if not os.access(program, os.X_OK) or os.path.isdir(program):
            raise Refusal(
                f"no program {program}: write it first (qqfilter install-wrapper {program}), "
                "or name it with --program",
                USAGE_ERROR,
            )
        socket_path = os.path.abspath(options.socket)
        socket_dir = os.path.dirname(socket_path)
        _own_directory(socket_dir, "--socket", "the socket")
        notes = check_runs(program, account, shown=program)
        if options.kind == "systemd":
            written = _write_unit(options, account, program, socket_path)
        else:
            log_account = _account(options.log_user, "--log-user", "multilog's user")
            log_dir = os.path.abspath(options.log_dir)
            _own_directory(log_dir, "--log-dir", "the log")
            written = _write_service(options, account, log_account, program, socket_path)
    except Refusal as exc:
        _say("setup", str(exc))
        return exc.code
    for note in notes:
        _say("setup", note)
    for line in written:
        print(line)
    print("Then add QQF_SOCKET to qmail-smtpd's tcp rules (a server that is down costs speed,")
    print("not mail: the client then works in-process), for example:")
    print(f'  :allow,QMAILQUEUE="{program}",QQF_SOCKET="{socket_path}"')
    print("and rebuild the cdb: tcprules tcp.smtp.cdb tcp.smtp.tmp < tcp.smtp")
    return 0


def _own_directory(path: str, option: str, what: str) -> None:
    """A run script makes ``path`` and gives it to a user: it must be a directory of its own."""
    if path in SHARED_DIRS or os.path.realpath(path) in SHARED_DIRS:
        raise Refusal(
            f"{option}: {what} needs a directory of its own (the run script gives it to a "
            f"user), not {path}: e.g. {os.path.join(path, 'qqfilter')}",
            USAGE_ERROR,
        )


def _owner(account: pwd.struct_passwd) -> str:
    try:
        group = grp.getgrgid(account.pw_gid).gr_name
    except KeyError:
        group = str(account.pw_gid)
    return f"{account.pw_name}:{group}"


def _write_service(
    options: argparse.Namespace,
    account: pwd.struct_passwd,
    log_account: pwd.struct_passwd,
    program: str,
    socket_path: str,
) -> list[str]:
    service = Path(options.service_dir).absolute()
    quote = shlex.quote
    run = RUN.format(
        user=quote(account.pw_name),
        owner=quote(_owner(account)),
        socket_dir=quote(os.path.dirname(socket_path)),
        socket=quote(socket_path),
        program=quote(program),
    )
    log_run = LOG_RUN.format(
        log_user=quote(log_account.pw_name),
        log_owner=quote(_owner(log_account)),
        log_dir=quote(os.path.abspath(options.log_dir)),
    )
    lines = [
        _put(service / "run", run, 0o755, options.force),
        _put(service / "log" / "run", log_run, 0o755, options.force),
    ]
    svscan = next((d for d in ("/etc/service", "/service") if os.path.isdir(d)), "/service")
    lines += [
        f"daemontools service: {service} (the server as {account.pw_name}, its log as "
        f"{log_account.pw_name} in {options.log_dir})",
        f"Start it: ln -s {quote(str(service))} {svscan}/ (svscan starts it within 5 s)",
    ]
    return lines


def _write_unit(
    options: argparse.Namespace, account: pwd.struct_passwd, program: str, socket_path: str
) -> list[str]:
    unit = Path(options.unit).absolute()
    socket_dir = os.path.dirname(socket_path)
    read_write = []
    if os.path.dirname(socket_dir) == "/run":
        directory = f"RuntimeDirectory={os.path.basename(socket_dir)}\nRuntimeDirectoryMode=0755"
    else:  # not under /run: a directory that is there, and that the server may write in
        directory = ""
        read_write.append(socket_dir)
    spool = _spool_dir()
    if not _under(spool, ("/tmp", "/var/tmp")):
        read_write.append(spool)  # PrivateTmp gives the server a /tmp of its own
    inside = [path for _, path in _wrapper_parts(program)]
    in_home = any(_under(p, ("/home", "/root", "/run/user")) for p in inside)
    in_tmp = any(_under(p, ("/tmp", "/var/tmp")) for p in inside)  # a scratch install
    text = UNIT_TEXT.format(
        user=account.pw_name,
        group=_owner(account).split(":", 1)[1],
        exec_start=" ".join(_systemd_quote(w) for w in (program, "serve", "--socket", socket_path)),
        socket_dir=directory,
        stop=GRACE + 15,
        protect_home="read-only" if in_home else "yes",
        private_tmp="no" if in_tmp else "yes",
        read_write="".join(f"ReadWritePaths={_systemd_quote(p)}\n" for p in read_write),
    )
    return [
        _put(unit, text, 0o644, options.force),
        f"systemd unit: {unit} (the server as {account.pw_name})",
        f"Start it: systemctl daemon-reload && systemctl enable --now {unit.name}",
    ]


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top + "/") for top in tops)


def _spool_dir() -> str:
    """The spool directory the server would use (its TOML file, else the default)."""
    try:
        from qqfilter.settings import SPOOLDIR, load

        settings, _ = load({})
        return os.path.abspath(str(settings[SPOOLDIR]))
    except Exception:  # a TOML file with errors: the server says so when it starts
        return "/tmp"


def _systemd_quote(word: str) -> str:
    word = word.replace("%", "%%")
    if word and not any(c.isspace() or c in "\"'\\;$" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _put(path: Path, text: str, mode: int, force: bool) -> str:
    """Write ``path`` unless it exists with other contents (``force`` replaces it); a line."""
    data = text.encode()
    try:
        if path.exists():
            if path.read_bytes() == data:
                os.chmod(path, mode)
                return f"unchanged {path}"
            if not force:
                return f"kept {path}: it differs from what setup writes (--force replaces it)"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(path, data, mode)
    except OSError as exc:
        raise Refusal(f"cannot write {path}: {exc.strerror}") from None
    return f"wrote {path}"


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` by a rename: no reader sees half a file."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _say(command: str, text: str) -> None:
    print(f"qqfilter {command}: {text}", file=sys.stderr)
