#!/bin/bash
# container.sh - a real systemd as PID 1 of a throwaway container, for the
# system tests of usher-reconcile, on a host whose own PID 1 need not be
# systemd (CI machines, developer VMs). Needs root and systemd-nspawn
# (Debian: systemd-container; scripts/install-deps installs it).
#
#   container.sh start NAME [BIND_DIR...]   boot; print KEY=VALUE lines (LEADER, ROOT, BUS)
#   container.sh stop NAME                  power off; kill leftovers; remove mounts, cgroups, state
#   container.sh exec NAME CMD...           run CMD inside (all namespaces, clean environment)
#
# How: the root is an overlay whose lower layer is the host's / and whose
# upper layer is a tmpfs, so the host's files are never written; it is
# mounted in a private mount namespace, so nothing leaks into the host's
# mount table. nspawn runs with --register=no --keep-unit from a cgroup of its
# own (removed at stop) and a tmpfs over /run/systemd. The network namespace
# is the host's: instances listening on 127.0.0.1:PORT are reachable from the
# test. BIND_DIRs are bound read-only at the same path (an overlay over a
# live lower may show stale copies of files rebuilt after it was mounted:
# the binaries under test must be bound).
#
# Pitfalls (found the hard way, see also README of the recipe this follows):
# never run a host-side `systemctl -M NAME enable|disable`: without systemd
# as host PID 1 those verbs act on the host's /etc; use `exec NAME systemctl`.
# The container's system bus is $ROOT/run/dbus/system_bus_socket; its
# /run/systemd/private only accepts clients in its PID namespace.
set -euo pipefail
SELF=$(readlink -f "${BASH_SOURCE[0]}")
BASE=${USHER_CONTAINER_BASE:-/tmp/usher-test-containers}
BOOT_TIMEOUT=${USHER_CONTAINER_BOOT_TIMEOUT:-60}
MAX_LIFETIME=${USHER_CONTAINER_MAX_LIFETIME:-1800}  # shut down after this even if nobody stops it
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "container: $*" >&2; exit 1; }

