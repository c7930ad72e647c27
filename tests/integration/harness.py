"""Process harness and wire-level clients for Usher's integration tests.

Everything binds port 0 and reads the real port back; every wait is a poll
with a deadline; every process started here is stopped by its fixture, even
when the test fails (see conftest.py).
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import backend as backend_mod  # noqa: E402  (pattern helpers, WebSocket framing)

sys.path.insert(0, os.path.dirname(HERE))
from testlib import free_port, parse_logfmt, wait_for  # noqa: E402,F401  (h.wait_for, ...)

PYTHON = "/usr/bin/python3"
DEFAULT_BINARY = "/work/main/build/dispatch/usher-dispatch"
IDENTITY = "X-authentik-username"
MiB = 1024 * 1024


def dispatch_binary():
    return os.environ.get("USHER_DISPATCH") or DEFAULT_BINARY


# --- processes ---------------------------------------------------------------

class Process:
    """A child process whose stderr goes to a file; stop() is idempotent."""

    def __init__(self, argv, log_path, cwd=None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=cwd)
        self.pid = self.proc.pid
        self.stopped_by_us = False

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit status."""
        if self.alive():
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Backend:
    """backend.py as a separate process."""

    def __init__(self, tmpdir, name):
        self.name = name
        self.port_file = os.path.join(tmpdir, "backend-%s.port" % name)
        self.log_file = os.path.join(tmpdir, "backend-%s.jsonl" % name)
        self.proc = Process([PYTHON, os.path.join(HERE, "backend.py"), "--listen", "127.0.0.1:0",
                             "--name", name, "--port-file", self.port_file,
                             "--log", self.log_file],
                            os.path.join(tmpdir, "backend-%s.stderr" % name))
        self.port = int(wait_for(self._read_port, 10, what="backend %s port file" % name))

    def _read_port(self):
        if not self.proc.alive():
            raise RuntimeError("backend %s exited: %s" % (self.name, self.proc.output()))
        try:
            with open(self.port_file) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def records(self, event=None):
        try:
            with open(self.log_file) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return []
        out = []
        for line in lines[:-1]:  # the last piece is "" or a line still being written
            if line:
                rec = json.loads(line)
                if event is None or rec["event"] == event:
                    out.append(rec)
        return out

    def connections(self):
        return len(self.records("connect"))

    def requests(self):
        return self.records("request")

    def bytes_received(self):
        """Bytes received on connections that have closed."""
        return sum(r["bytes_in"] for r in self.records("close"))

    def stop(self):
        self.proc.stop()


