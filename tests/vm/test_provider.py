"""scripts/usher-vm-libvirt against the real libvirtd and the tiny guest (docs/vm-provider.md).

Every call runs the provider as Usher does (a request on stdin, the environment PATH and
LANG only, its own process group) and checks the contract's shape: one JSON object on one
line on stdout, the exit code, and that the VM's secret appears in no output.

The first tests need no libvirt (bad requests, mint, an unusable state dir) and run anywhere.
One persistent VM (usher-tpmain) is shared by the lifecycle tests, which run in file order
and build on each other; the others make their own. Every domain and volume named usher-tp*
and every state dir is removed at the end, whatever happened. The times of the calls are
printed at the end (ensure cold/warm, stop, destroy, the whole module).
"""

import grp
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

import vmenv
from conftest import PROVIDER

PREFIX = "usher-tp"
MAIN = "usher-tpmain"
TIMES = {}


def timed(label, seconds):
    TIMES.setdefault(label, []).append(seconds)


# --- running the provider ------------------------------------------------------------------

class Result:
    def __init__(self, code, reply, stdout, stderr, seconds):
        self.code, self.reply, self.stdout, self.stderr, self.seconds = (
            code, reply, stdout, stderr, seconds)

    def __repr__(self):
        return "exit %s after %.2f s\nstdout: %s\nstderr: %s" % (
            self.code, self.seconds, self.stdout, self.stderr)


def run_raw(argv_verb, data, timeout=120, secrets=(), as_ids=None):
    """Runs the provider with `data` (bytes) on stdin, checks the contract's output shape.
    as_ids: (uid, gid) to run it as (no supplementary groups)."""

    def drop():
        os.setgroups([])
        os.setgid(as_ids[1])
        os.setuid(as_ids[0])

    t0 = time.monotonic()
    p = subprocess.run([PROVIDER] + argv_verb, input=data, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, start_new_session=True,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                       preexec_fn=drop if as_ids else None)
    seconds = time.monotonic() - t0
    out, err = p.stdout.decode(), p.stderr.decode()
    r = Result(p.returncode, None, out, err, seconds)
    assert out.endswith("\n") and out.count("\n") == 1, "stdout is not one line: %r" % r
    r.reply = json.loads(out)
    assert isinstance(r.reply, dict), r
    if p.returncode != 0:
        assert p.returncode in (1, 2), r
        assert set(r.reply) == {"error", "message"}, r
        assert isinstance(r.reply["message"], str) and r.reply["message"], r
    for s in secrets:
        assert s not in out and s not in err, "the secret leaked into the output"
    return r


class Vm:
    """Requests for one VM name with one profile."""

    def __init__(self, env, name, state_dir, **profile):
        self.env = env
        self.name = name
        self.os_user = name[len("usher-"):]
        self.state_dir = state_dir
        self.profile = {
            "name": "default", "uri": env.uri, "pool": vmenv.POOL,
            "base_image": env.base_image, "memory_mib": vmenv.GUEST_MEMORY_MIB, "vcpus": 1,
            "disk_bytes": 64 << 20, "data_disk_bytes": 64 << 20, "persistent": True,
            "network": vmenv.NETWORK, "guest_port": 8080, "state_dir": state_dir,
            "kernel": env.kernel, "initrd": env.initrd, "cmdline": env.cmdline,
        }
        self.profile.update(profile)

    def request(self, verb, **extra):
        req = {"contract": 1, "verb": verb, "name": self.name, "os_user": self.os_user,
               "profile": dict(self.profile), "deadline_s": 120}
        req.update(extra)
        return req

    def secret(self):
        try:
            with open(self.secret_path()) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def secret_path(self):
        return os.path.join(self.state_dir, self.name + ".secret")

    def call(self, verb, expect=0, timeout=150, as_ids=None, **extra):
        known = [s for s in (self.secret(),) if s]
        r = run_raw([verb], json.dumps(self.request(verb, **extra)).encode(), timeout, known,
                    as_ids)
        known += [s for s in (self.secret(),) if s and s not in known]
        for s in known:
            assert s not in r.stdout and s not in r.stderr, "the secret leaked into the output"
        assert r.code == expect, r
        return r

    def volumes(self):
        pool = self.env.conn.storagePoolLookupByName(vmenv.POOL)
        return sorted(v.name() for v in pool.listAllVolumes(0)
                      if v.name().startswith(self.name + "-"))

    def domain_xml(self):
        return self.env.conn.lookupByName(self.name).XMLDesc(0)

    def exists(self):
        return self.name in [d.name() for d in self.env.conn.listAllDomains(0)]


