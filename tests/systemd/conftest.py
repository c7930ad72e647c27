"""Fixtures for the system tests: one real systemd (PID 1 of a container,
see container.sh) per test session, with the shipped units installed, a test
drop-in that replaces t3 by standin.py, and usher-reconcile bound in.

When the container cannot be started here (not root, no systemd-nspawn, no
cgroup2...), every test that needs it is skipped with the reason."""

import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import testlib  # noqa: E402
REPO = os.path.dirname(os.path.dirname(HERE))
CONTAINER = os.path.join(HERE, "container.sh")
DEFAULT_BINARY = os.path.join(REPO, "build", "reconcile", "usher-reconcile")
CONFIG = "/etc/usher/usher.conf"


def reconcile_binary():
    return os.path.abspath(os.environ.get("USHER_RECONCILE") or DEFAULT_BINARY)


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """testlib.wait_for with this suite's slower defaults; a timeout fails the test."""
    return testlib.wait_for(predicate, timeout, interval, what, error=AssertionError)


def free_port_block(size):
    """A base port such that base..base+size-1 are free on loopback now."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 40000 - size)
        busy = False
        for port in range(base, base + size):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy = True
            finally:
                s.close()
            if busy:
                break
        if not busy:
            return base
    raise RuntimeError("no free block of %d ports" % size)


class Sandbox:
    """A running container and the paths the tests use in it."""

    def __init__(self, name, leader, binary, port_base):
        self.name = name
        self.leader = leader
        self.root = "/proc/%d/root" % leader
        self.bus = "unix:path=%s/run/dbus/system_bus_socket" % self.root
        self.binary = binary
        self.port_base = port_base
        self.port_last = port_base + 199

    def path(self, p):
        """Host path of the container's `p`."""
        return self.root + p

    def exec(self, *cmd, check=True, timeout=60):
        r = subprocess.run([CONTAINER, "exec", self.name] + list(cmd), capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("%s failed (%d): %s%s" % (cmd, r.returncode, r.stdout, r.stderr))
        return r

    def systemctl(self, *args, check=True):
        return self.exec("systemctl", *args, check=check)

    def write(self, p, text, mode=0o644):
        full = self.path(p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
        os.chmod(full, mode)

    def read(self, p):
        with open(self.path(p)) as f:
            return f.read()

    def exists(self, p):
        return os.path.exists(self.path(p))

    def useradd(self, *names):
        for n in names:
            if self.exec("id", "-u", n, check=False).returncode != 0:
                self.exec("useradd", "-m", "-U", n)

    def uid(self, name):
        return int(self.exec("id", "-u", name).stdout.strip())

    def reconcile_cmd(self, *args, config=CONFIG):
        # The container's mount namespace (its files, passwd, bus socket) and
        # PID namespace (so /proc is its own: LeakSanitizer reads it). nsenter
        # forks for the PID namespace; reconcile_pid() finds the child.
        return ["nsenter", "-t", str(self.leader), "-m", "-p", "--", self.binary,
                "--config", config] + list(args)

    @staticmethod
    def reconcile_pid(popen, timeout=5.0):
        """The usher-reconcile process (host PID) that nsenter `popen` forked."""
        path = "/proc/%d/task/%d/children" % (popen.pid, popen.pid)

        def child():
            try:
                with open(path) as f:
                    pids = f.read().split()
            except OSError:
                return None
            return int(pids[0]) if pids else None
        return wait_for(child, timeout=timeout, interval=0.002, what="nsenter's child")

    def reconcile(self, *args, config=CONFIG, timeout=120):
        """Runs usher-reconcile inside; returns (exit code, parsed --json, stderr)."""
        r = subprocess.run(self.reconcile_cmd("--json", *args, config=config),
                           capture_output=True, text=True, timeout=timeout)
        try:
            doc = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            raise AssertionError("not JSON on stdout: %r\nstderr: %s" % (r.stdout[:2000], r.stderr))
        sanitizer = [m for m in ("AddressSanitizer", "LeakSanitizer", "runtime error:")
                     if m in r.stderr]
        assert not sanitizer, "sanitizer report in usher-reconcile's stderr:\n" + r.stderr
        return r.returncode, doc, r.stderr

    def state(self, p="/var/lib/usher/state.json"):
        return json.loads(self.read(p))

    def env_port(self, user, env_dir="/etc/t3-serve"):
        for line in self.read("%s/%s.env" % (env_dir, user)).splitlines():
            if line.startswith("T3_PORT="):
                return int(line.split("=", 1)[1])
        return None

    def unit_state(self, unit):
        active = self.systemctl("is-active", unit, check=False).stdout.strip()
        enabled = self.systemctl("is-enabled", unit, check=False).stdout.strip()
        return active, enabled

    def write_map(self, lines, p="/etc/ttyd-user-map"):
        self.write(p, "".join(l + "\n" for l in lines))

    def hold_lock(self, p="/run/usher/reconcile.lock"):
        """Takes the reconcile lock from the host; returns the open file (close to release)."""
        full = self.path(p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        f = open(full, "a+")
        fcntl.flock(f, fcntl.LOCK_EX)
        return f


def _skip_reason():
    if os.geteuid() != 0:
        return "system tests need root (they boot systemd in a container)"
    if not shutil.which("systemd-nspawn"):
        return "systemd-nspawn missing (scripts/install-deps installs systemd-container)"
    if not shutil.which("nsenter"):
        return "nsenter missing (util-linux)"
    if not os.path.exists("/lib/systemd/systemd"):
        return "no /lib/systemd/systemd on this host"
    if not os.access(reconcile_binary(), os.X_OK):
        return "usher-reconcile not built at %s (set USHER_RECONCILE)" % reconcile_binary()
    return None


STANDIN_DROPIN = """[Service]
# t3 is not installed in the test container: a stand-in that serves its uid.
ExecStart=
ExecStart=/usr/bin/python3 /usr/local/lib/usher-test/standin.py
"""

RECONCILE_DROPIN = """[Service]
# The binary under test, wherever the build put it (bound in read-only).
ExecStart=
ExecStart={binary} --config /etc/usher/usher.conf
PrivateTmp=no
ProtectHome=no
"""

KILL_TEMPLATE = """[Unit]
Description=cheap instance for the SIGKILL test (%i)
[Service]
User=%i
EnvironmentFile=/etc/usher-kill/%i.env
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="session")
def sandbox():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    binary = reconcile_binary()
    name = "usher-t%d" % (os.getpid() % 100000)
    t0 = time.monotonic()
    r = subprocess.run([CONTAINER, "start", name, os.path.dirname(binary)],
                       capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        pytest.skip("cannot start a systemd container here: " + (r.stderr.strip()[-800:] or "?"))
    info = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    sb = Sandbox(name, int(info["LEADER"]), binary, free_port_block(200))
    print("container %s up in %.1fs (leader %d, ports %d-%d)" % (
        name, time.monotonic() - t0, sb.leader, sb.port_base, sb.port_last))
    try:
        units = os.path.join(REPO, "units")
        for f in os.listdir(units):
            if f.endswith((".service", ".timer", ".path")):
                shutil.copy(os.path.join(units, f), sb.path("/etc/systemd/system/" + f))
        os.makedirs(sb.path("/usr/local/lib/usher-test"), exist_ok=True)
        shutil.copy(os.path.join(HERE, "standin.py"), sb.path("/usr/local/lib/usher-test/standin.py"))
        sb.write("/etc/systemd/system/t3-serve@.service.d/50-test.conf", STANDIN_DROPIN)
        sb.write("/etc/systemd/system/usher-reconcile.service.d/50-test.conf",
                 RECONCILE_DROPIN.format(binary=binary))
        sb.write("/etc/systemd/system/usher-kill@.service", KILL_TEMPLATE)
        sb.write(CONFIG, "[reconcile]\nport_range = %d-%d\njob_timeout = 20s\n"
                 % (sb.port_base, sb.port_last))
        sb.write_map([])
        sb.systemctl("daemon-reload")
        yield sb
    finally:
        if os.environ.get("USHER_KEEP_CONTAINER"):
            print("keeping container %s (leader %d)" % (name, sb.leader))
        else:
            subprocess.run([CONTAINER, "stop", name], capture_output=True, text=True, timeout=120)
