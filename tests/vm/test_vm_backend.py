"""A map line becomes a VM that answers through the dispatcher (docs/vm-provider.md).

The whole path, all real: user map -> usher-reconcile -> scripts/usher-vm-libvirt -> libvirtd
-> a tiny Debian-kernel guest under qemu whose app speaks the t3 login contract -> state file
-> usher-dispatch, which mints through the provider's `mint` verb and proxies to the guest.
One module-scoped world; the tests run in order and build on each other.
"""

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

import vmenv
from conftest import PROVIDER
from testlib import parse_logfmt

RECONCILE = os.environ.get("USHER_RECONCILE", "")
DISPATCH = os.environ.get("USHER_DISPATCH", "")
USERS = ["tvmcarol", "tvmdave", "tvmerin", "tvmfrank"]  # their VMs: usher-tvm*
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def logfmt(line):
    return parse_logfmt(line) or {}


class World:
    def __init__(self, env):
        self.env = env
        self.dir = tempfile.mkdtemp(prefix="usher-vm-e2e.")
        os.chmod(self.dir, 0o755)
        self.map_file = os.path.join(self.dir, "user-map")
        self.state_file = os.path.join(self.dir, "state.json")
        self.conf = os.path.join(self.dir, "usher.conf")
        self.vm_state = os.path.join(self.dir, "vm-state")
        self.key = os.path.join(self.dir, "bind.key")
        with open(self.key, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(self.key, 0o600)
        hang = os.path.join(self.dir, "hanging-provider")
        with open(hang, "w") as f:
            f.write("#!/bin/sh\nexec sleep 600\n")
        os.chmod(hang, 0o755)
        for u in USERS:
            if subprocess.run(["id", u], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", u],
                               check=True)
        profile = env.profile(provider=PROVIDER, state_dir=self.vm_state, max_vms=2,
                              timeout="240s", guest_port=8080)
        sections = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "users": {"map_file": self.map_file, "state_file": self.state_file,
                      "min_uid": "1000"},
            "log": {"level": "info"},
            "mint": {"enabled": "yes", "secure_cookies": "no", "bind_key_file": self.key},
            "reconcile": {"lock_file": os.path.join(self.dir, "reconcile.lock"),
                          "env_dir": os.path.join(self.dir, "env"), "vm_parallel": "4"},
            "vm.default": profile,
            # Same keys, but its provider never answers: it must fail only its own user.
            "vm.broken": dict(profile, provider=hang, uri="test:///default", timeout="3s"),
        }
        with open(self.conf, "w") as f:
            for name, kv in sections.items():
                f.write("[%s]\n" % name + "".join("%s = %s\n" % i for i in kv.items()) + "\n")
        self.dispatch = None
        self.dispatch_log = os.path.join(self.dir, "usher-dispatch.log")
        self.port = None

    def write_map(self, lines):
        with open(self.map_file + ".new", "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.rename(self.map_file + ".new", self.map_file)

    def reconcile(self, *args, timeout=600):
        t0 = time.monotonic()
        p = subprocess.run([RECONCILE, "--config", self.conf, "--json", *args],
                           capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - t0
        for m in SANITIZER_MARKERS:
            assert m not in p.stderr, p.stderr
        doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
        print("reconcile %s: exit %d in %.1f s" % (" ".join(args), p.returncode, took))
        return p.returncode, doc, p.stderr, took

    def state(self):
        with open(self.state_file) as f:
            return json.load(f)

    def start_dispatch(self):
        self.dispatch = subprocess.Popen([DISPATCH, "--config", self.conf],
                                         stdout=subprocess.DEVNULL,
                                         stderr=open(self.dispatch_log, "w"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.dispatch.poll() is None, self.log()
            for line in self.log().splitlines():
                rec = logfmt(line)
                if rec.get("event") == "listening" and rec.get("role") == "proxy":
                    self.port = int(rec["addr"].rsplit(":", 1)[1])
                if rec.get("event") == "ready" and self.port:
                    return
            time.sleep(0.05)
        raise AssertionError("usher-dispatch not ready:\n" + self.log())

    def log(self):
        with open(self.dispatch_log, errors="replace") as f:
            return f.read()

    def get(self, sso, path="/", cookies=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"X-authentik-username": sso, "Accept": "application/json"}
        if cookies:
            headers["Cookie"] = "; ".join("%s=%s" % kv for kv in cookies.items())
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        set_cookies = {}
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                set_cookies[name] = rest.split(";", 1)[0]
        c.close()
        return r.status, body, set_cookies

    def close(self):
        if self.dispatch and self.dispatch.poll() is None:
            self.dispatch.terminate()
            self.dispatch.wait(10)
        if self.dispatch:
            for m in SANITIZER_MARKERS:
                assert m not in self.log(), self.log()


@pytest.fixture(scope="module")
def world(vm_env):
    if not RECONCILE or not DISPATCH:
        pytest.skip("USHER_RECONCILE and USHER_DISPATCH name the binaries (run through ctest)")
    vmenv.cleanup(vm_env.conn, prefix="usher-tvm")
    w = World(vm_env)
    yield w
    try:
        w.close()
    finally:
        vmenv.cleanup(vm_env.conn, prefix="usher-tvm")
        for u in USERS:
            subprocess.run(["userdel", u], capture_output=True)
        shutil.rmtree(w.dir, ignore_errors=True)


def vm_of(doc, user):
    for u in doc["vms"]["users"]:
        if u["os_user"] == user:
            return u
    raise AssertionError("no %s in %s" % (user, json.dumps(doc["vms"], indent=1)))


def domain_state(env, name):
    import libvirt
    try:
        return env.conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None


def volumes(env):
    env.pool.refresh(0)
    return set(env.pool.listVolumes())


def test_map_lines_become_vms_quota_and_a_hanging_provider_fail_alone(world):
    world.write_map(["carol@example.org=tvmcarol backend=vm",
                     "dave@example.org=tvmdave backend=vm",
                     "erin@example.org=tvmerin backend=vm vm_profile=broken",
                     "frank@example.org=tvmfrank backend=vm"])
    code, doc, err, took = world.reconcile()
    print(json.dumps(doc.get("vms"), indent=1))
    assert code == 1, err  # partial: erin and frank failed, the others were done
    carol, dave = vm_of(doc, "tvmcarol"), vm_of(doc, "tvmdave")
    for u in (carol, dave):
        assert u["status"] == "changed", u
        assert u["created"] is True
        assert u["address"].startswith("192.168.233.")
        assert u["port"] == 8080
    erin = vm_of(doc, "tvmerin")
    assert erin["status"] == "failed" and erin["reason"] == "provider_timeout", erin
    frank = vm_of(doc, "tvmfrank")
    assert frank["status"] == "failed" and frank["reason"] == "quota", frank
    assert "at most 2 VMs on qemu:///system" in frank["error"]
    assert domain_state(world.env, "usher-tvmfrank") is None  # never asked for
    users = world.state()["users"]
    assert users["tvmcarol"] == {"kind": "vm", "address": carol["address"], "port": 8080,
                                 "vm": {"name": "usher-tvmcarol", "profile": "default",
                                        "provider": PROVIDER, "uri": world.env.uri}}
    assert "tvmerin" not in users and "tvmfrank" not in users
    # The secret each guest got is on this host only, 0640, and never in the output.
    secret = os.path.join(world.vm_state, "usher-tvmcarol.secret")
    assert os.stat(secret).st_mode & 0o777 == 0o640
    with open(secret) as f:
        s = f.read().strip()
    assert s and s not in json.dumps(doc) and s not in err


def test_requests_reach_the_vm_signed_in_through_the_provider(world):
    world.start_dispatch()
    status, body, cookies = world.get("carol@example.org")
    assert status == 200, body
    page = json.loads(body)
    assert page["vm"] == "usher-tvmcarol"
    assert page["forwarded_user"] == "carol@example.org"
    assert page["authenticated"] is True  # the app cookie was minted and injected
    assert "t3_session" in cookies and "usher_bind" in cookies
    mints = [logfmt(line) for line in world.log().splitlines() if "event=mint " in line]
    assert [(m["os_user"], m["result"]) for m in mints] == [("tvmcarol", "ok")], world.log()
    print("first visit: mint through the provider took %s ms (command %s ms)"
          % (mints[0]["duration_ms"], mints[0]["command_ms"]))
    # With the cookies the browser now holds: no new mint, same session.
    status, body, again = world.get("carol@example.org", cookies=cookies)
    assert status == 200 and json.loads(body)["authenticated"] is True
    assert "t3_session" not in again
    assert world.log().count("event=mint ") == 1
    # dave's request goes to dave's VM, never carol's.
    status, body, _ = world.get("dave@example.org")
    assert status == 200 and json.loads(body)["vm"] == "usher-tvmdave"
    # No secret or credential in the dispatcher's log.
    with open(os.path.join(world.vm_state, "usher-tvmcarol.secret")) as f:
        assert f.read().strip() not in world.log()
    assert "usher1." not in world.log()
    world.marker = page["data_marker"]
    assert world.marker and world.marker != "none"


def test_ensure_is_idempotent_and_restarts_a_stopped_vm_with_its_data(world):
    code, doc, err, took = world.reconcile()
    assert vm_of(doc, "tvmcarol")["status"] == "unchanged"
    assert vm_of(doc, "tvmcarol")["created"] is False
    assert doc["state_file"]["written"] is False
    world.env.conn.lookupByName("usher-tvmcarol").destroy()  # stopped behind Usher's back
    code, doc, err, took = world.reconcile()
    carol = vm_of(doc, "tvmcarol")
    assert carol["status"] == "changed" and carol["started"] is True and carol["created"] is False
    status, body, _ = world.get("carol@example.org")
    assert status == 200, body
    assert json.loads(body)["data_marker"] == world.marker  # the same data volume


def test_removed_user_is_stopped_data_kept_and_purge_deletes_only_on_request(world):
    import libvirt
    before = volumes(world.env)
    assert "usher-tvmcarol-data.qcow2" in before
    world.write_map(["dave@example.org=tvmdave backend=vm"])
    code, doc, err, took = world.reconcile()
    removed = [r for r in doc["vms"]["removed"] if r["os_user"] == "tvmcarol"]
    assert removed and removed[0]["action"] == "stop" and removed[0]["status"] == "changed", doc
    assert domain_state(world.env, "usher-tvmcarol") == libvirt.VIR_DOMAIN_SHUTOFF
    assert "usher-tvmcarol-data.qcow2" in volumes(world.env)
    assert "tvmcarol" not in world.state()["users"]
    # The dispatcher follows the map: carol is no longer let in.
    deadline = time.monotonic() + 5
    while world.get("carol@example.org")[0] != 403 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert world.get("carol@example.org")[0] == 403
    # Another reconcile does not touch her VM or data again.
    code, doc, err, took = world.reconcile()
    assert not doc["vms"]["removed"]
    assert "usher-tvmcarol-data.qcow2" in volumes(world.env)
    # Purge: refused for a mapped user, deletes exactly the one asked for.
    p = subprocess.run([RECONCILE, "--config", world.conf, "--purge", "tvmdave"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "still mapped" in p.stdout + p.stderr
    p = subprocess.run([RECONCILE, "--config", world.conf, "--purge", "tvmcarol", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data_kept"] is False
    after = volumes(world.env)
    assert not any(v.startswith("usher-tvmcarol") for v in after), after
    assert "usher-tvmdave-data.qcow2" in after
    assert domain_state(world.env, "usher-tvmcarol") is None