def http(method, url, body=None, timeout=5):
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def app_root(reply, timeout=30, name=None):
    """GET / of the guest app at the ensure reply's address (JSON)."""
    base = "http://%s:%d" % (reply["address"], reply["port"])
    return json.loads(vmenv.wait_http(base + "/", timeout=timeout, name=name))


# --- fixtures ------------------------------------------------------------------------------

def cleanup(conn, prefix=PREFIX):
    return vmenv.cleanup(conn, prefix=prefix)  # waits out another's upload itself


@pytest.fixture(scope="module")
def env(vm_env, pytestconfig):
    cleanup(vm_env.conn)
    t0 = time.monotonic()
    yield vm_env
    total = time.monotonic() - t0
    try:
        cleanup(vm_env.conn)
    finally:
        rep = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        if rep is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                rep.write_line("")
                for label, values in TIMES.items():
                    rep.write_line("usher-vm-libvirt %-29s %s" % (
                        label, " ".join("%.2fs" % v for v in values)))
                rep.write_line("usher-vm-libvirt tests: %.1f s in all" % total)


@pytest.fixture(scope="module")
def state_root():
    d = tempfile.mkdtemp(prefix="usher-vm-provider-test.")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _group():
    for g in ("usher", "nogroup", "kvm"):
        try:
            return grp.getgrnam(g).gr_gid
        except KeyError:
            pass
    return 0


@pytest.fixture(scope="module")
def main_vm(env, state_root):
    """The persistent VM of the lifecycle tests; its state dir is made beforehand with a group
    of its own (the provider gives the secret that group)."""
    sd = os.path.join(state_root, "main")
    os.mkdir(sd, 0o750)
    os.chown(sd, 0, _group())
    vm = Vm(env, MAIN, sd)
    yield vm
    if vm.exists():
        vm.call("destroy", purge=True)


# --- no libvirt needed: these run anywhere (not root, no libvirtd) ---------------------------

class OfflineEnv:
    """Profile values for requests that fail, or succeed, before libvirt is reached."""
    uri = "qemu:///system"
    base_image = "usher-tp-base.qcow2"
    kernel = initrd = cmdline = ""
    conn = None


@pytest.fixture(scope="module")
def offline():
    return OfflineEnv()


def test_bad_requests_exit_2_with_an_error_reply(offline, state_root):
    env = offline
    vm = Vm(env, "usher-tpbad", os.path.join(state_root, "bad"))
    good = vm.request("ensure")

    def bad(verb_argv, data):
        r = run_raw(verb_argv, data if isinstance(data, bytes) else json.dumps(data).encode())
        assert r.code == 2 and r.reply["error"] == "bad_request", r
        return r

    bad(["ensure"], b"")
    bad(["ensure"], b"{not json")
    bad(["ensure"], b"\xff\xfe")
    bad(["ensure"], [1, 2])
    bad(["frobnicate"], good)
    bad([], good)
    bad(["ensure", "extra"], good)
    bad(["status"], good)  # the request says ensure
    for key, value in [("contract", 2), ("contract", "1"), ("contract", True),
                       ("name", "usher/tp"), ("name", ""), ("name", "-x"), ("name", "a" * 65),
                       ("name", 7), ("os_user", "Root"), ("os_user", "a b"), ("os_user", None),
                       ("profile", "default"), ("purge", "yes"), ("deadline_s", -1),
                       ("deadline_s", "300")]:
        r = bad(["ensure"], dict(good, **{key: value}))
        assert key.split("_")[0] in r.reply["message"] or key in r.reply["message"], r
    for key in ["contract", "name", "os_user", "profile"]:
        bad(["ensure"], {k: v for k, v in good.items() if k != key})
    for key, value in [("memory_mib", "128"), ("memory_mib", 0), ("vcpus", 1.5),
                       ("persistent", "yes"), ("persistent", 1), ("guest_port", 0),
                       ("guest_port", 70000), ("disk_bytes", -1), ("state_dir", "rel/dir"),
                       ("kernel", "vmlinuz"), ("network", ""), ("base_image", "a/b"),
                       ("uri", ""), ("name", "Default"), ("cmdline", "a\nb")]:
        p = dict(good["profile"], **{key: value})
        r = bad(["ensure"], dict(good, profile=p))
        assert "profile." + key in r.reply["message"], r
    for key in good["profile"]:
        p = {k: v for k, v in good["profile"].items() if k != key}
        bad(["ensure"], dict(good, profile=p))
    bad(["ensure"], dict(good, profile=dict(good["profile"], kernel="", initrd="/x")))
    assert not os.path.exists(vm.state_dir), "a bad request changed something"


