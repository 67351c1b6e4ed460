#!/usr/bin/env bash
# Install qqfilter into a virtual environment, and optionally into qmail.
#
#   [PYTHON=python3] ./install.sh [--dev] [--qmail] [--resident [daemontools|systemd]]
#                    [--venv DIR] [--qmailhome DIR] [--user NAME] [--log-user NAME] [--svscan DIR]
#
#   --dev            editable install with the test tools (pytest, ruff, mypy), and the Debian
#                    packages the tests run for real (clamd, clamdscan, nsd, ripmime, archivers,
#                    daemontools, opendkim) if missing; without it too, libarchive13 (Debian) if
#                    missing
#   --qmail          also write DIR/bin/qqfilter (qmail home, default /var/qmail), the Python
#                    wrapper, and with a C compiler ($CC, else cc) DIR/bin/qqfilter-queue, the
#                    compiled client (no Python start-up per message in resident mode): the
#                    program to name in QMAILQUEUE; each takes the place of the old one only
#                    once qmail's user has run it
#   --resident [daemontools|systemd]
#                    also run the resident server (qqfilter serve) for it, as qmail's user:
#                    a daemontools service in DIR/supervise/qqfilter linked into svscan's
#                    directory (the default), or a systemd unit, enabled and started; running
#                    install.sh again restarts it on the new code. Implies --qmail
#   --venv DIR       the virtual environment (default: .venv beside this script)
#   --qmailhome DIR  qmail's home (default: /var/qmail)
#   --user NAME      the user qmail-smtpd runs as (default: qmaild, else ourselves but for
#                    --resident): it must be able to run the interpreter, venv and wrapper
#   --log-user NAME  the resident server's multilog user (default: qmaill)
#   --svscan DIR     the directory svscan watches (default: /etc/service or /service)
#   PYTHON=PATH      the interpreter for the venv (default: python3; with --qmail, when qmail's
#                    user cannot run that one, the system's /usr/bin/python3)
#
# Running it again updates the installation in place, and makes the venv again when qmail's
# user cannot run its interpreter (or PYTHON names another).

set -euo pipefail
umask 022 # the venv and the wrapper must be readable by qmail's users

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
qmailhome=/var/qmail
user=""
loguser=qmaill
svscan=""
resident=""
dev=0
qmail=0

usage() { sed -n '4,/^$/s/^# \{0,1\}//p' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --qmail) qmail=1 ;;
    --resident)
      resident=daemontools qmail=1
      case "${2:-}" in daemontools|systemd) resident=$2; shift ;; esac ;;
    --venv|--qmailhome|--user|--log-user|--svscan)
      [ $# -ge 2 ] || { echo "install.sh: $1 needs a value (--help)" >&2; exit 2; }
      case "$1" in
        --venv) venv=$2 ;;
        --qmailhome) qmailhome=$2 ;;
        --user) user=$2 ;;
        --log-user) loguser=$2 ;;
        --svscan) svscan=$2 ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

if [ "$qmail" = 1 ]; then
  [ -d "$qmailhome/bin" ] \
    || die "$qmailhome/bin does not exist: is qmail installed there? (--qmailhome DIR)"
  if [ -z "$user" ]; then
    if id qmaild >/dev/null 2>&1; then
      user=qmaild
    elif [ -n "$resident" ]; then
      die "no user qmaild: name the user qmail-smtpd runs as with --user NAME"
    else # no qmail users here (a scratch qmail home): what runs it is ourselves
      user=$(id -un)
      echo "install.sh: no user qmaild: checking as $user (--user NAME names another)" >&2
    fi
  fi
  id "$user" >/dev/null 2>&1 || die "no user $user: name the user qmail-smtpd runs as with --user NAME"
fi
if [ "$resident" = daemontools ]; then
  id "$loguser" >/dev/null 2>&1 || die "no user $loguser: name multilog's user with --log-user NAME"
fi

