"""usher-dispatch speaks systemd's protocols without systemd: the notify
socket (READY=1 after listeners are bound and map and state loaded, STATUS=,
RELOADING=1/READY=1 around SIGHUP, STOPPING=1 at SIGTERM, WATCHDOG=1 at half
of WATCHDOG_USEC) read from a datagram socket of the test's, and socket
activation through systemd-socket-activate (Debian's systemd package)."""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from harness import dispatch_binary, free_port, wait_for


def write_config(tmp_path, listen="127.0.0.1:0"):
    (tmp_path / "map").write_text("")
    (tmp_path / "state.json").write_text('{"version": 1, "users": {}}\n')
    conf = tmp_path / "usher.conf"
    conf.write_text("[server]\nlisten = %s\nadmin_listen =\n[users]\nmap_file = %s\n"
                    "state_file = %s\nverify_os_users = no\n[mint]\nenabled = no\n"
                    "[timeouts]\nshutdown_drain = 2s\n"
                    % (listen, tmp_path / "map", tmp_path / "state.json"))
    return conf


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(self.path)
        self.s.settimeout(0.2)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.s.recv(4096).decode())
            except socket.timeout:
                return self.messages

    def wait(self, needle, timeout=10.0):
        return wait_for(lambda: any(needle in m for m in self.drain()), timeout=timeout,
                        what="%r on the notify socket (got %r)" % (needle, self.messages))


def test_notify_protocol(tmp_path):
    conf = write_config(tmp_path)
    ns = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=ns.path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)  # no PID: meant for whoever reads it
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen([dispatch_binary(), "--config", str(conf)], env=env, stderr=log)
    try:
        ns.wait("READY=1")
        first = [m for m in ns.messages if "READY=1" in m][0]
        assert "STATUS=connections=0" in first and "users=0" in first, first
        # WATCHDOG=1 at half of 400 ms: several within a second.
        n0 = sum("WATCHDOG=1" in m for m in ns.drain())
        time.sleep(1.0)
        n1 = sum("WATCHDOG=1" in m for m in ns.drain())
        assert n1 - n0 >= 3, ns.messages
        ns.messages.clear()
        p.send_signal(signal.SIGHUP)
        ns.wait("READY=1")
        joined = "\n--\n".join(ns.messages)
        assert joined.index("RELOADING=1") < joined.index("READY=1"), joined
        ns.messages.clear()
        p.send_signal(signal.SIGTERM)
        ns.wait("STOPPING=1")
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    text = (tmp_path / "log").read_text()
    assert "event=reload file=config" in text and "result=ok" in text, text


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"),
                    reason="systemd-socket-activate missing (Debian package systemd)")
def test_socket_activation_replaces_listen(tmp_path):
    configured = free_port()
    conf = write_config(tmp_path, listen="127.0.0.1:%d" % configured)
    passed = free_port()
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen(["systemd-socket-activate", "-l", "127.0.0.1:%d" % passed,
                          dispatch_binary(), "--config", str(conf)], stderr=log)
    try:
        def answered():
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/" % passed, timeout=2)
            except urllib.error.HTTPError as e:
                return e.code  # no identity header: 401, from the dispatcher
            except OSError:
                return None
        assert wait_for(answered, timeout=10, what="a response on the passed socket") == 401
        wait_for(lambda: "from=systemd" in (tmp_path / "log").read_text(), timeout=5,
                 what="listening from=systemd")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", configured), timeout=1).close()
        # The passed socket survives a reload (listeners are never re-bound).
        p.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert answered() == 401
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