def test_mint_without_a_secret_is_no_secret(offline, state_root):
    env = offline
    vm = Vm(env, "usher-tpnosecret", os.path.join(state_root, "nosecret"))
    r = vm.call("mint", expect=1)
    assert r.reply["error"] == "no_secret", r


def test_mint_is_the_documented_hmac(offline, state_root):
    env = offline
    sd = os.path.join(state_root, "mint")
    os.mkdir(sd, 0o750)
    vm = Vm(env, "usher-tpmint", sd)
    secret = os.urandom(32).hex()
    with open(vm.secret_path(), "w") as f:
        f.write(secret)
    before = int(time.time())
    r = vm.call("mint")
    after = int(time.time())
    assert set(r.reply) == {"credential"}, r
    tag, t, nonce, mac = r.reply["credential"].split(".")
    assert tag == "usher1" and before <= int(t) <= after, r
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    want = hmac.new(secret.encode(), ("usher1.%s.%s.%s" % (t, nonce, vm.name)).encode(),
                    hashlib.sha256).hexdigest()
    assert mac == want
    assert r.reply["credential"] == vmenv.credential(secret, vm.name, int(t), nonce)
    # two in the same second differ (a guest refusing replays takes both)
    assert len({vm.call("mint").reply["credential"] for _ in range(3)}) == 3
    # a trailing newline (an operator's editor) is not part of the key
    with open(vm.secret_path(), "w") as f:
        f.write(secret + "\n")
    r = vm.call("mint")
    _, t, nonce, _ = r.reply["credential"].split(".")
    assert r.reply["credential"] == vmenv.credential(secret, vm.name, int(t), nonce)
    # and a file that holds no secret is none
    with open(vm.secret_path(), "w") as f:
        f.write("not a secret\n")
    assert vm.call("mint", expect=1).reply["error"] == "no_secret"


# --- failures before anything is made (the real libvirtd from here on) ----------------------

def test_unusable_state_dir_is_state_dir(offline, state_root):
    env = offline
    under_a_file = os.path.join(state_root, "file")
    with open(under_a_file, "w"):
        pass
    vm = Vm(env, "usher-tpstate", os.path.join(under_a_file, "vm"))
    for verb in ("ensure", "stop", "destroy"):
        r = vm.call(verb, expect=1)
        assert r.reply["error"] == "state_dir" and under_a_file in r.reply["message"], r


def test_missing_base_image_is_base_image_and_leaves_nothing(env, state_root):
    vm = Vm(env, "usher-tpnobase", os.path.join(state_root, "nobase"),
            base_image="usher-tp-no-such-base.qcow2")
    r = vm.call("ensure", expect=1)
    assert r.reply["error"] == "base_image", r
    assert "usher-tp-no-such-base.qcow2" in r.reply["message"]
    assert not vm.exists() and vm.volumes() == [] and vm.secret() is None


