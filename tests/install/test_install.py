"""scripts/install on a clean systemd host, and the shipped sudoers rule,
units and mint wrapper doing their jobs there (issue 5's "Done means")."""

import http.client
import json
import os
import stat
import subprocess
import time

from conftest import MAPPED, OUTSIDER, REPO, wait_for

WRAPPER = "/usr/libexec/usher/t3-mint"
SUDOERS_SRC = os.path.join(REPO, "sudoers", "usher-dispatch")


def test_shipped_sudoers_parses():
    r = subprocess.run(["visudo", "-cf", SUDOERS_SRC], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_puts_everything_in_place(host):
    h = host
    print("install took %.1fs" % h.install_seconds)
    assert h.systemctl("is-active", "usher-dispatch.service").stdout.strip() == "active"
    for u in ("usher-dispatch.service", "usher-reconcile.timer", "usher-reconcile.path"):
        assert h.systemctl("is-enabled", u).stdout.strip() == "enabled", u
        assert h.systemctl("is-active", u).stdout.strip() == "active", u
    st = os.stat(h.path("/etc/usher/bind.key"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == h.uid("usher")
    assert st.st_size >= 32
    st = os.stat(h.path(WRAPPER))
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0 and st.st_gid == 0
    # The VM provider, and its per-VM secrets readable by the dispatcher's group only.
    st = os.stat(h.path("/usr/libexec/usher/usher-vm-libvirt"))
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0
    st = os.stat(h.path("/var/lib/usher/vm"))
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_uid == 0 and st.st_gid == int(h.exec("id", "-g", "usher").stdout.strip())
    st = os.stat(h.path("/etc/sudoers.d/usher-dispatch"))
    assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_uid == 0
    # The operator's existing config is kept; the dispatcher runs as usher.
    assert "listen = 127.0.0.1:%d" % h.listen_port in h.read("/etc/usher/usher.conf")
    pid = h.main_pid()
    assert h.exec("ps", "-o", "user=", "-p", str(pid)).stdout.strip() == "usher"
    # Ready from the start (map and state loaded), even with nobody mapped yet.
    c = http.client.HTTPConnection("127.0.0.1", h.admin_port, timeout=5)
    c.request("GET", "/readyz")
    assert c.getresponse().status == 200
    c.close()


def test_install_again_changes_nothing(host):
    h = host
    pid = h.main_pid()
    key = open(h.path("/etc/usher/bind.key"), "rb").read()
    r = h.exec("/bin/bash", os.path.join(REPO, "scripts", "install"), "--build-dir",
               os.path.dirname(os.path.dirname(h.binary)), check=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed" not in r.stdout and "created" not in r.stdout, r.stdout
    assert h.main_pid() == pid, "a second install restarted an unchanged dispatcher"
    assert open(h.path("/etc/usher/bind.key"), "rb").read() == key


def test_every_unit_verifies(host):
    h = host
    units = sorted(f for f in os.listdir(os.path.join(REPO, "units"))
                   if f.endswith((".service", ".timer", ".path", ".socket")))
    assert "usher-dispatch.service" in units
    args = []
    for f in units:
        # A template is verified as an instance of it.
        args.append(f.replace("@.", "@%s." % MAPPED["alice"]) if "@." in f else f)
    r = h.exec("systemd-analyze", "verify", "--man=no", *args, check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr


def sudo_as_usher(h, *args):
    return h.as_user("usher", "sudo", "-n", *args)


def test_sudoers_allows_exactly_the_mint(host):
    h = host
    alice = MAPPED["alice"]
    ok = sudo_as_usher(h, "-u", alice, WRAPPER)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"credential"' in ok.stdout
    refused = {
        "another command": ("-u", alice, "/usr/bin/id"),
        "a shell": ("-u", alice, "/bin/sh", "-c", "id"),
        "the wrapper with an argument": ("-u", alice, WRAPPER, "--base-dir"),
        "as root (default)": (WRAPPER,),
        "as root (-u root)": ("-u", "root", WRAPPER),
        "as a user outside usher-users": ("-u", OUTSIDER, WRAPPER),
        "as the dispatcher itself": ("-u", "usher", WRAPPER),
        "with another group": ("-u", alice, "-g", "root", WRAPPER),
        "editing a file": ("-e", "/etc/usher/usher.conf"),
    }
    for what, args in refused.items():
        r = sudo_as_usher(h, *args)
        assert r.returncode != 0, "%s was allowed: %s" % (what, r.stdout)
        assert '"credential"' not in r.stdout and "uid=" not in r.stdout, what
    # Never root, even if root ended up in the group.
    h.exec("usermod", "-aG", "usher-users", "root")
    try:
        r = sudo_as_usher(h, "-u", "root", WRAPPER)
        assert r.returncode != 0, "minting as root was allowed once root joined usher-users"
    finally:
        h.exec("gpasswd", "-d", "root", "usher-users")


def test_map_line_reaches_instance_then_access_ends(host):
    h = host
    alice = MAPPED["alice"]
    status, _ = h.request("alice")
    assert status == 403, "alice reached something before being mapped"
    t0 = time.monotonic()
    h.write_map_atomic(["alice=%s" % alice])

    def reached():
        try:
            status, body = h.request("alice")
        except OSError:
            return None
        return body if status == 200 else None
    body = wait_for(reached, timeout=10.0, interval=0.1, what="alice's instance through Usher")
    took = time.monotonic() - t0
    print("map line -> alice's instance in %.2fs" % took)
    assert body["user"] == alice and body["uid"] == h.uid(alice)
    # Minted through sudo and the wrapper, as alice's uid.
    mints = [json.loads(l) for l in h.read("/home/%s/.t3/mints.log" % alice).splitlines()]
    assert mints and mints[-1]["uid"] == h.uid(alice), mints

    # The line removed: access ends at once (the dispatcher watches the map).
    t1 = time.monotonic()
    h.write_map_atomic([])
    wait_for(lambda: h.request("alice")[0] == 403, timeout=2.0, interval=0.02,
             what="alice refused after removal")
    print("line removed -> 403 in %.2fs" % (time.monotonic() - t1))


def test_uninstall_keeps_data_then_reinstall(host):
    h = host
    bob = MAPPED["bob"]
    h.write_map_atomic(["bob=%s" % bob])
    wait_for(lambda: h.request("bob")[0] == 200, timeout=10, interval=0.1, what="bob served")
    r = h.exec("/bin/bash", os.path.join(REPO, "scripts", "uninstall"), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in ("/etc/systemd/system/usher-dispatch.service", "/etc/sudoers.d/usher-dispatch",
              "/usr/local/sbin/usher-dispatch", "/usr/local/sbin/usher-reconcile", WRAPPER):
        assert not h.exists(p), p
    assert h.systemctl("is-active", "usher-dispatch.service", check=False).stdout.strip() != "active"
    h.assert_clean_journal()
    # Kept: config, key, map, state, env files, the person's instance and files.
    for p in ("/etc/usher/usher.conf", "/etc/usher/bind.key", "/etc/ttyd-user-map",
              "/var/lib/usher/state.json", "/etc/t3-serve/%s.env" % bob, "/home/%s/.t3" % bob):
        assert h.exists(p), p
    assert h.systemctl("is-active", "t3-serve@%s.service" % bob).stdout.strip() == "active"
    r = sudo_as_usher(h, "-u", bob, WRAPPER)
    assert r.returncode != 0
    # Installing again picks everything up.
    r = h.exec("/bin/bash", os.path.join(REPO, "scripts", "install"), "--build-dir",
               os.path.dirname(os.path.dirname(h.binary)), check=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: h.request("bob")[0] == 200, timeout=10, interval=0.1, what="bob served again")