# as_user COMMAND...: run it as qmail's user, with its uid and its own group only (as tcpserver
# runs qmail-smtpd), from /, in a clean environment. Not root: as ourselves (a weaker check).
as_user() {
  local tool
  if [ "$(id -u)" != 0 ] || [ "$(id -u "$user")" = "$(id -u)" ]; then
    (cd / && env -i PATH=/usr/bin:/bin "$@")
  elif tool=$(command -v setuidgid); then
    (cd / && env -i PATH=/usr/bin:/bin "$tool" "$user" "$@")
  elif tool=$(command -v setpriv); then
    (cd / && env -i PATH=/usr/bin:/bin "$tool" --reuid="$(id -u "$user")" \
      --regid="$(id -g "$user")" --clear-groups "$@")
  else
    (cd / && env -i PATH=/usr/bin:/bin runuser -u "$user" -- "$@")
  fi
}
# user_runs PYTHON: can qmail's user run it, and is it 3.11 or newer?
user_runs() { as_user "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
# closed PATH: the first directory above PATH that qmail's user cannot enter (nothing if none)
closed() {
  local d=$1 dirs=()
  while [ "$d" != / ] && [ "$d" != . ]; do d=$(dirname "$d"); dirs=("$d" "${dirs[@]}"); done
  for d in "${dirs[@]}"; do as_user test -x "$d" || { echo "$d"; return; }; done
}
if [ "$qmail" = 1 ] && [ "$(id -u)" != 0 ] && [ "$(id -u "$user")" != "$(id -u)" ]; then
  echo "install.sh: not root: what $user can run is checked as $(id -un)" >&2
fi

# The real interpreter, never a shim: qmail runs the filter once per message.
requested=${PYTHON:-python3}
python=$("$requested" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null) \
  || die "cannot run $requested: set PYTHON= to a Python 3.11 or newer"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  die "$python is older than Python 3.11, which qqfilter needs"
fi
if [ "$qmail" = 1 ] && ! user_runs "$python"; then
  # a pyenv build under /root, say: qmail-smtpd could not start the wrapper at all
  why=$(closed "$python"); why=${why:+ ($why is closed to it)}
  [ -z "${PYTHON:-}" ] \
    || die "$user cannot run $python$why: set PYTHON= to one it can run, e.g. /usr/bin/python3"
  chosen=""
  for candidate in /usr/bin/python3 /usr/local/bin/python3; do
    [ -x "$candidate" ] || continue
    real=$(realpath "$candidate")
    if "$real" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
      && user_runs "$real"; then
      chosen=$real
      break
    fi
  done
  [ -n "$chosen" ] || die "$user cannot run $python$why, nor a system python3 of 3.11 or newer:" \
    "set PYTHON= to one it can run"
  echo "install.sh: $user cannot run $python$why: using $chosen (PYTHON= names another)" >&2
  python=$chosen
fi

# The venv: where qmail's user can enter, from an interpreter it can run. One that is not is
# made again (--clear): an earlier install from a bad interpreter is repaired by running this.
if [ "$qmail" = 1 ]; then
  d=$venv
  while [ ! -e "$d" ]; do d=$(dirname "$d"); done
  c=$(closed "$d/.")
  [ -z "$c" ] || die "$user cannot enter $c, so not the venv $venv: choose one it can," \
    "e.g. --venv /opt/qqfilter"
fi
remake=""
if [ -f "$venv/pyvenv.cfg" ]; then
  if ! "$venv/bin/python3" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    remake="its python3 does not run"
  elif [ "$qmail" = 1 ] && ! user_runs "$venv/bin/python3"; then
    why=$(closed "$(realpath "$venv/bin/python3")")
    remake="$user cannot run its python3${why:+ ($why is closed to it)}"
  elif [ -n "${PYTHON:-}" ] && [ "$(realpath "$venv/bin/python3")" != "$python" ]; then
    remake="PYTHON=$PYTHON is another interpreter"
  fi
elif [ -e "$venv/bin/python3" ]; then
  die "$venv is not a virtual environment (no pyvenv.cfg): choose another --venv"
fi

# qqfilter itself needs libarchive (the C library libarchive-c loads) to open 7z, rar, cab,
# tar, cpio, ISO and compressed attachments; the tests talk to real services and make
# archives with real tools; all of them come from Debian.
run_packages=(libarchive13)
test_packages=(clamav-daemon clamdscan nsd ripmime
  7zip gcab arj libarchive-tools genisoimage udftools bzip2 xz-utils zstd
  spamassassin spamd rspamd daemontools build-essential opendkim)
packages=()
# a venv needs ensurepip, which Debian keeps in python3-venv
if { [ -n "$remake" ] || [ ! -e "$venv/pyvenv.cfg" ]; } && ! "$python" -c 'import ensurepip' 2>/dev/null
then
  case "$python" in
    /usr/bin/python3*) packages+=(python3-venv) ;;
    *) die "$python cannot make a venv (no ensurepip): set PYTHON= to one that can" ;;
  esac
fi
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
  [ -x /usr/sbin/opendkim ] || command -v opendkim >/dev/null || missing=1
  for tool in 7zz gcab arj bsdtar genisoimage bzip2 xz zstd cc make; do
    command -v "$tool" >/dev/null || missing=1
  done
  [ -x /usr/sbin/mkudffs ] || command -v mkudffs >/dev/null || missing=1
  command -v setuidgid >/dev/null && command -v multilog >/dev/null || missing=1
fi
[ "$missing" = 0 ] || packages+=("${test_packages[@]}")
if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt=(apt-get install -y -qq --no-install-recommends "${packages[@]}")
    "${apt[@]}" >/dev/null || { apt-get update -qq && "${apt[@]}" >/dev/null; }
  elif [ "$missing" = 0 ] && [[ " ${packages[*]} " != *" python3-venv "* ]]; then
    # only libarchive13 is missing: qqfilter runs without it (such archives are noted as
    # not read), so say it and go on
    echo "install.sh: without ${packages[*]}, 7z, rar, cab, tar, cpio and ISO attachments" \
      "are not opened: as root, apt-get install ${packages[*]}" >&2
  else
    die "missing ${packages[*]}: as root, apt-get install them"
  fi
fi

