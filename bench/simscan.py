"""simscan built from ../shared/vendor, for side-by-side benchmarks against a real qmail.

simscan is the C filter qqfilter means to replace. It compiles its paths in (qmail-queue,
clamdscan, ripmime, its control and work directories), runs setuid to its own user, and runs
clamdscan with an empty environment and fixed arguments, so clamdscan would read the
system's /etc/clamav/clamd.conf. Hence the shape:

- a build is for one qmail home (tests/realqmail.py's, whose bin/qmail-queue it names): it is
  kept beside that qmail's build, in ``simscan-<sha256[:12]>`` of the tarball, and redone when
  the tarball, the qmail home, the recipe or the ``simscan`` user's ids change (a marker,
  written last, records what a build was made for; a file lock keeps two builds apart);
- simscan gets a home of its own there (``--enable-qmaildir`` = that home: bin/simscan,
  control/ssattach, simscan/ the work directory), not the qmail home: realqmail.config empties
  qmail's control/, and the qmail home stays exactly what tests/realqmail.py made;
- ``--enable-clamdscan`` names bin/clamdscan, a two-line shell wrapper that execs Debian's
  clamdscan with ``--config-file=<home>/control/clamdscan.conf``; ``Simscan.use`` writes that
  file (the clamd to ask) and control/ssattach (the extensions to refuse) before a run.

The configure line is the vendor README's: clamav, ripmime, attachments by extension, the
``simscan`` user (made here when missing, as root), then ``make install-strip``. Never copied
into the repository: the source is unpacked in a scratch directory inside the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # first: bench/realqmail.py must not shadow it

import realqmail  # noqa: E402 (tests/realqmail.py: the qmail build, its cache, Unavailable)

VENDOR = ROOT.parent / "shared" / "vendor"
RECIPE = "1"
"""Bump when the configure line or the install steps change: a cached build is redone."""
USER = "simscan"
CLAMDSCAN = shutil.which("clamdscan") or "/usr/bin/clamdscan"
RIPMIME = shutil.which("ripmime") or "/usr/bin/ripmime"
ATTACHMENTS = (".exe", ".com", ".bat", ".hta", ".vbs", ".lnk", ".pif", ".scr")
"""simscan's ssattach.example. One a line: simscan takes only the first word of each line, so
the example's own ``.exe:.com:...`` on one line refuses .exe alone."""


class Simscan:
    """An installed simscan: ``program`` is the QMAILQUEUE value, ``home`` its own directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.program = home / "bin" / "simscan"
        self.workdir = home / "simscan"
        self.control = home / "control"

    def use(self, clamd_socket: str, attachments: Sequence[str] = ATTACHMENTS) -> None:
        """Point clamdscan at ``clamd_socket`` (a unix socket path, which the simscan user must
        be able to reach) and set the extensions simscan refuses."""
        for name, text in (
            ("clamdscan.conf", f"LocalSocket {clamd_socket}\n"),
            ("ssattach", "".join(f"{ext}\n" for ext in attachments)),
        ):
            path = self.control / name
            path.write_text(text)
            path.chmod(0o644)

    def leftovers(self) -> list[Path]:
        """Work directories simscan left behind (it removes its own unless it failed)."""
        return sorted(self.workdir.iterdir())


def tarball() -> Path:
    found = sorted(VENDOR.glob("simscan-*.tar.gz"))
    if not found:
        raise realqmail.Unavailable(f"no simscan-*.tar.gz in {VENDOR}")
    return found[-1]


def ensure_user() -> None:
    """The ``simscan`` user simscan runs as (configure checks for it); made as root."""
    try:
        pwd.getpwnam(USER)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise realqmail.Unavailable(f"no {USER} user: run once as root, or useradd {USER}")
    subprocess.run(
        [
            *("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"),
            *("--shell", "/usr/sbin/nologin", USER),
        ],
        check=True,
        capture_output=True,
    )


def build(qmail_home: Path, *, rebuild: bool = False) -> Simscan:
    """simscan for ``qmail_home`` (realqmail.qmail_home()), built first if need be."""
    source = tarball()
    for tool, path in (("cc", shutil.which("cc")), ("make", shutil.which("make"))):
        if not path:
            raise realqmail.Unavailable(f"no {tool}: apt-get install build-essential")
    for program in (CLAMDSCAN, RIPMIME):
        if not os.path.exists(program):
            raise realqmail.Unavailable(f"no {program}: apt-get install clamdscan ripmime")
    if os.geteuid() != 0:
        raise realqmail.Unavailable("simscan installs setuid simscan: build it as root")
    ensure_user()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    cache = qmail_home.parent.parent / f"simscan-{digest}"
    cache.mkdir(parents=True, exist_ok=True, mode=0o755)
    home = cache / "home"
    marker = cache / "built"
    wanted = {
        "recipe": RECIPE,
        "source": source.name,
        "qmail-queue": str(qmail_home / "bin" / "qmail-queue"),
        "uid": pwd.getpwnam(USER).pw_uid,
        "gid": pwd.getpwnam(USER).pw_gid,
    }
    with realqmail.locked(cache / "build.lock"):
        if (
            not rebuild
            and realqmail.read_marker(marker) == wanted
            and (home / "bin" / "simscan").exists()
        ):
            return Simscan(home)
        marker.unlink(missing_ok=True)
        started = time.monotonic()
        _build(source, cache, home, qmail_home)
        partial = marker.with_suffix(".tmp")
        partial.write_text(json.dumps({**wanted, "seconds": round(time.monotonic() - started, 2)}))
        partial.replace(marker)
    return Simscan(home)


def build_seconds(simscan: Simscan) -> float:
    """How long the cached build took when it was made."""
    return float(json.loads((simscan.home.parent / "built").read_text())["seconds"])


def _build(source: Path, cache: Path, home: Path, qmail_home: Path) -> None:
    """configure, make, make install-strip into a fresh ``home``; the clamdscan wrapper."""
    shutil.rmtree(home, ignore_errors=True)
    for name in ("bin", "control"):  # make install expects them, as in a qmail home
        (home / name).mkdir(parents=True, mode=0o755)
    home.chmod(0o755)
    wrapper = home / "bin" / "clamdscan"
    wrapper.write_text(
        "#!/bin/sh\n# simscan runs this with no environment: name the benchmark's clamd\n"
        f'exec {CLAMDSCAN} --config-file={home}/control/clamdscan.conf "$@"\n'
    )
    wrapper.chmod(0o755)
    log = cache / "build.log"
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as scratch:
        with tarfile.open(source) as archive:
            archive.extractall(scratch, filter="data")
        (tree,) = Path(scratch).iterdir()
        configure = [
            "./configure",
            *("--enable-clamav=y", "--enable-ripmime", "--enable-attach=y"),
            f"--enable-user={USER}",
            f"--enable-qmaildir={home}",
            f"--enable-qmail-queue={qmail_home / 'bin' / 'qmail-queue'}",
            f"--enable-clamdscan={wrapper}",
        ]
        jobs = f"-j{max(2, min(4, os.cpu_count() or 2))}"
        with open(log, "wb") as out:
            for step in (configure, ["make", jobs], ["make", "install-strip"]):
                out.write(("$ " + " ".join(step) + "\n").encode())
                out.flush()
                done = subprocess.run(step, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
                if done.returncode != 0:
                    tail = log.read_text(errors="replace").splitlines()[-30:]
                    raise realqmail.BuildFailed(
                        f"building simscan: {step[0]} {step[-1]} exited {done.returncode}; "
                        f"the end of {log}:\n" + "\n".join(tail)
                    )
