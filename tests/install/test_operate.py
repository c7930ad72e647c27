"""Operating the installed dispatcher under systemd (issue 5's "Done means"):
`systemctl reload` under load with WebSockets open drops nothing; `systemctl
stop` under load finishes within the drain deadline; the notify protocol
(READY, STATUS) as systemd sees it."""

import base64
import http.client
import os
import socket
import struct
import threading
import time

from conftest import IDENTITY, MAPPED, wait_for

SSO = "bob"
DRAIN_S = 5.0  # shutdown_drain in the test config (conftest.config_text)
N_LOAD = 4
N_WS = 6


def map_bob(h):
    h.write_map_atomic(["%s=%s" % (SSO, MAPPED[SSO])])

    def ok():
        try:
            status, body = h.request(SSO)
        except OSError:
            return None
        return status == 200
    wait_for(ok, timeout=10.0, interval=0.1, what="bob's instance through Usher")


def session_cookies(h):
    """The cookies a browser holds after bob's first visit (one mint)."""
    c = http.client.HTTPConnection("127.0.0.1", h.listen_port, timeout=10)
    c.request("GET", "/whoami", headers={IDENTITY: SSO})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200
    jar = {}
    for k, v in r.getheaders():
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            jar[name.strip()] = rest.split(";", 1)[0]
    if not jar:  # already minted by an earlier test: the reuse window hands it out again
        raise AssertionError("no cookies set on a first visit")
    return "; ".join("%s=%s" % kv for kv in jar.items())