class Usher:
    """usher-dispatch with a config, map and state in its own temp dir."""

    def __init__(self, tmpdir, routes=None, map_lines=None, config=None, extra_config="",
                 binary=None):
        """
        routes:    {os_user: port or Backend or None}  (state file entries)
        map_lines: list of map file lines; default: `u=u` for every route
        config:    {section: {key: value or None}} merged over the defaults
        """
        self.dir = tmpdir
        self.binary = binary or dispatch_binary()
        if not os.path.exists(self.binary):
            raise RuntimeError("usher-dispatch binary not found at %s (set USHER_DISPATCH)"
                               % self.binary)
        self.map_file = os.path.join(tmpdir, "user-map")
        self.state_file = os.path.join(tmpdir, "state.json")
        self.config_file = os.path.join(tmpdir, "usher.conf")
        self.log_file = os.path.join(tmpdir, "usher-dispatch.log")
        routes = routes or {}
        if map_lines is None:
            map_lines = ["%s=%s" % (u, u) for u in routes]
        self.write_map(map_lines, atomic=False)
        self.write_state(routes, atomic=False)
        sections = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "users": {"map_file": self.map_file, "state_file": self.state_file,
                      "verify_os_users": "no"},
            "log": {"level": "info", "access_log": "yes"},
            # These backends have no login of their own: nothing to mint.
            "mint": {"enabled": "no"},
            # Bounds teardown when a failing test leaves something open.
            "timeouts": {"shutdown_drain": "2s"},
        }
        for section, kv in (config or {}).items():
            for k, v in kv.items():
                sections.setdefault(section, {})
                if v is None:
                    sections[section].pop(k, None)
                else:
                    sections[section][k] = v
        text = ""
        for section, kv in sections.items():
            if not kv:
                continue
            text += "[%s]\n" % section + "".join("%s = %s\n" % item for item in kv.items()) + "\n"
        with open(self.config_file, "w") as f:
            f.write(text + extra_config)
        self.proc = None
        self.proxy_port = None
        self.admin_port = None

    # --- life cycle -------------------------------------------------------
    def start(self, timeout=10.0):
        self.proc = Process([self.binary, "--config", self.config_file], self.log_file)
        wait_for(self._ready, timeout, what="usher-dispatch event=ready")
        return self

    def _ready(self):
        if not self.proc.alive():
            raise RuntimeError("usher-dispatch exited with %s before event=ready:\n%s"
                               % (self.proc.proc.returncode, self.proc.output()))
        ready = False
        for rec in self.records():
            if rec.get("event") == "listening":
                port = int(rec["addr"].rsplit(":", 1)[1])
                if rec.get("role") == "proxy" and self.proxy_port is None:
                    self.proxy_port = port
                elif rec.get("role") == "admin":
                    self.admin_port = port
            elif rec.get("event") == "ready":
                ready = True
        return ready and self.proxy_port is not None

    def stop(self):
        if self.proc is None:
            return None
        return self.proc.stop(timeout=15)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.alive()

    # --- log --------------------------------------------------------------
    def output(self):
        try:
            with open(self.log_file, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def records(self, event=None, since=0, **fields):
        """Parsed log lines (from line index `since`) matching event and fields."""
        out = []
        lines = self.output().split("\n")
        if lines and lines[-1] != "":
            lines = lines[:-1]  # a line still being written
        for line in lines[since:]:
            rec = parse_logfmt(line)
            if rec is None:
                continue
            if event is not None and rec.get("event") != event:
                continue
            if all(rec.get(k) == str(v) for k, v in fields.items()):
                out.append(rec)
        return out

    def mark(self):
        """An index into the log: records(since=mark) only sees later lines."""
        lines = self.output().split("\n")
        return len(lines) - 1

    def wait_record(self, event, since=0, timeout=5.0, **fields):
        """Waits for a log line with this event and fields; returns it."""
        recs = wait_for(lambda: self.records(event, since, **fields), timeout,
                        what="log event=%s %s" % (event, fields))
        return recs[0]

    # --- map, state, signals ---------------------------------------------
    def write_map(self, lines, atomic=True):
        _write(self.map_file, "".join(line + "\n" for line in lines), atomic)

    def write_state(self, routes, atomic=True):
        users = {}
        for user, target in routes.items():
            if target is None:
                continue
            port = target.port if isinstance(target, Backend) else int(target)
            users[user] = {"kind": "unit", "address": "127.0.0.1", "port": port,
                           "unit": "t3-serve@%s.service" % user}
        _write(self.state_file, json.dumps({"version": 1, "users": users}, indent=1) + "\n",
               atomic)

    def sighup(self):
        self.proc.signal(signal.SIGHUP)

    # --- process facts ----------------------------------------------------
    def memory(self):
        """(VmRSS, VmHWM) in bytes."""
        vals = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    vals[key] = int(rest.split()[0]) * 1024
        return vals["VmRSS"], vals["VmHWM"]

    def reset_peak_rss(self):
        """Resets VmHWM to the current RSS (Linux clear_refs 5); False if unsupported."""
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    # --- clients ----------------------------------------------------------
    def connect(self, **kw):
        return HttpConn(self.proxy_port, **kw)

    def get(self, target, user="alice", headers=(), method="GET", body=None, **kw):
        """One request as `user` on a fresh connection (closed afterwards)."""
        hdrs = ([(IDENTITY, user)] if user is not None else []) + list(headers)
        with self.connect(**kw) as c:
            c.request(method, target, hdrs, body=body)
            return c.response(method)

    def admin_get(self, target):
        with HttpConn(self.admin_port) as c:
            c.request("GET", target, [])
            return c.response()

    def metrics(self):
        """{'name{labels}': float} from /metrics."""
        r = self.admin_get("/metrics")
        assert r.status == 200, r
        out = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            out[name.replace(" ", "")] = float(value)
        return out


def _write(path, text, atomic):
    if atomic:
        tmp = path + ".tmp-%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    else:
        # In place: truncate and rewrite the same inode (editors and `>` do this).
        with open(path, "w") as f:
            f.write(text)


# --- HTTP/1.1 client over a raw socket ---------------------------------------

class Response:
    def __init__(self, version, status, reason, headers, body, interim):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers      # [(name, value)] as received
        self.body = body            # bytes, or None when streamed to a sink
        self.interim = interim      # [Response] of 1xx responses before this one
        self.body_bytes = 0
        self.chunked = False

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self):
        return (self.body or b"").decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        body = self.body if self.body is None or len(self.body) < 300 else self.body[:300] + b"..."
        return "<Response %s %s %r headers=%r body=%r>" % (self.status, self.reason, self.version,
                                                         self.headers, body)


class ConnectionClosed(Exception):
    pass


# Every client socket a test opens, so fixtures can close what a failing test
# left open (an open connection would otherwise hold up the daemon's drain).
OPEN_CONNS = weakref.WeakSet()


def close_all_connections():
    for c in list(OPEN_CONNS):
        c.close()


