"""A real DNS server for the tests: Debian's nsd on loopback, serving fixtures/zones.

(Not named dns.py: the tests directory is on sys.path, and that would hide dnspython.)
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from clamav import free_port

ZONES = Path(__file__).resolve().parent.parent / "fixtures" / "zones"
NSD = shutil.which("nsd") or "/usr/sbin/nsd"


class Nsd:
    """One nsd (with its helper processes, in a process group of their own) on 127.0.0.1,
    serving fixtures/zones and ``extra`` zones (name -> zone file text) made by a test;
    ``also`` more addresses to listen on (``127.0.0.9@53``)."""

    def __init__(self, extra: dict[str, str] | None = None, also: tuple[str, ...] = ()) -> None:
        if not os.path.exists(NSD):
            raise RuntimeError("nsd not found: apt-get install nsd (see .ci/run)")
        self.dir = Path(tempfile.mkdtemp(prefix="qqf-nsd-"))
        self.port = free_port()
        paths = sorted(ZONES.glob("*.zone"))
        for name, text in (extra or {}).items():
            path = self.dir / f"{name}.zone"
            path.write_text(text)
            paths.append(path)
        zones = "".join(
            f"zone:\n  name: {path.name.removesuffix('.zone')}\n  zonefile: {path}\n"
            for path in paths
        )
        listen = "".join(f"  ip-address: {address}\n" for address in also)
        config = self.dir / "nsd.conf"
        config.write_text(
            "server:\n"
            f"  ip-address: 127.0.0.1\n{listen}  port: {self.port}\n"
            '  username: ""\n  chroot: ""\n  database: ""\n'
            f'  pidfile: "{self.dir}/nsd.pid"\n'
            f'  xfrdfile: "{self.dir}/xfrd.state"\n'
            f'  zonelistfile: "{self.dir}/zone.list"\n'
            f'  logfile: "{self.dir}/nsd.log"\n'
            "  server-count: 1\n  hide-version: yes\n  verbosity: 1\n"
            "remote-control:\n  control-enable: no\n" + zones
        )
        self.process = subprocess.Popen(
            [NSD, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready()

    @property
    def address(self) -> str:
        """The value for QQF_DNS."""
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        import dns.message
        import dns.query

        question = dns.message.make_query("spf.test.", "SOA")
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                log = (self.dir / "nsd.log").read_text(errors="replace")
                raise RuntimeError(f"nsd exited {self.process.returncode}:\n{log}")
            try:
                dns.query.udp(question, "127.0.0.1", timeout=0.5, port=self.port)
                return
            except (OSError, dns.exception.Timeout):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nsd did not answer within 30 s")

    def pause(self) -> None:
        """Stop every nsd process: queries reach the socket and are never answered."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def stop(self) -> None:
        """End it (a paused one too) and remove its directory."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