def test_missing_pool_is_storage(env, state_root):
    vm = Vm(env, "usher-tpnopool", os.path.join(state_root, "nopool"), pool="usher-tp-nopool")
    r = vm.call("ensure", expect=1)
    assert r.reply["error"] == "storage" and "usher-tp-nopool" in r.reply["message"], r
    assert not vm.exists()


def test_unreachable_hypervisor_is_connect_quickly(env, state_root):
    vm = Vm(env, "usher-tpnoconn", os.path.join(state_root, "noconn"),
            uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    for verb in ("ensure", "status", "stop", "destroy"):
        r = vm.call(verb, expect=1)
        assert r.reply["error"] == "connect" and "/nonexistent" in r.reply["message"], r
        assert r.seconds < 5, r


def test_hypervisor_that_never_answers_is_connect_before_the_deadline(env, state_root):
    """A TCP peer that accepts and then says nothing: the provider answers `connect` before
    the caller's deadline instead of being killed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        vm = Vm(env, "usher-tphang", os.path.join(state_root, "hang"),
                uri="qemu+tcp://127.0.0.1:%d/system" % port)
        r = vm.call("status", expect=1, deadline_s=4)
        assert r.reply["error"] == "connect", r
        assert 2.5 < r.seconds < 4, r
    finally:
        stop.set()
        th.join()
        for c in held:
            c.close()
        srv.close()


def test_a_domain_usher_did_not_make_is_left_alone(env, state_root):
    name = "usher-tpforeign"
    xml = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           "<os><type>hvm</type></os></domain>" % name)
    env.conn.defineXML(xml)
    try:
        vm = Vm(env, name, os.path.join(state_root, "foreign"))
        for verb in ("ensure", "status", "stop", "destroy"):
            r = vm.call(verb, expect=1, **({"purge": True} if verb == "destroy" else {}))
            assert r.reply["error"] == "not_ours", r
        assert vm.exists()
    finally:
        cleanup(env.conn, prefix=name)


# --- the lifecycle of one persistent VM ------------------------------------------------------

def test_ensure_creates_and_boots_the_vm(main_vm):
    vm = main_vm
    r = vm.call("ensure")
    timed("ensure (cold: create+boot)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "running", "address": r.reply["address"],
                       "port": 8080, "created": True, "started": True}, r
    base = "http://%s:8080" % r.reply["address"]
    assert vmenv.wait_http(base + "/healthz", timeout=30, name=vm.name).strip() == b"ok"
    root = app_root(r.reply, name=vm.name)
    assert root["vm"] == vm.name and root["os_user"] == vm.os_user
    assert root["data_marker"] and root["data_marker_created"], root
    vm.marker = root["data_marker"]
    vm.boot_id = root["boot_id"]
    vm.address = r.reply["address"]
    assert vm.volumes() == [vm.name + "-data.qcow2", vm.name + "-root.qcow2",
                            vm.name + "-seed.iso"]


def test_state_dir_and_secret_file(main_vm):
    vm = main_vm
    secret = vm.secret()
    assert secret and len(secret) == 64 and int(secret, 16) >= 0 and "\n" not in secret
    st = os.stat(vm.secret_path())
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == os.stat(vm.state_dir).st_gid == _group()
    leftovers = [f for f in os.listdir(vm.state_dir) if f.startswith(".")]
    assert leftovers == [], leftovers
    # the dispatcher (another user in the state dir's group) can mint; other users cannot
    nobody = 65534
    assert vm.call("mint", as_ids=(nobody, _group())).reply["credential"].startswith("usher1.")
    other = next(g for g in (1, 2, 3, 4) if g != _group())
    r = vm.call("mint", expect=1, as_ids=(nobody, other))
    assert r.reply["error"] == "no_secret" and "ermission denied" in r.reply["message"], r
    xml = vm.domain_xml()
    assert secret not in xml
    assert "https://usher.invalid/vm/1" in xml and "os_user=\"%s\"" % vm.os_user in xml
    assert "<readonly />" in xml or "<readonly/>" in xml


def test_ensure_of_a_running_vm_is_fast_and_changes_nothing(main_vm):
    vm = main_vm
    # what a killed run leaves (a seed build dir, a secret's temporary file) is removed; the
    # files of another VM whose name only begins like this one's are not
    sd = vm.state_dir
    os.mkdir(os.path.join(sd, ".%s.seed~x1" % vm.name), 0o700)
    others = [".%s.x.secret~x3" % vm.name, "%s.x.secret" % vm.name]  # VM usher-tpmain.x
    for f in [".%s.secret~x2" % vm.name] + others:
        open(os.path.join(sd, f), "w").close()
    vm.call("ensure")
    assert sorted(f for f in os.listdir(sd) if vm.name in f) == sorted(
        [vm.name + ".lock", vm.name + ".secret"] + others)
    for f in others:
        os.unlink(os.path.join(sd, f))
    for _ in range(3):
        r = vm.call("ensure")
        timed("ensure (warm: running)", r.seconds)
        assert r.reply == {"name": vm.name, "state": "running", "address": vm.address,
                           "port": 8080, "created": False, "started": False}, r
        assert r.seconds < 1.0, r
    assert app_root(r.reply)["boot_id"] == vm.boot_id


def test_status_of_a_running_vm(main_vm):
    r = main_vm.call("status")
    timed("status", r.seconds)
    assert r.reply == {"name": main_vm.name, "state": "running", "address": main_vm.address,
                       "port": 8080}, r


def test_minted_credential_signs_in_once(main_vm):
    vm = main_vm
    r = vm.call("mint")
    timed("mint", r.seconds)
    cred = r.reply["credential"]
    url = "http://%s:8080/api/auth/bootstrap" % vm.address
    code, headers, body = http("POST", url, json.dumps({"credential": cred}).encode())
    assert code == 200, (code, body)
    assert "t3_session=" in headers.get("Set-Cookie", headers.get("set-cookie", "")), headers
    code, _, _ = http("POST", url, json.dumps({"credential": cred}).encode())
    assert code != 200, "a replayed credential was accepted"
    forged = cred[:-1] + ("0" if cred[-1] != "0" else "1")
    time.sleep(1)  # not the same second as an accepted one
    code, _, _ = http("POST", url, json.dumps({"credential": forged}).encode())
    assert code != 200


def test_stop_then_ensure_starts_it_with_the_same_data(main_vm):
    vm = main_vm
    r = vm.call("stop", grace_s=20)
    timed("stop (graceful)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "stopped"}, r
    assert vm.call("status").reply == {"name": vm.name, "state": "stopped"}
    assert vm.call("stop").reply == {"name": vm.name, "state": "stopped"}  # idempotent
    r = vm.call("ensure")
    timed("ensure (stopped: boot)", r.seconds)
    assert r.reply["created"] is False and r.reply["started"] is True, r
    # the address is the one taken by this boot: the app answers at once
    t0 = time.monotonic()
    root = app_root(r.reply, timeout=10, name=vm.name)
    assert time.monotonic() - t0 < 5
    assert root["data_marker"] == vm.marker and not root["data_marker_created"], root
    assert root["boot_id"] != vm.boot_id
    vm.boot_id = root["boot_id"]
    vm.address = r.reply["address"]


def test_lost_secret_restarts_the_vm_with_a_new_one(main_vm):
    vm = main_vm
    old = vm.secret()
    os.unlink(vm.secret_path())
    assert vm.call("mint", expect=1).reply["error"] == "no_secret"
    r = vm.call("ensure")
    timed("ensure (new secret: restart)", r.seconds)
    assert r.reply["created"] is False and r.reply["started"] is True, r
    new = vm.secret()
    assert new and new != old
    root = app_root(r.reply, timeout=10, name=vm.name)
    assert root["boot_id"] != vm.boot_id and root["data_marker"] == vm.marker
    cred = vm.call("mint").reply["credential"]
    code, _, body = http("POST", "http://%s:8080/api/auth/bootstrap" % r.reply["address"],
                         json.dumps({"credential": cred}).encode())
    assert code == 200, body
    # and now it is settled: no restart
    r = vm.call("ensure")
    assert r.reply["started"] is False and r.seconds < 1.0, r
    vm.address = r.reply["address"]


def test_destroy_keeps_the_data_volume_and_ensure_reuses_it(main_vm):
    vm = main_vm
    r = vm.call("destroy")
    timed("destroy (graceful, keeps data)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "absent", "data_kept": True}, r
    assert not vm.exists()
    assert vm.volumes() == [vm.name + "-data.qcow2"]
    assert vm.secret() is None
    assert vm.call("status").reply == {"name": vm.name, "state": "absent"}
    assert vm.call("stop").reply == {"name": vm.name, "state": "absent"}
    assert vm.call("destroy").reply == {"name": vm.name, "state": "absent", "data_kept": True}
    r = vm.call("ensure")
    timed("ensure (cold, data kept)", r.seconds)
    assert r.reply["created"] is True and r.reply["started"] is True, r
    root = app_root(r.reply, name=vm.name)
    assert root["data_marker"] == vm.marker and not root["data_marker_created"], root


def test_destroy_with_purge_deletes_everything(main_vm):
    vm = main_vm
    r = vm.call("destroy", purge=True)
    timed("destroy (purge)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "absent", "data_kept": False}, r
    assert not vm.exists() and vm.volumes() == [] and vm.secret() is None
    assert vm.call("destroy", purge=True).reply["data_kept"] is False


# --- temporary VMs, concurrency, interruption, no address ------------------------------------

def test_concurrent_ensures_make_one_temporary_vm_and_stop_discards_it(env, state_root):
    """Two ensures of one new VM at once: one makes it, the other waits and finds it running.
    The profile is temporary: stop deletes the VM, its volumes and its secret. The state dir
    does not exist beforehand: the provider makes it 0750."""
    sd = os.path.join(state_root, "temp", "vm")
    vm = Vm(env, "usher-tptemp", sd, persistent=False)
    results = [None, None]

    def go(i):
        results[i] = vm.call("ensure")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results), results
    replies = sorted((r.reply for r in results), key=lambda x: not x["created"])
    assert [x["created"] for x in replies] == [True, False], results
    assert replies[0]["address"] == replies[1]["address"]
    assert stat.S_IMODE(os.stat(sd).st_mode) == 0o750
    app_root(replies[0], name=vm.name)
    assert len(vm.volumes()) == 3
    r = vm.call("stop")
    timed("stop (temporary: discard)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "absent"}, r
    assert not vm.exists() and vm.volumes() == [] and vm.secret() is None
    assert vm.call("stop").reply == {"name": vm.name, "state": "absent"}


def test_an_ensure_killed_midway_is_finished_by_the_next(env, state_root):
    """The caller's timeout: SIGTERM to the provider's process group while it waits for the
    guest. It still answers with an error; the next ensure completes the VM."""
    vm = Vm(env, "usher-tpkill", os.path.join(state_root, "kill"))
    p = subprocess.Popen([PROVIDER, "ensure"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True,
                         env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"})
    p.stdin.write(json.dumps(vm.request("ensure")).encode())
    p.stdin.close()
    p.stdin = None  # communicate() would flush it
    deadline = time.monotonic() + 30
    while not vm.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 1, (out, err)
    reply = json.loads(out)
    assert set(reply) == {"error", "message"} and "SIGTERM" in reply["message"], reply
    r = vm.call("ensure")
    assert r.reply["created"] is False and r.reply["started"] in (True, False), r
    app_root(r.reply, name=vm.name)
    assert vm.call("destroy", purge=True).reply["data_kept"] is False
    assert vm.volumes() == []


@pytest.fixture
def bare_bridge():
    """A host bridge with nothing on it: no DHCP, no address for any guest."""
    name = "usher-tpbr0"
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    r = subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip("cannot make a bridge: %s" % r.stderr.strip())
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_no_address_before_the_deadline(env, state_root, bare_bridge):
    vm = Vm(env, "usher-tpnoaddr", os.path.join(state_root, "noaddr"), data_disk_bytes=0,
            network="bridge:" + bare_bridge)
    r = vm.call("ensure", expect=1, deadline_s=12)
    timed("ensure (no address, 12 s)", r.seconds)
    assert r.reply["error"] == "no_address", r
    assert 10 < r.seconds < 12, r
    xml = vm.domain_xml()
    assert "<source bridge=\"%s\"" % bare_bridge in xml or \
        "<source bridge='%s'" % bare_bridge in xml, xml
    assert vm.volumes() == [vm.name + "-root.qcow2", vm.name + "-seed.iso"]
    assert vm.call("status").reply == {"name": vm.name, "state": "running", "port": 8080}
    r = vm.call("destroy")  # nothing to keep: forced off at once
    assert r.reply == {"name": vm.name, "state": "absent", "data_kept": False}, r
    assert r.seconds < 10, r
    assert not vm.exists() and vm.volumes() == []


# --- a remote hypervisor: qemu+ssh:// ---------------------------------------------------------

@pytest.fixture
def ssh_uri(state_root):
    """qemu+ssh://root@127.0.0.1:PORT/system through an sshd of our own (a key for root, the
    host key in a known_hosts file of our own: nothing of the host's ssh setup is used or
    changed). Skips where Debian's openssh-server is not installed."""
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.skip("%s not found (Debian: openssh-server, openssh-client)" % tool)
    d = tempfile.mkdtemp(prefix="usher-vm-ssh.", dir=state_root)
    os.chmod(d, 0o700)
    for key in ("host", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "usher-tp",
                        "-f", os.path.join(d, key)], check=True)
    shutil.copy(os.path.join(d, "id.pub"), os.path.join(d, "authorized_keys"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(os.path.join(d, "host.pub")) as f:
        host_key = " ".join(f.read().split()[:2])
    with open(os.path.join(d, "known_hosts"), "w") as f:
        f.write("[127.0.0.1]:%d %s\n" % (port, host_key))
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write("Port %d\nListenAddress 127.0.0.1\nHostKey %s/host\nPidFile %s/sshd.pid\n"
                "AuthorizedKeysFile %s/authorized_keys\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "StrictModes no\n" % (port, d, d, d))
    # what an operator puts in root's ~/.ssh/config, here in a wrapper given as command=
    wrapper = os.path.join(d, "ssh")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec ssh -F none -o UserKnownHostsFile=%s/known_hosts "
                "-o ConnectTimeout=5 \"$@\"\n" % d)
    os.chmod(wrapper, 0o755)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(d, "sshd_config")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "sshd.log"), "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if sshd.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(d, "sshd.log")) as f:
                    pytest.fail("sshd did not start: %s" % f.read())
            time.sleep(0.05)
        yield "qemu+ssh://root@127.0.0.1:%d/system?keyfile=%s/id&command=%s" % (port, d, wrapper)
    finally:
        sshd.terminate()
        sshd.wait(10)


def test_remote_hypervisor_over_ssh(env, state_root, ssh_uri):
    vm = Vm(env, "usher-tpssh", os.path.join(state_root, "ssh"), uri=ssh_uri)
    r = vm.call("ensure")
    timed("ensure over ssh (cold)", r.seconds)
    assert r.reply["created"] is True and r.reply["started"] is True, r
    root = app_root(r.reply, name=vm.name)
    assert root["vm"] == vm.name and root["data_marker_created"]
    r = vm.call("ensure")
    timed("ensure over ssh (warm)", r.seconds)
    assert r.reply["created"] is False and r.reply["started"] is False, r
    assert vm.call("status").reply["state"] == "running"
    cred = vm.call("mint").reply["credential"]
    code, _, body = http("POST", "http://%s:8080/api/auth/bootstrap" % r.reply["address"],
                         json.dumps({"credential": cred}).encode())
    assert code == 200, body
    r = vm.call("destroy", purge=True)
    timed("destroy over ssh (purge)", r.seconds)
    assert r.reply == {"name": vm.name, "state": "absent", "data_kept": False}, r
    assert not vm.exists() and vm.volumes() == []