class HttpConn:
    """A client connection with exact control of the bytes sent."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10.0):
        self.port = port
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        OPEN_CONNS.add(self)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, t):
        self.sock.settimeout(t)

    # --- sending ----------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, headers=(), body=None, chunked=False, host=True,
                version="HTTP/1.1", send_body=True):
        """Sends a request. `body`: bytes or an iterable of byte pieces; with
        chunked=True each piece becomes one chunk, else Content-Length is set
        from `body` when it is bytes (give it in `headers` for an iterable)."""
        hdrs = list(headers)
        if host and not any(k.lower() == "host" for k, _ in hdrs):
            hdrs.insert(0, ("Host", "%s:%d" % (self.host, self.port)))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        elif isinstance(body, (bytes, bytearray)) and not any(
                k.lower() == "content-length" for k, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        head = "%s %s %s\r\n" % (method, target, version)
        head += "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
        self.send(head.encode("latin-1"))
        if send_body and body is not None:
            self.send_body(body, chunked)

    def send_body(self, body, chunked=False):
        pieces = [body] if isinstance(body, (bytes, bytearray)) else body
        for piece in pieces:
            if chunked:
                if len(piece):
                    self.send(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            else:
                self.send(piece)
        if chunked:
            self.send(b"0\r\n\r\n")

    # --- receiving --------------------------------------------------------
    def _fill(self):
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed by peer (%d bytes unread)" % len(self.buf))
        self.buf += data

    def _line(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def _take(self, n):
        if not self.buf:
            self._fill()
        n = min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[:i])
                del self.buf[:i + 4]
                break
            self._fill()
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status, _, reason = rest.partition(" ")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
        return version, int(status), reason, headers

    def response(self, method="GET", sink=None):
        """Reads one final response (collecting 1xx ones in .interim). The body
        goes to `sink(piece)` when given (then .body is None), else to .body."""
        interim = []
        while True:
            version, status, reason, headers = self.read_head()
            r = Response(version, status, reason, headers, None, interim)
            if 100 <= status < 200 and status != 101:
                interim.append(r)
                continue
            break
        pieces = []
        out = sink or pieces.append

        def emit(p):
            r.body_bytes += len(p)
            out(p)

        te = [t.strip().lower() for v in r.header_all("transfer-encoding") for t in v.split(",")]
        if method == "HEAD" or status in (101, 204, 304):
            pass
        elif te and te[-1] == "chunked":
            r.chunked = True
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                while size:
                    p = self._take(size)
                    size -= len(p)
                    emit(p)
                if self._line() != b"":
                    raise ValueError("bad chunk framing from server")
        elif r.header("content-length") is not None:
            remaining = int(r.header("content-length"))
            while remaining:
                p = self._take(remaining)
                remaining -= len(p)
                emit(p)
        else:
            while True:
                try:
                    emit(self._take(1 << 20))
                except ConnectionClosed:
                    break
        if sink is None:
            r.body = b"".join(pieces)
        return r

    def closed_within(self, timeout=2.0):
        """True when the peer closes (EOF or reset) within `timeout` seconds.
        Bytes that arrive meanwhile are kept in .buf."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                try:
                    self._fill()
                except ConnectionClosed:
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True


# --- WebSocket client ---------------------------------------------------------

class WsFrame:
    def __init__(self, fin, opcode, payload, masked):
        self.fin, self.opcode, self.payload, self.masked = fin, opcode, payload, masked

    @property
    def close_code(self):
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    def __repr__(self):
        p = self.payload if len(self.payload) < 64 else self.payload[:64] + b"..."
        return "<WsFrame fin=%d op=%d masked=%d len=%d %r>" % (
            self.fin, self.opcode, self.masked, len(self.payload), p)


class WsClient:
    """A WebSocket client on an HttpConn, sending masked frames as RFC 6455 requires."""

    def __init__(self, conn, response):
        self.conn = conn
        self.response = response

    @classmethod
    def open(cls, port, user="alice", target="/ws", headers=(), expect=101, source=None):
        conn = HttpConn(port, source=source)
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = ([(IDENTITY, user)] if user is not None else []) + [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"),
            ("Origin", "http://127.0.0.1:%d" % port)] + list(headers)
        conn.request("GET", target, hdrs)
        r = conn.response()
        if expect is not None:
            assert r.status == expect, r
        if r.status == 101:
            assert r.header("sec-websocket-accept") == backend_mod.ws_accept(key), r
        return cls(conn, r)

    def send_frame(self, opcode, payload=b"", fin=True, mask=True):
        self.conn.send(backend_mod.ws_frame(opcode, payload, fin=fin, mask=mask))

    def send_text(self, text):
        self.send_frame(1, text.encode())

    def send_binary(self, data):
        self.send_frame(2, data)

    def recv_frame(self, timeout=5.0):
        self.conn.settimeout(timeout)
        c = self.conn

        def exact(n):
            while len(c.buf) < n:
                c._fill()
            data = bytes(c.buf[:n])
            del c.buf[:n]
            return data

        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(exact(2), "big")
        elif n == 127:
            n = int.from_bytes(exact(8), "big")
        key = exact(4) if b1 & 0x80 else None
        payload = exact(n)
        if key:
            payload = backend_mod.ws_mask(payload, key)
        return WsFrame(b0 >> 7, b0 & 0x0F, payload, bool(key))

    def close(self, code=1000, reason=b""):
        self.send_frame(8, code.to_bytes(2, "big") + reason)

    def shutdown(self):
        self.conn.close()