class Load:
    """Threads sending GET /whoami as bob over keep-alive connections; counts results."""

    def __init__(self, h, cookie):
        self.h, self.cookie = h, cookie
        self.ok = self.failed = self.retried = 0
        self.errors = []
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(N_LOAD)]

    def _run(self):
        conn, served = None, 0  # served: requests answered on this connection so far
        while not self.stop_flag.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.h.listen_port, timeout=10)
                    served = 0
                conn.request("GET", "/whoami", headers={IDENTITY: SSO, "Cookie": self.cookie})
                r = conn.getresponse()
                r.read()
                served += 1
                good = r.status == 200
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                with self.lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.errors.append("status %d" % r.status)
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                # The server may close an idle keep-alive connection (RFC 9112
                # 9.3.1) just as the next request is sent: a client retries that
                # request on a new connection (browsers and HTTP libraries do),
                # so a close or reset on a connection that has already served
                # requests is a retry, not a failure. On a fresh connection
                # it is a failure.
                reused_close = served > 0 and isinstance(
                    e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                with self.lock:
                    if reused_close:
                        self.retried += 1
                    else:
                        self.failed += 1
                        self.errors.append(repr(e))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(15)


class WebSocket:
    """A minimal RFC 6455 client for the fake t3's /ws echo."""

    def __init__(self, port, cookie):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s: %s\r\nCookie: %s\r\n\r\n"
               % (key, IDENTITY, SSO, cookie))
        self.s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise AssertionError("closed during the upgrade: %r" % head)
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("WebSocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def echo(self, text):
        data = text.encode()
        mask = os.urandom(4)
        hdr = bytes([0x81, 0x80 | len(data)]) + mask
        self.s.sendall(hdr + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        b0, b1 = self._recv_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._recv_exact(2))[0]
        payload = self._recv_exact(n)
        if b0 & 0x0F == 0x8:
            raise ConnectionError("WebSocket close frame")
        return payload.decode(errors="replace")

    def close(self):
        self.s.close()


def test_ready_and_status(host):
    h = host
    map_bob(h)
    assert h.systemctl("show", "-P", "Type", "usher-dispatch.service").stdout.strip() == "notify"
    status = wait_for(lambda: h.systemctl("show", "-P", "StatusText",
                                          "usher-dispatch.service").stdout.strip() or None,
                      timeout=10, what="STATUS=")
    assert "connections=" in status and "users=" in status, status
    assert h.systemctl("show", "-P", "WatchdogUSec", "usher-dispatch.service").stdout.strip() == "20s"


def test_reload_under_load_drops_nothing(host):
    h = host
    map_bob(h)
    cookie = session_cookies(h)
    pid = h.main_pid()
    sockets = [WebSocket(h.listen_port, cookie) for _ in range(N_WS)]
    for i, ws in enumerate(sockets):
        assert ws.echo("before %d" % i) == "before %d" % i
    load = Load(h, cookie).start()
    try:
        time.sleep(0.5)
        conf = h.read("/etc/usher/usher.conf")
        for i in range(3):
            # A runtime setting changes between reloads (and back), as an operator's edit would.
            h.write("/etc/usher/usher.conf", conf.replace("access_log = yes", "access_log = no")
                    if i % 2 == 0 else conf)
            t0 = time.monotonic()
            h.systemctl("reload", "usher-dispatch.service")
            print("reload %d took %.2fs" % (i, time.monotonic() - t0))
            time.sleep(0.4)
        h.write("/etc/usher/usher.conf", conf)
        h.systemctl("reload", "usher-dispatch.service")
        time.sleep(0.3)
    finally:
        load.stop()
    dropped = 0
    for i, ws in enumerate(sockets):
        try:
            if ws.echo("after %d" % i) != "after %d" % i:
                dropped += 1
        except (OSError, ConnectionError):
            dropped += 1
        ws.close()
    print("requests ok=%d failed=%d retried=%d, websockets %d open, %d dropped" % (
        load.ok, load.failed, load.retried, N_WS, dropped))
    assert load.ok > 50, "the load generator hardly ran: %d" % load.ok
    assert load.failed == 0, load.errors[:10]
    assert load.retried == 0, "a reload closed keep-alive connections"
    assert dropped == 0
    assert h.main_pid() == pid, "reload restarted the dispatcher"
    log = h.journal()
    assert log.count("event=reload file=config") >= 4, log[-3000:]
    config_lines = [l for l in log.splitlines() if "event=reload file=config" in l]
    assert all("result=ok" in l for l in config_lines), config_lines


def test_bad_config_reload_keeps_running_config(host):
    h = host
    map_bob(h)
    conf = h.read("/etc/usher/usher.conf")
    try:
        h.write("/etc/usher/usher.conf", conf + "\n[server]\nno_such_key = 1\n")
        h.systemctl("reload", "usher-dispatch.service")
        wait_for(lambda: "result=error" in h.journal(), timeout=5, what="reload error line")
        assert h.request(SSO)[0] == 200
        assert h.systemctl("is-active", "usher-dispatch.service").stdout.strip() == "active"
        # Logs suit journald: the error is an entry of priority err, no ts= of our own.
        errs = h.exec("journalctl", "-q", "-o", "cat", "--no-pager", "-p", "err",
                      "-u", "usher-dispatch.service").stdout
        assert "event=reload file=config" in errs and "result=error" in errs, errs
        assert "event=access" not in errs
        assert not any(l.startswith("ts=") for l in h.journal().splitlines() if "event=" in l)
    finally:
        h.write("/etc/usher/usher.conf", conf)
        h.systemctl("reload", "usher-dispatch.service")


def test_stop_under_load_within_drain(host):
    h = host
    map_bob(h)
    cookie = session_cookies(h)
    sockets = [WebSocket(h.listen_port, cookie) for _ in range(N_WS)]
    load = Load(h, cookie).start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        h.systemctl("stop", "usher-dispatch.service")
        took = time.monotonic() - t0
    finally:
        load.stop()
        for ws in sockets:
            ws.close()
    print("stop under load (%d requests served, %d WebSockets open) took %.2fs; drain %.0fs" % (
        load.ok, N_WS, took, DRAIN_S))
    assert took < DRAIN_S + 1.5, took
    result = h.systemctl("show", "-P", "Result", "usher-dispatch.service").stdout.strip()
    assert result == "success", result
    log = h.journal()
    assert "event=draining" in log
    h.assert_clean_journal()  # it has exited: LeakSanitizer has spoken
    h.systemctl("start", "usher-dispatch.service")
    assert h.systemctl("is-active", "usher-dispatch.service").stdout.strip() == "active"


def test_socket_activation_restart_refuses_nothing(host):
    """usher-dispatch.socket: systemd holds the port, so a restart under load
    loses no request (they wait in the socket's backlog)."""
    h = host
    map_bob(h)
    cookie = session_cookies(h)
    port = h.listen_port + 3
    h.write("/etc/systemd/system/usher-dispatch.socket.d/50-test.conf",
            "[Socket]\nListenStream=\nListenStream=127.0.0.1:%d\n" % port)
    h.systemctl("daemon-reload")
    # systemd refuses to start a socket whose service already runs.
    h.systemctl("stop", "usher-dispatch.service")
    h.systemctl("enable", "--now", "usher-dispatch.socket")
    try:
        h.systemctl("start", "usher-dispatch.service")
        assert "from=systemd" in h.journal()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/whoami", headers={IDENTITY: SSO, "Cookie": cookie})
        assert c.getresponse().status == 200
        c.close()
        load = Load(h, cookie)
        load.h = type("P", (), {"listen_port": port})()  # the socket's port
        load.start()
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            h.systemctl("restart", "usher-dispatch.service")
            took = time.monotonic() - t0
            time.sleep(0.5)
        finally:
            load.stop()
        print("restart with socket activation under load: %.2fs, ok=%d failed=%d retried=%d" % (
            took, load.ok, load.failed, load.retried))
        assert load.failed == 0, load.errors[:10]
        assert load.ok > 20
    finally:
        h.systemctl("stop", "usher-dispatch.service")
        h.systemctl("disable", "--now", "usher-dispatch.socket")
        os.unlink(h.path("/etc/systemd/system/usher-dispatch.socket.d/50-test.conf"))
        h.systemctl("daemon-reload")
        h.systemctl("restart", "usher-dispatch.service")
    assert h.request(SSO)[0] == 200  # back on [server] listen