if [ -n "$remake" ]; then
  echo "install.sh: making $venv again: $remake" >&2
  "$python" -m venv --clear "$venv"
elif [ ! -e "$venv/pyvenv.cfg" ]; then
  "$python" -m venv "$venv"
fi
venv=$(cd "$venv" && pwd)
pip=("$venv/bin/python3" -m pip --quiet --disable-pip-version-check)
if [ "$dev" = 1 ]; then
  "${pip[@]}" install -e "${here}[dev]"
else
  # setuptools builds in $here/build and never removes what it copied there before: a module
  # that a newer version moved or deleted would be installed again. Build from a clean slate,
  # once: the wheel, then its libraries, then the wheel again over the same version.
  rm -rf "$here/build"
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  "${pip[@]}" wheel --no-deps --wheel-dir "$wheels" "$here"
  "${pip[@]}" install "$wheels"/qqfilter-*.whl
  "${pip[@]}" install --force-reinstall --no-deps "$wheels"/qqfilter-*.whl
  rm -rf "$wheels"
  trap - EXIT
fi
echo "qqfilter installed in $venv ($("$venv/bin/qqfilter" --version))"

# The wrapper, written by the package itself (as qqfilter install-wrapper does for a wheel):
# it is put in place only once qmail's user has run it. A wrapper of this venv that is there
# already is written again even without --qmail: it names the install's directories (an
# editable install's source), so --dev after --qmail, or the other way round, would break it.
wrapper="$qmailhome/bin/qqfilter"
client="$qmailhome/bin/qqfilter-queue"
compiler=${CC:-cc} # may carry options: its first word must be a program
if [ "$qmail" != 1 ] && [ -f "$wrapper" ] \
  && [ "$(head -n 1 "$wrapper")" = "#!$venv/bin/python3 -IS" ]; then
  user=$(sed -n "s/^# qmail's user: \([^ ]*\) .*/\1/p" "$wrapper")
  echo "install.sh: $wrapper runs this venv: writing it again for this install" >&2
  "$venv/bin/qqfilter" install-wrapper --user "${user:-qmaild}" "$wrapper"
  if [ -f "$client" ] && command -v "${compiler%% *}" >/dev/null; then
    # the compiled client speaks this version's packets: built again with it
    "$venv/bin/qqfilter" install-client --user "${user:-qmaild}" --wrapper "$wrapper" "$client" \
      || true
  fi
  exit 0
fi
[ "$qmail" = 1 ] || exit 0
"$venv/bin/qqfilter" install-wrapper --user "$user" "$wrapper"
# The compiled client, when there is a C compiler: QMAILQUEUE and the service name it then (it
# hands one-shot work, commands and its own failures to the wrapper).
program=$wrapper
if ! command -v "${compiler%% *}" >/dev/null; then
  echo "install.sh: no C compiler ($compiler): QMAILQUEUE is the Python wrapper (~9 ms more" \
    "CPU a message resident; apt-get install gcc, then run this again)" >&2
elif "$venv/bin/qqfilter" install-client --user "$user" --wrapper "$wrapper" "$client"; then
  program=$client
else
  echo "install.sh: the compiled client could not be built (above): QMAILQUEUE is the" \
    "Python wrapper" >&2
fi
if [ -z "$resident" ]; then
  cat <<DONE
Add it to the rules of qmail-smtpd's tcpserver (tcp.smtp), for example:
  :allow,QMAILQUEUE="$program"
then rebuild the cdb: tcprules tcp.smtp.cdb tcp.smtp.tmp < tcp.smtp
Settings go in the same rules (e.g. QQF_MAXSIZE="20000000") or in /etc/qqfilter.toml.
DONE
  exit 0
fi

# The resident server, as qmail's user; an update restarts it on the new code.
setup=("$venv/bin/qqfilter" setup "$resident" --user "$user" --program "$program")
if [ "$resident" = systemd ]; then
  "${setup[@]}"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet qqfilter.service
    systemctl restart qqfilter.service
    echo "install.sh: qqfilter.service enabled and (re)started"
  fi
  exit 0
fi
service="$qmailhome/supervise/qqfilter"
"${setup[@]}" --service-dir "$service" --log-user "$loguser"
if [ -z "$svscan" ]; then
  for d in /etc/service /service; do [ -d "$d" ] && { svscan=$d; break; }; done
fi
if [ -z "$svscan" ]; then
  echo "install.sh: no svscan directory (/etc/service, /service): link $service into yours" >&2
elif [ -L "$svscan/qqfilter" ] && [ "$(readlink "$svscan/qqfilter")" = "$service" ]; then
  if svok "$svscan/qqfilter" 2>/dev/null; then
    svc -t "$svscan/qqfilter"
    echo "install.sh: restarted $svscan/qqfilter on the new code"
  fi
elif [ -e "$svscan/qqfilter" ] || [ -L "$svscan/qqfilter" ]; then
  echo "install.sh: $svscan/qqfilter is not $service: left as it is" >&2
else
  ln -s "$service" "$svscan/qqfilter"
  echo "install.sh: linked $svscan/qqfilter: svscan starts it within 5 s"
fi
