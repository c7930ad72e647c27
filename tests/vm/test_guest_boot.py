"""The tiny test guest boots under libvirt and serves the login contract (without the provider).

Defines usher-t-boot with plain libvirt-python, as the provider would: direct kernel boot of
tests/vm/guest's kernel and initramfs, a root disk overlaying the base image, a data disk
(serial usher-data), a NoCloud seed as a read-only virtio disk, one virtio NIC on the isolated
usher-test network, TCG (or KVM where it works). Then: DHCP lease, /healthz, the bootstrap
flow (accept, replay, bad HMAC, expired, wrong VM), the session check, GET / JSON; a graceful
shutdown (ACPI) and a second boot keep the data disk's marker. Prints the boot times
(pytest -s shows them). Everything it made is removed, also on failure.
"""

import http.client
import json
import re
import secrets
import time

import pytest

import vmenv

NAME = "usher-t-boot"
OS_USER = "t-boot"
PORT = 8080
VOLUMES = (NAME + "-root.qcow2", NAME + "-data.qcow2", NAME + "-seed.iso")


@pytest.fixture(scope="module")
def env(vm_env):
    return vm_env  # conftest.py: vmenv.setup(), skipped with the reason where it cannot be


def request(addr, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(addr, PORT, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        c.close()


def bootstrap(addr, credential):
    return request(addr, "POST", "/api/auth/bootstrap", json.dumps({"credential": credential}),
                   {"Content-Type": "application/json"})


def header(headers, name):
    values = [v for k, v in headers if k.lower() == name]
    return values[0] if values else None


def boot(env, t0):
    """Waits for the lease and /healthz of the started NAME; returns (addr, lease s, health s)."""
    addr = vmenv.wait_for_address(env.conn, NAME, timeout=120)
    t_lease = time.monotonic() - t0
    body = vmenv.wait_http("http://%s:%d/healthz" % (addr, PORT), timeout=60, name=NAME)
    t_health = time.monotonic() - t0
    assert body == b"ok\n"
    return addr, t_lease, t_health


def wait_stopped(dom, timeout):
    deadline = time.monotonic() + timeout
    while dom.isActive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_guest_boots_and_serves_the_login_contract(env):
    vmenv.cleanup(env.conn, prefix=NAME)
    secret = secrets.token_hex(32)
    try:
        vmenv.create_volume(env.pool, VOLUMES[0], 64 << 20, backing=env.base_image_path)
        vmenv.create_volume(env.pool, VOLUMES[1], 64 << 20)
        vmenv.upload_volume(env.pool, VOLUMES[2],
                            vmenv.seed_iso(NAME, OS_USER, PORT, secret))
        xml = vmenv.guest_domain_xml(NAME, env.kernel, env.initrd, root_vol=VOLUMES[0],
                                     data_vol=VOLUMES[1], seed_vol=VOLUMES[2])
        dom = env.conn.defineXML(xml)

        t0 = time.monotonic()
        dom.create()
        addr, t_lease, t_health = boot(env, t0)
        print("\nfirst boot (%s): lease after %.1f s, /healthz after %.1f s"
              % ("kvm" if vmenv.kvm_usable() else "tcg", t_lease, t_health))

        # --- the login contract ---
        status, _, body = request(addr, "GET", "/api/auth/session")
        assert (status, json.loads(body)) == (401, {"authenticated": False})

        good = vmenv.credential(secret, NAME)
        status, headers, body = bootstrap(addr, good)
        assert status == 200, body
        assert json.loads(body) == {"ok": True}
        cookie = header(headers, "set-cookie")
        m = re.fullmatch(r"t3_session=([0-9a-f]{32}); Path=/; HttpOnly(; SameSite=Lax)?", cookie)
        assert m, cookie
        session = "t3_session=" + m.group(1)

        status, _, body = bootstrap(addr, good)  # replay
        assert status == 401 and "already used" in json.loads(body)["error"]
        for bad, why in (
                (vmenv.credential(secrets.token_hex(32), NAME), "bad signature"),  # other secret
                (vmenv.credential(secret, "usher-t-other"), "bad signature"),  # other VM's
                (vmenv.credential(secret, NAME, time.time() - 300), "expired"),
                (vmenv.credential(secret, NAME, time.time() + 300), "future"),
                (good[:-1] + ("0" if good[-1] != "0" else "1"), "bad signature")):
            status, headers, body = bootstrap(addr, bad)
            assert status == 401 and why in json.loads(body)["error"], (bad, status, body)
            assert header(headers, "set-cookie") is None
        status, _, body = request(addr, "POST", "/api/auth/bootstrap", "{}",
                                  {"Content-Type": "application/json"})
        assert (status, body) == (400, b"Invalid bootstrap payload.")

        status, _, body = request(addr, "GET", "/api/auth/session", headers={"Cookie": session})
        assert (status, json.loads(body)) == (200, {"authenticated": True})
        status, _, _ = request(addr, "GET", "/api/auth/session",
                               headers={"Cookie": "t3_session=" + "0" * 32})
        assert status == 401

        # --- what the app reports ---
        status, headers, body = request(addr, "GET", "/some/page?x=1",
                                        headers={"Cookie": "a=b; " + session,
                                                 "X-Forwarded-User": OS_USER})
        assert status == 200 and header(headers, "content-type") == "application/json"
        info = json.loads(body)
        assert info["vm"] == NAME and info["os_user"] == OS_USER
        assert info["hostname"] == NAME  # meta-data local-hostname
        assert info["forwarded_user"] == OS_USER and info["forwarded_users"] == [OS_USER]
        assert info["authenticated"] is True
        assert info["path"] == "/some/page"
        assert re.fullmatch(r"[0-9a-f]{32}", info["data_marker"]), info
        assert info["data_marker_created"] is True
        status, _, body = request(addr, "GET", "/")
        first = json.loads(body)
        assert first["authenticated"] is False and first["forwarded_user"] is None

        # --- graceful shutdown (ACPI power button) and a second boot: the data disk stays ---
        t = time.monotonic()
        dom.shutdown()
        assert wait_stopped(dom, 30), "no power-off 30 s after virsh shutdown\n" + \
            vmenv.diagnostics(NAME)
        t_shutdown = time.monotonic() - t
        t0 = time.monotonic()
        dom.create()
        addr2, t_lease, t_health = boot(env, t0)
        print("shutdown took %.1f s; second boot: lease after %.1f s, /healthz after %.1f s"
              % (t_shutdown, t_lease, t_health))
        status, _, body = request(addr2, "GET", "/")
        second = json.loads(body)
        assert second["data_marker"] == first["data_marker"]
        assert second["data_marker_created"] is False
        assert second["boot_id"] != first["boot_id"]
        # a session does not survive a reboot (sessions live in the app's memory)
        status, _, _ = request(addr2, "GET", "/api/auth/session", headers={"Cookie": session})
        assert status == 401
    except BaseException:
        print(vmenv.diagnostics(NAME))
        raise
    finally:
        removed = vmenv.cleanup(env.conn, prefix=NAME)
        left = [v.name() for v in env.pool.listAllVolumes(0) if v.name() in VOLUMES]
        assert not left, "volumes left after cleanup: %s (removed %s)" % (left, removed)
