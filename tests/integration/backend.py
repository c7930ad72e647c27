#!/usr/bin/python3
"""A per-user test backend for Usher's integration tests and the demo.

    /usr/bin/python3 backend.py --listen 127.0.0.1:0 --name alice \
        --port-file F --log F

Raw sockets, one thread per connection, HTTP/1.1 keep-alive and pipelining.
Exact control over the wire matters more here than completeness: the tests
must be able to tell precisely what reached a backend, so every accepted
connection and every raw request head is appended to the --log file as one
JSON line ({"event": "connect" | "request" | "complete" | "close" | ...}).

Endpoints
  GET  /                 a readable text page: whose backend this is, and the
                         request headers it saw (the demo shows this page)
  ANY  /whoami           JSON {name, pid, uid, conn_id, conn_requests, headers,
                         method, target, body_bytes}
  POST|PUT /upload       reads the body streaming (Content-Length or chunked),
                         answers JSON {bytes, sha256}; ?stall_ms=N first waits
  GET  /bytes?n=N        N bytes of pattern() with Content-Length, streamed
  GET  /chunked?n=N      the same with Transfer-Encoding: chunked
  GET  /eof?n=N          the same delimited by closing the connection
  GET  /stats            JSON {name, connections, requests}
  GET  /status/NNN       that status; no body for 1xx, 204 and 304
  GET  /delay?ms=N       waits N ms, then answers like /whoami
  GET  /hop              a response carrying hop-by-hop headers
  GET  /bodiless?code=204|304&framing=te|cl  a bodiless status whose head
                         still names chunked or a Content-Length
  GET  /overrun          Content-Length: 5 followed by a whole second response
  GET  /early-hints      103 Early Hints, then 200
  GET  /bad-response?kind=K  a malformed response (cl_te, two_cl, status,
                         garbage, bare_lf, huge_head), then close
  GET  /hangup           closes the connection without answering
  GET  /linger-close     answers (keep-alive) and then closes the connection
  ANY  /early-reply      403 before reading the body (no 100 Continue), then
                         drains the body
  GET  /ws               WebSocket echo (RFC 6455): text and binary messages
                         (fragmented ones reassembled), ping -> pong with the
                         same payload, a close frame is echoed with its code
  HEAD anything          the GET headers, no body
An `Expect: 100-continue` request with a body gets `HTTP/1.1 100 Continue`
before the body is read. Every response carries `X-Backend-Name`.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 1 << 20

# The download pattern: byte i of a body is i % 251 (a prime, so that no
# chunk or buffer size lines up with it and a dropped or repeated piece
# changes the digest).
PATTERN_MOD = 251
_PATTERN = bytes(i % PATTERN_MOD for i in range(65536 + PATTERN_MOD))


def pattern_piece(offset, length):
    """`length` (<= 65536) pattern bytes starting at body offset `offset`."""
    start = offset % PATTERN_MOD
    return memoryview(_PATTERN)[start:start + length]


def pattern_pieces(n, sizes=(65536,)):
    """The first n pattern bytes as successive pieces, cycling through `sizes`."""
    offset = 0
    i = 0
    while offset < n:
        length = min(sizes[i % len(sizes)], n - offset, 65536)
        yield pattern_piece(offset, length)
        offset += length
        i += 1


def pattern_sha256(n):
    h = hashlib.sha256()
    for piece in pattern_pieces(n):
        h.update(piece)
    return h.hexdigest()


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + WS_GUID).digest()).decode()


class PeerClosed(Exception):
    pass


class BadRequest(Exception):
    pass


class Request:
    def __init__(self, raw_head):
        self.raw_head = raw_head
        text = raw_head.decode("latin-1")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise BadRequest("bad request line")
        self.method, self.target, self.version = parts
        self.headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            self.headers.append((name, value.strip(" \t")))
        url = urllib.parse.urlsplit(self.target)
        self.path = url.path
        self.query = urllib.parse.parse_qs(url.query)

    def get(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def tokens(self, name):
        out = []
        for k, v in self.headers:
            if k.lower() == name.lower():
                out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out

    def qint(self, key, default=0):
        try:
            return int(self.query.get(key, [default])[0])
        except ValueError:
            raise BadRequest("bad %s" % key)

    @property
    def chunked(self):
        te = self.tokens("transfer-encoding")
        return bool(te) and te[-1] == "chunked"

    @property
    def content_length(self):
        v = self.get("content-length")
        return int(v) if v is not None else 0

    @property
    def has_body(self):
        return self.chunked or self.content_length > 0

    @property
    def keep_alive(self):
        conn = self.tokens("connection")
        if "close" in conn:
            return False
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return True


class Backend:
    def __init__(self, name, log_path):
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_path else None

    def log(self, **record):
        if self.log_fd is None:
            return
        record.setdefault("ts", time.time())
        record["backend"] = self.name
        # One write(2) per line on an O_APPEND fd: readers never see a torn line
        # interleaved with another thread's.
        os.write(self.log_fd, (json.dumps(record) + "\n").encode())

    def serve(self, sock):
        while True:
            conn, peer = sock.accept()
            with self.lock:
                self.connections += 1
                conn_id = self.connections
            self.log(event="connect", conn_id=conn_id, peer="%s:%d" % peer[:2])
            threading.Thread(target=Connection(self, conn, conn_id).run, daemon=True).start()


class Connection:
    def __init__(self, backend, sock, conn_id):
        self.b = backend
        self.sock = sock
        self.conn_id = conn_id
        self.buf = bytearray()
        self.requests = 0
        self.bytes_in = 0
        self.trailers = []

    # --- input -----------------------------------------------------------
    def fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise PeerClosed()
        self.bytes_in += len(data)
        self.buf += data

    def read_head(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end + 4])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("head too large")
            self.fill()

    def read_line(self, limit=65536):
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self.fill()

    def read_some(self, limit):
        if not self.buf:
            self.fill()
        n = min(limit, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def body_pieces(self, req):
        """Yields the decoded request body in pieces as it arrives."""
        if req.chunked:
            while True:
                line = self.read_line()
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadRequest("bad chunk size %r" % size_text)
                if size == 0:
                    while True:
                        line = self.read_line()
                        if line == b"":
                            return
                        self.trailers.append(line.decode("latin-1"))
                while size:
                    piece = self.read_some(size)
                    size -= len(piece)
                    yield piece
                if self.read_line() != b"":
                    raise BadRequest("chunk data not followed by CRLF")
        else:
            remaining = req.content_length
            while remaining:
                piece = self.read_some(remaining)
                remaining -= len(piece)
                yield piece

    # --- output ----------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def head_bytes(self, status, reason, headers):
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines += ["%s: %s" % kv for kv in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, req, status, reason, body=b"", ctype="text/plain; charset=utf-8",
                extra=(), no_body=False):
        headers = [("X-Backend-Name", self.b.name)]
        if not no_body:
            headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        headers += list(extra)
        if not req.keep_alive:
            headers.append(("Connection", "close"))
        out = self.head_bytes(status, reason, headers)
        if req.method != "HEAD" and not no_body:
            out += body
        self.send(out)

    def respond_json(self, req, obj, status=200, reason="OK"):
        self.respond(req, status, reason, (json.dumps(obj) + "\n").encode(), "application/json")

    # --- dispatch --------------------------------------------------------
    def run(self):
        close_reason = "eof"
        try:
            while True:
                head = self.read_head()
                req = Request(head)
                self.requests += 1
                with self.b.lock:
                    self.b.requests += 1
                self.b.log(event="request", conn_id=self.conn_id, conn_request=self.requests,
                           method=req.method, target=req.target,
                           head=head.decode("latin-1"))
                if (req.get("expect", "").lower() == "100-continue" and req.has_body
                        and req.path != "/early-reply"):
                    self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                if self.handle(req):  # True: this connection is done
                    close_reason = "handler_done"
                    return
                if not req.keep_alive:
                    close_reason = "connection_close"
                    return
        except PeerClosed:
            pass
        except BadRequest as e:
            close_reason = "bad_request: %s" % e
            self.b.log(event="error", conn_id=self.conn_id, error=str(e))
            try:
                self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
        except OSError as e:
            close_reason = "oserror: %s" % e
        finally:
            self.b.log(event="close", conn_id=self.conn_id, requests=self.requests,
                       bytes_in=self.bytes_in, reason=close_reason)
            try:
                self.sock.close()
            except OSError:
                pass

    def complete(self, req, body_bytes):
        self.b.log(event="complete", conn_id=self.conn_id, method=req.method,
                   target=req.target, body_bytes=body_bytes, trailers=self.trailers)
        self.trailers = []

    def handle(self, req):
        path = req.path
        if path == "/upload" and req.method in ("POST", "PUT"):
            # ?stall_ms=N: a backend that is slow to start reading the body
            # (tests that the proxy applies backpressure instead of buffering).
            time.sleep(req.qint("stall_ms") / 1000.0)
            h = hashlib.sha256()
            n = 0
            for piece in self.body_pieces(req):
                h.update(piece)
                n += len(piece)
            self.complete(req, n)
            self.respond_json(req, {"name": self.b.name, "bytes": n, "sha256": h.hexdigest(),
                                    "conn_id": self.conn_id})
            return False

        if path == "/early-reply":
            # A final answer before reading the body (an app refusing an
            # upload), then the body is drained to keep the connection usable.
            self.respond(req, 403, "Forbidden", b"early reply\n")
            body_bytes = sum(len(p) for p in self.body_pieces(req))
            self.complete(req, body_bytes)
            return False

        # Every other endpoint ignores the body, but must consume it.
        body_bytes = sum(len(p) for p in self.body_pieces(req))
        self.complete(req, body_bytes)

        if path == "/ws":
            return self.websocket(req)
        if path == "/":
            lines = ["Hello from %s's backend (uid %d)" % (self.b.name, os.getuid()), "",
                     "You asked for: %s %s" % (req.method, req.target), "",
                     "Request headers as this backend received them:"]
            lines += ["  %s: %s" % kv for kv in req.headers]
            self.respond(req, 200, "OK", ("\n".join(lines) + "\n").encode())
        elif path in ("/whoami", "/delay"):
            if path == "/delay":
                time.sleep(req.qint("ms") / 1000.0)
            self.respond_json(req, {
                "name": self.b.name, "pid": os.getpid(), "uid": os.getuid(),
                "conn_id": self.conn_id, "conn_requests": self.requests,
                "headers": [list(kv) for kv in req.headers],
                "method": req.method, "target": req.target, "body_bytes": body_bytes,
            })
        elif path == "/stats":
            with self.b.lock:
                stats = {"name": self.b.name, "connections": self.b.connections,
                         "requests": self.b.requests}
            self.respond_json(req, stats)
        elif path in ("/bytes", "/chunked", "/eof"):
            self.download(req, path, req.qint("n"))
            if path == "/eof":
                return True  # the connection is done
        elif path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                code = 400
            if code in (204, 304):
                self.respond(req, code, "No Content" if code == 204 else "Not Modified",
                             no_body=True)
            else:
                self.respond(req, code, "Status",
                             ("status %d from %s\n" % (code, self.b.name)).encode())
        elif path == "/overrun":
            # More bytes than the framing says: a desync attempt by a backend.
            self.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Backend-Name: smuggled\r\n"
                      b"\r\nsmuggled")
        elif path == "/early-hints":
            self.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self.respond(req, 200, "OK", b"after hints\n")
        elif path == "/bad-response":
            kind = req.query.get("kind", [""])[0]
            self.send({
                "cl_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "two_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                "status": b"HTTP/1.1 2000 Weird\r\nContent-Length: 0\r\n\r\n",
                "garbage": b"this is not http\r\n\r\n",
                "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
                "huge_head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200000 + b"\r\n"
                             b"Content-Length: 0\r\n\r\n",
            }.get(kind, b"HTTP/1.1 500 Unknown kind\r\nContent-Length: 0\r\n\r\n"))
            return True  # the connection is done
        elif path == "/hangup":
            return True  # close without any response
        elif path == "/linger-close":
            # Answers as if keeping the connection, then closes it (a backend's
            # own keep-alive timeout racing the proxy's pool).
            self.respond(req, 200, "OK", b"bye\n")
            return True
        elif path == "/bodiless":
            # A 204 or 304 whose head names framing anyway; it still has no body
            # (RFC 9110 §15.3.5, §15.4.5).
            code = req.qint("code", 204)
            framing = {"te": "Transfer-Encoding: chunked", "cl": "Content-Length: 1000"}[
                req.query.get("framing", ["te"])[0]]
            self.send(b"HTTP/1.1 %d %s\r\nX-Backend-Name: %s\r\n%s\r\n\r\n" % (
                code, b"No Content" if code == 204 else b"Not Modified",
                self.b.name.encode(), framing.encode()))
        elif path == "/hop":
            self.respond(req, 200, "OK", b"hop\n", extra=[
                ("Connection", "X-Backend-Secret"), ("X-Backend-Secret", "leaked"),
                ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                ("X-Backend-Public", "fine")])
        else:
            self.respond(req, 404, "Not Found", b"no such endpoint\n")
        return False

    def download(self, req, path, n):
        headers = [("X-Backend-Name", self.b.name), ("Content-Type", "application/octet-stream")]
        if path == "/bytes":
            headers.append(("Content-Length", str(n)))
        elif path == "/chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        if path == "/eof" or not req.keep_alive:
            headers.append(("Connection", "close"))
        self.send(self.head_bytes(200, "OK", headers))
        if req.method == "HEAD":
            return
        if path == "/chunked":
            # Uneven chunk sizes, including tiny ones, so that chunk boundaries
            # fall everywhere relative to the proxy's reads.
            for piece in pattern_pieces(n, sizes=(65536, 1, 40000, 13, 65536, 4096)):
                self.send(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            self.send(b"0\r\n\r\n")
        else:
            for piece in pattern_pieces(n):
                self.send(piece)

    # --- WebSocket -------------------------------------------------------
    def websocket(self, req):
        key = req.get("sec-websocket-key")
        if (req.method != "GET" or "websocket" not in req.tokens("upgrade")
                or "upgrade" not in req.tokens("connection") or not key
                or req.get("sec-websocket-version") != "13"):
            self.respond(req, 400, "Bad Request", b"not a WebSocket handshake\n")
            return False
        extra = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                 ("Sec-WebSocket-Accept", ws_accept(key)), ("X-Backend-Name", self.b.name)]
        proto = req.tokens("sec-websocket-protocol")
        if proto:
            extra.append(("Sec-WebSocket-Protocol", proto[0]))
        self.send(self.head_bytes(101, "Switching Protocols", extra))
        self.b.log(event="ws_open", conn_id=self.conn_id)
        reason = "eof"
        try:
            reason = self.ws_echo()
        except PeerClosed:
            pass
        finally:
            self.b.log(event="ws_end", conn_id=self.conn_id, reason=reason)
        return True

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def ws_read_frame(self):
        b0, b1 = self.read_exact(2)
        fin, opcode, masked, length = b0 >> 7, b0 & 0x0F, b1 >> 7, b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self.read_exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self.read_exact(8), "big")
        if b0 & 0x70:
            return fin, opcode, masked, None  # reserved bits: protocol error
        key = self.read_exact(4) if masked else None
        payload = self.read_exact(length)
        if masked:
            payload = ws_mask(payload, key)
        return fin, opcode, masked, payload

    def ws_send(self, opcode, payload, fin=True):
        self.send(ws_frame(opcode, payload, fin=fin, mask=False))

    def ws_echo(self):
        msg_op = None
        parts = []
        while True:
            fin, op, masked, payload = self.ws_read_frame()
            # RFC 6455 §5.1: a server must close on an unmasked client frame.
            if not masked or payload is None:
                self.ws_send(8, (1002).to_bytes(2, "big"))
                return "protocol_error"
            if op >= 8:
                if not fin or len(payload) > 125:
                    self.ws_send(8, (1002).to_bytes(2, "big"))
                    return "protocol_error"
                if op == 9:
                    self.ws_send(10, payload)
                elif op == 8:
                    self.ws_send(8, payload)  # echo code and reason
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.b.log(event="ws_close", conn_id=self.conn_id, code=code)
                    return "close"
                elif op != 10:
                    self.ws_send(8, (1002).to_bytes(2, "big"))
                    return "protocol_error"
                continue
            if op in (1, 2):
                if msg_op is not None:
                    self.ws_send(8, (1002).to_bytes(2, "big"))
                    return "protocol_error"
                if fin:
                    self.ws_send(op, payload)
                else:
                    msg_op, parts = op, [payload]
            elif op == 0:
                if msg_op is None:
                    self.ws_send(8, (1002).to_bytes(2, "big"))
                    return "protocol_error"
                parts.append(payload)
                if fin:
                    self.ws_send(msg_op, b"".join(parts))
                    msg_op, parts = None, []
            else:
                self.ws_send(8, (1002).to_bytes(2, "big"))
                return "protocol_error"


def ws_mask(payload, key):
    if not payload:
        return b""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(opcode, payload, fin=True, mask=True, key=None, rsv=0):
    """One WebSocket frame (RFC 6455 §5.2)."""
    payload = bytes(payload)
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head.append(m | n)
    elif n < 65536:
        head.append(m | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(m | 127)
        head += n.to_bytes(8, "big")
    if mask:
        key = key if key is not None else os.urandom(4)
        return bytes(head) + key + ws_mask(payload, key)
    return bytes(head) + payload


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="address:port (port 0: any)")
    ap.add_argument("--name", required=True, help="whose backend this is")
    ap.add_argument("--port-file", help="write the bound port here (atomically)")
    ap.add_argument("--log", help="append JSON lines about connections and requests here")
    args = ap.parse_args()

    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    bound = sock.getsockname()[1]
    backend = Backend(args.name, args.log)
    backend.log(event="listening", port=bound, pid=os.getpid())
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % bound)
        os.rename(tmp, args.port_file)
    print("backend %s listening on %s:%d" % (args.name, host, bound), file=sys.stderr, flush=True)
    try:
        backend.serve(sock)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
