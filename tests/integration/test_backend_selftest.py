"""The test tools themselves, without usher-dispatch: the backend and the raw
clients must be right before a failure through the proxy can be blamed on it."""

import hashlib
import os

import pytest

from harness import MiB, HttpConn, WsClient, backend_mod


@pytest.fixture
def alice(start_backend):
    return start_backend("alice")


def test_whoami_and_connection_accounting(alice):
    with HttpConn(alice.port) as c:
        for i in range(3):
            c.request("GET", "/whoami", [("X-Test", "v%d" % i)])
            r = c.response()
            assert r.status == 200
            j = r.json()
            assert j["name"] == "alice" and j["conn_requests"] == i + 1
            assert ["X-Test", "v%d" % i] in j["headers"]
    assert alice.connections() == 1
    assert [r["target"] for r in alice.requests()] == ["/whoami"] * 3
    assert "X-Test: v0" in alice.requests()[0]["head"]


def test_pipelined_requests(alice):
    with HttpConn(alice.port) as c:
        c.send(b"GET /whoami?a HTTP/1.1\r\nHost: x\r\n\r\nGET /whoami?b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().json()["target"] == "/whoami?a"
        assert c.response().json()["target"] == "/whoami?b"


def test_demo_page(alice):
    with HttpConn(alice.port) as c:
        c.request("GET", "/", [("X-Forwarded-User", "alice")])
        r = c.response()
    assert r.status == 200
    assert "Hello from alice's backend (uid %d)" % os.getuid() in r.text
    assert "X-Forwarded-User: alice" in r.text


@pytest.mark.parametrize("chunked", [False, True])
def test_upload(alice, chunked):
    n = 3 * MiB + 17
    with HttpConn(alice.port) as c:
        c.request("POST", "/upload", [] if chunked else [("Content-Length", str(n))],
                  body=backend_mod.pattern_pieces(n, sizes=(1000, 65536, 1)), chunked=chunked)
        j = c.response().json()
    assert j == {"name": "alice", "bytes": n, "sha256": backend_mod.pattern_sha256(n), "conn_id": 1}
    assert alice.records("complete")[0]["body_bytes"] == n


def test_expect_continue(alice):
    with HttpConn(alice.port) as c:
        c.request("PUT", "/upload", [("Content-Length", "5"), ("Expect", "100-continue")],
                  body=b"hello", send_body=False)
        version, status, _, _ = c.read_head()
        assert status == 100
        c.send(b"hello")
        r = c.response()
    assert r.json()["sha256"] == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("path", ["/bytes", "/chunked", "/eof"])
def test_download(alice, path):
    n = 2 * MiB + 5
    h = hashlib.sha256()
    with HttpConn(alice.port) as c:
        c.request("GET", "%s?n=%d" % (path, n))
        r = c.response(sink=h.update)
    assert r.body_bytes == n and h.hexdigest() == backend_mod.pattern_sha256(n)
    assert r.chunked == (path == "/chunked")


def test_head_204_304(alice):
    with HttpConn(alice.port) as c:
        c.request("HEAD", "/bytes?n=1000")
        r = c.response("HEAD")
        assert r.header("content-length") == "1000" and r.body == b""
        for code in (204, 304):
            c.request("GET", "/status/%d" % code)
            r = c.response()
            assert r.status == code and r.body == b""
        c.request("GET", "/stats")
        assert c.response().json()["requests"] == 4


def test_websocket_echo(alice):
    ws = WsClient.open(alice.port, user=None)
    ws.send_text("hi")
    f = ws.recv_frame()
    assert (f.fin, f.opcode, f.payload, f.masked) == (1, 1, b"hi", False)
    big = os.urandom(MiB)
    ws.send_frame(2, big[:1000], fin=False)
    ws.send_frame(9, b"ping!")
    ws.send_frame(0, big[1000:], fin=True)
    f = ws.recv_frame()
    assert (f.opcode, f.payload) == (10, b"ping!")
    f = ws.recv_frame()
    assert f.opcode == 2 and f.payload == big
    ws.close(4001, b"bye")
    f = ws.recv_frame()
    assert (f.opcode, f.close_code, f.payload[2:]) == (8, 4001, b"bye")
    assert ws.conn.closed_within(2)
    ws.shutdown()


def test_websocket_refuses_unmasked(alice):
    ws = WsClient.open(alice.port, user=None)
    ws.send_frame(1, b"x", mask=False)
    f = ws.recv_frame()
    assert (f.opcode, f.close_code) == (8, 1002)
    ws.shutdown()
