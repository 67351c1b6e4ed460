#!/usr/bin/env bash
# Install qqfilter into a virtual environment, and optionally into qmail.
#
#   ./install.sh [--dev] [--qmail] [--venv DIR] [--qmailhome DIR]
#
#   --dev            editable install with the test tools (pytest, ruff, mypy), and the Debian
#                    packages the tests run for real (clamd, clamdscan, nsd, ripmime, archivers)
#                    if missing; without it too, libarchive13 (Debian) if missing
#   --qmail          also write DIR/bin/qqfilter (qmail home, default /var/qmail): the program
#                    to name in QMAILQUEUE
#   --venv DIR       the virtual environment (default: .venv beside this script)
#   --qmailhome DIR  qmail's home (default: /var/qmail)
#
# Running it again updates the installation in place.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
qmailhome=/var/qmail
dev=0
qmail=0

usage() { sed -n '4,12s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --qmail) qmail=1 ;;
    --venv) [ $# -ge 2 ] || { usage >&2; exit 2; }; venv=$2; shift ;;
    --qmailhome) [ $# -ge 2 ] || { usage >&2; exit 2; }; qmailhome=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$qmail" = 1 ] && [ ! -d "$qmailhome/bin" ]; then
  echo "install.sh: $qmailhome/bin does not exist: is qmail installed there? (--qmailhome DIR)" >&2
  exit 1
fi

# The real interpreter, never a shim: qmail runs the filter once per message.
python=$("${PYTHON:-python3}" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: $python is older than Python 3.11, which qqfilter needs" >&2
  exit 1
fi

# qqfilter itself needs libarchive (the C library libarchive-c loads) to open 7z, rar, cab,
# tar, cpio, ISO and compressed attachments; the tests talk to real services and make
# archives with real tools; all of them come from Debian.
run_packages=(libarchive13)
test_packages=(clamav-daemon clamdscan nsd ripmime
  7zip gcab arj libarchive-tools genisoimage udftools bzip2 xz-utils zstd
  spamassassin spamd rspamd)
packages=()
"$python" -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("archive"))' \
  || packages+=("${run_packages[@]}")
missing=0
if [ "$dev" = 1 ]; then
  [ -x /usr/sbin/clamd ] || command -v clamd >/dev/null || missing=1
  command -v clamdscan >/dev/null || missing=1
  [ -x /usr/sbin/nsd ] || command -v nsd >/dev/null || missing=1
  command -v ripmime >/dev/null || missing=1
  [ -x /usr/sbin/spamd ] || command -v spamd >/dev/null || missing=1
  [ -x /usr/bin/rspamd ] || command -v rspamd >/dev/null || missing=1
  for tool in 7zz gcab arj bsdtar genisoimage bzip2 xz zstd; do
    command -v "$tool" >/dev/null || missing=1
  done
  [ -x /usr/sbin/mkudffs ] || command -v mkudffs >/dev/null || missing=1
fi
[ "$missing" = 0 ] || packages+=("${test_packages[@]}")
if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get install -y -qq --no-install-recommends "${packages[@]}")
    "${apt[@]}" >/dev/null || { apt-get update -qq && "${apt[@]}" >/dev/null; }
  elif [ "$missing" = 0 ]; then
    # only libarchive13 is missing: qqfilter runs without it (such archives are noted as
    # not read), so say it and go on
    echo "install.sh: without ${packages[*]}, 7z, rar, cab, tar, cpio and ISO attachments" \
      "are not opened: as root, apt-get install ${packages[*]}" >&2
  else
    echo "install.sh: the tests need ${packages[*]}: as root, apt-get install them" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/python3" ] || "$python" -m venv "$venv"
venv=$(cd "$venv" && pwd)
pip=("$venv/bin/python3" -m pip install --quiet --disable-pip-version-check)
if [ "$dev" = 1 ]; then
  "${pip[@]}" -e "$here[dev]"
else
  # setuptools builds in $here/build and never removes what it copied there before: a module
  # that a newer version moved or deleted would be installed again. Build from a clean slate.
  rm -rf "$here/build"
  "${pip[@]}" "$here"
  "${pip[@]}" --force-reinstall --no-deps "$here"
fi
echo "qqfilter installed in $venv ($("$venv/bin/qqfilter" --version))"

if [ "$qmail" = 1 ]; then
  site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  wrapper="$qmailhome/bin/qqfilter"
  tmp=$(mktemp "$qmailhome/bin/.qqfilter.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  cat > "$tmp" <<WRAPPER
#!$venv/bin/python3 -IS
# qqfilter for qmail, written by install.sh: name it in QMAILQUEUE.
# -IS: no site, no user paths, no PYTHON* variables: start-up is the cost of every message.
import os
import sys

sys.path.insert(0, "$site")
try:
    from qqfilter.cli import main
except Exception as exc:
    os.write(2, f"qqfilter: cannot load the qqfilter package from $site: {exc}\\n".encode())
    os._exit(81)
sys.exit(main())
WRAPPER
  chmod 0755 "$tmp"
  mv -f "$tmp" "$wrapper"
  trap - EXIT
  cat <<DONE
qmail wrapper: $wrapper
Add it to the rules of qmail-smtpd's tcpserver (tcp.smtp), for example:
  :allow,QMAILQUEUE="$wrapper"
then rebuild the cdb: tcprules tcp.smtp.cdb tcp.smtp.tmp < tcp.smtp
Settings go in the same rules (e.g. QQF_MAXSIZE="20000000") or in /etc/qqfilter.toml.
DONE
fi