if [ -e /sys/fs/cgroup/cgroup.controllers ]; then CG2=/sys/fs/cgroup; CGV1=
elif [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then CG2=/sys/fs/cgroup/unified
  CGV1=; [ -d /sys/fs/cgroup/systemd ] && CGV1=/sys/fs/cgroup/systemd
else CG2=; CGV1=; fi

check_name() { [[ "${1:-}" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad or missing NAME '${1:-}'"; }
sdir() { echo "$BASE/$1"; }
cgdirs() { echo "$CG2/usher-ct-$1"; [ -n "$CGV1" ] && echo "$CGV1/usher-ct-$1"; return 0; }

# The container's PID 1: in our cgroup tree, PID 1 of a child PID namespace, named systemd.
find_leader() {
  local cg="$CG2/usher-ct-$1" f p ns
  [ -d "$cg" ] || return 1
  for f in $(find "$cg" -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f" 2>/dev/null); do
      ns=$(awk '/^NSpid:/{print $NF" "NF}' "/proc/$p/status" 2>/dev/null) || continue
      [ "$ns" = "1 3" ] || continue
      [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] || continue
      echo "$p"; return 0
    done
  done
  return 1
}

cmd_start() {
  local n=$1; shift
  local s p st i
  check_name "$n"; s=$(sdir "$n")
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -n "$CG2" ] || die "no cgroup2 hierarchy on this host"
  command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing (apt-get install systemd-container)"
  [ -x /lib/systemd/systemd ] || die "no /lib/systemd/systemd on this host"
  [ -e /usr/bin/dbus-daemon ] || [ -e /usr/bin/dbus-broker ] || die "no D-Bus daemon on this host"
  if [ -d "$s" ] || [ -d "$CG2/usher-ct-$n" ]; then cmd_stop "$n" >/dev/null 2>&1 || true; fi
  mkdir -p "$s/ovl" "$s/merged"
  printf '%s\n' "$@" > "$s/binds"
  for d in $(cgdirs "$n"); do mkdir -p "$d"; done
  setsid bash "$SELF" _launch "$n" > "$s/console.log" 2>&1 < /dev/null &
  echo $! > "$s/launcher.pid"
  p=; st=
  for i in $(seq $((BOOT_TIMEOUT * 10))); do
    [ -n "$p" ] || p=$(find_leader "$n" 2>/dev/null) || p=
    if [ -n "$p" ]; then
      st=$(timeout 5 nsenter -t "$p" -a env -i PATH=$CLEAN_PATH systemctl is-system-running 2>/dev/null) || true
      case "$st" in running|degraded) break;; esac
    fi
    if ! kill -0 "$(cat "$s/launcher.pid")" 2>/dev/null; then
      cat "$s/console.log" >&2; cmd_stop "$n" >/dev/null 2>&1 || true; die "container died during boot"
    fi
    sleep 0.1
  done
  case "${st:-}" in running|degraded) ;;
    *) tail -50 "$s/console.log" >&2; cmd_stop "$n" >/dev/null 2>&1 || true; die "boot timed out (state '${st:-none}')";; esac
  echo "$p" > "$s/leader"
  echo "LEADER=$p"
  echo "ROOT=/proc/$p/root"
  echo "BUS=unix:path=/proc/$p/root/run/dbus/system_bus_socket"
  echo "STATE=$st"
}

cmd_exec() {
  local n=$1; shift; local p
  p=$(find_leader "$n") || die "container '$n' is not running"
  exec nsenter -t "$p" -a -w env -i PATH=$CLEAN_PATH HOME=/root USER=root LOGNAME=root \
       LANG=C.UTF-8 "$@"
}

cmd_stop() {
  local n=$1 s p lp i d f bad=0
  check_name "$n"; s=$(sdir "$n")
  lp=$(cat "$s/launcher.pid" 2>/dev/null) || lp=
  if p=$(find_leader "$n" 2>/dev/null); then
    kill -s SIGRTMIN+4 "$p" 2>/dev/null || true        # systemd: poweroff
    for i in $(seq 150); do find_leader "$n" >/dev/null 2>&1 || break; sleep 0.1; done
    if p=$(find_leader "$n" 2>/dev/null); then kill -9 "$p" 2>/dev/null || true; fi
  fi
  if [ -n "$lp" ]; then for i in $(seq 100); do kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done; fi
  # Anything still in our cgroups is ours: kill it, then remove the cgroups.
  for d in $(cgdirs "$n"); do
    [ -d "$d" ] || continue
    [ -e "$d/cgroup.kill" ] && { echo 1 > "$d/cgroup.kill"; } 2>/dev/null || true
    for f in $(find "$d" -name cgroup.procs); do for i in $(cat "$f"); do kill -9 "$i" 2>/dev/null || true; done; done
  done
  for d in $(cgdirs "$n"); do
    [ -d "$d" ] || continue
    for i in $(seq 50); do find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null; [ -d "$d" ] || break; sleep 0.1; done
    [ -d "$d" ] && { echo "container: could not remove cgroup $d" >&2; bad=1; }
  done
  if [ -d "$s" ]; then
    if grep -q " $s/" /proc/self/mountinfo; then echo "container: mounts left under $s" >&2; bad=1; else rm -rf "$s"; fi
  fi
  find_leader "$n" >/dev/null 2>&1 && { echo "container: PID 1 of '$n' still alive" >&2; bad=1; }
  [ $bad = 0 ] && echo "stopped $n"
  return $bad
}

cmd_launch() {  # internal, detached: own cgroup, lifetime cap, private mount namespace
  local n=$1 d
  for d in $(cgdirs "$n"); do echo $$ > "$d/cgroup.procs"; done
  exec timeout -s TERM -k 30 "$MAX_LIFETIME" unshare --mount --propagation private bash "$SELF" _inner "$n"
}

cmd_inner() {  # internal: inside the private mount namespace
  local n=$1 s m l u args=() b
  s=$(sdir "$n"); m=$s/merged
  export LIBMOUNT_UTAB="$s/utab"      # keep mount(8) off the host's /run/mount
  mount -t tmpfs -o size=2G,mode=755 tmpfs "$s/ovl"
  mkdir -p "$s/ovl/upper/etc/systemd/system" "$s/ovl/work"
  systemd-id128 new > "$s/ovl/upper/etc/machine-id"
  echo "$n" > "$s/ovl/upper/etc/hostname"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$s/ovl/upper,workdir=$s/ovl/work" "$m"
  # Whatever the host enabled stays off inside (whiteouts: the host is untouched).
  for l in "$m"/etc/systemd/system/*.wants/* "$m"/etc/systemd/system/*.requires/*; do
    [ -L "$l" ] || continue
    case "$(basename "$l")" in remote-fs.target) continue;; esac
    rm -f "$l"
  done
  for u in systemd-timesyncd.service getty@tty1.service console-getty.service; do
    ln -sf /dev/null "$m/etc/systemd/system/$u"
  done
  args=(-D "$m" --register=no --keep-unit -M "$n" --console=pipe --kill-signal=SIGRTMIN+4)
  while IFS= read -r b; do [ -n "$b" ] && args+=(--bind-ro="$b"); done < "$s/binds"
  [ -d /run/systemd ] || mkdir -p /run/systemd
  mount -t tmpfs -o mode=755 tmpfs /run/systemd      # nspawn's lock/propagate dirs stay off the host
  export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1           # pure cgroup2 inside, rooted at our cgroup
  exec systemd-nspawn "${args[@]}" -b
}

c=${1:-}; shift || true
case "$c" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "${1:-}" ;;
  exec) check_name "${1:-}"; cmd_exec "$@" ;;
  _launch) cmd_launch "$1" ;;
  _inner) cmd_inner "$1" ;;
  *) sed -n '2,12p' "$SELF"; exit 2 ;;
esac
