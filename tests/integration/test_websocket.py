"""WebSocket through the proxy: the Upgrade is relayed, then bytes are spliced
both ways unchanged (frames asserted exactly)."""

import asyncio
import base64
import os
import socket

import websockets

from backend import ws_frame
from harness import IDENTITY, MiB, HttpConn, WsClient, wait_for


def test_upgrade_reaches_the_users_backend(usher, alice_bob):
    for user in ("alice", "bob"):
        ws = WsClient.open(usher.proxy_port, user=user)
        assert ws.response.header("X-Backend-Name") == user
        assert ws.response.header("upgrade").lower() == "websocket"
        ws.shutdown()
    head = alice_bob["bob"].requests()[0]["head"]
    lower = head.lower()
    assert "upgrade: websocket" in lower and "sec-websocket-key:" in lower
    assert "x-forwarded-user: bob" in lower
    assert IDENTITY.lower() not in lower


def test_text_binary_ping_and_close_are_relayed_exactly(usher):
    ws = WsClient.open(usher.proxy_port, user="alice")
    ws.send_text("hello, alice")
    f = ws.recv_frame()
    assert (f.fin, f.opcode, f.payload, f.masked) == (1, 1, b"hello, alice", False), f

    data = bytes(range(256)) * 4
    ws.send_binary(data)
    f = ws.recv_frame()
    assert (f.fin, f.opcode, f.payload) == (1, 2, data), f

    ws.send_frame(9, b"are you there")
    f = ws.recv_frame()
    assert (f.fin, f.opcode, f.payload) == (1, 10, b"are you there"), f

    ws.send_frame(1, b"", fin=True)
    f = ws.recv_frame()
    assert (f.opcode, f.payload) == (1, b""), f

    ws.close(4001, b"done here")
    f = ws.recv_frame()
    assert (f.opcode, f.close_code, f.payload[2:]) == (8, 4001, b"done here"), f
    assert ws.conn.closed_within(3), "the proxy kept the connection after the close handshake"
    ws.shutdown()


def test_one_mib_messages_whole_and_fragmented(usher):
    ws = WsClient.open(usher.proxy_port, user="bob")
    big = os.urandom(MiB)
    ws.send_binary(big)
    f = ws.recv_frame(timeout=20)
    assert f.opcode == 2 and f.fin and f.payload == big
    # Fragmented, with a control frame in the middle (allowed by RFC 6455 §5.4).
    text = ("0123456789abcdef" * (MiB // 16)).encode()
    ws.send_frame(1, text[:1000], fin=False)
    ws.send_frame(0, text[1000:500000], fin=False)
    ws.send_frame(9, b"mid")
    ws.send_frame(0, text[500000:], fin=True)
    f = ws.recv_frame(timeout=20)
    assert (f.opcode, f.payload) == (10, b"mid"), f
    f = ws.recv_frame(timeout=20)
    assert f.opcode == 1 and f.payload == text
    ws.close(1000)
    assert ws.recv_frame().close_code == 1000
    ws.shutdown()


def test_split_writes_are_spliced(usher):
    ws = WsClient.open(usher.proxy_port, user="alice")
    frame = ws_frame(1, b"byte by byte")
    for i in range(len(frame)):
        ws.conn.send(frame[i:i + 1])
    f = ws.recv_frame()
    assert f.payload == b"byte by byte"
    ws.shutdown()


def test_bytes_sent_with_the_upgrade_request_are_not_lost(usher):
    # A client may send its first frame right behind the handshake.
    c = HttpConn(usher.proxy_port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = ("GET /ws HTTP/1.1\r\nHost: x\r\n%s: alice\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (IDENTITY, key)).encode()
    c.send(head + ws_frame(1, b"eager"))
    r = c.response()
    assert r.status == 101, r
    ws = WsClient(c, r)
    assert ws.recv_frame().payload == b"eager"
    ws.shutdown()


def test_with_the_websockets_library(usher):
    # An independent client implementation, as a cross-check of ours.
    async def run():
        async with websockets.connect(
                "ws://127.0.0.1:%d/ws" % usher.proxy_port,
                extra_headers={IDENTITY: "bob"}, max_size=4 * MiB) as ws:
            await ws.send("hi from the library")
            assert await ws.recv() == "hi from the library"
            payload = os.urandom(300000)
            await ws.send(payload)
            assert await ws.recv() == payload
            pong = await ws.ping(b"lib")
            await asyncio.wait_for(pong, 5)
            await ws.close(code=4002)
            return ws.close_code
    assert asyncio.run(asyncio.wait_for(run(), 20)) == 4002


def test_non_101_answer_to_an_upgrade_is_a_normal_response(usher):
    ws = WsClient.open(usher.proxy_port, user="alice", target="/status/403", expect=None)
    r = ws.response
    assert r.status == 403, r
    assert r.body == b"status 403 from alice\n", r
    # The connection is not left in splice mode: it either serves the next
    # request as HTTP or is closed cleanly.
    c = ws.conn
    try:
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        r2 = c.response()
    except Exception:
        assert c.eof and c.buf == b"", "garbage after a refused upgrade: %r" % bytes(c.buf)
    else:
        assert r2.status == 200 and r2.json()["name"] == "alice", r2
    c.close()


def test_upgrade_without_identity_is_refused_before_the_backend(usher, alice_bob):
    ws = WsClient.open(usher.proxy_port, user=None, expect=401)
    assert ws.response.status == 401
    ws.shutdown()
    ws = WsClient.open(usher.proxy_port, user="mallory", expect=403)
    ws.shutdown()
    assert alice_bob["alice"].connections() == 0 and alice_bob["bob"].connections() == 0


def test_websockets_active_metric(usher):
    ws = WsClient.open(usher.proxy_port, user="alice")
    wait_for(lambda: usher.metrics().get("usher_websockets_active") == 1, 3,
             what="usher_websockets_active == 1")
    ws.close(1000)
    assert ws.recv_frame().opcode == 8
    ws.shutdown()
    wait_for(lambda: usher.metrics().get("usher_websockets_active") == 0, 3,
             what="usher_websockets_active == 0")


def test_backend_closing_first_closes_the_client(usher, alice_bob):
    ws = WsClient.open(usher.proxy_port, user="alice")
    # An unmasked frame makes the backend close with 1002 and hang up.
    ws.send_frame(1, b"unmasked", mask=False)
    f = ws.recv_frame()
    assert (f.opcode, f.close_code) == (8, 1002), f
    assert ws.conn.closed_within(3)
    ws.shutdown()


def test_client_vanishing_closes_the_backend_side(usher, alice_bob):
    ws = WsClient.open(usher.proxy_port, user="alice")
    ws.send_text("x")
    assert ws.recv_frame().payload == b"x"
    ws.shutdown()
    wait_for(lambda: alice_bob["alice"].records("ws_end"), 3,
             what="backend WebSocket to end after the client vanished")


def test_firefox_style_connection_header(usher):
    # Firefox sends "Connection: keep-alive, Upgrade".
    c = HttpConn(usher.proxy_port)
    key = base64.b64encode(os.urandom(16)).decode()
    c.request("GET", "/ws", [(IDENTITY, "alice"), ("Upgrade", "WebSocket"),
                             ("Connection", "keep-alive, Upgrade"),
                             ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
    r = c.response()
    assert r.status == 101, r
    ws = WsClient(c, r)
    ws.send_text("ff")
    assert ws.recv_frame().payload == b"ff"
    ws.shutdown()


def test_idle_websocket_is_closed_after_upgraded_idle(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"timeouts": {"upgraded_idle": "300ms"}})
    ws = WsClient.open(u.proxy_port, user="alice")
    # Traffic keeps it open...
    for i in range(3):
        ws.send_text("t%d" % i)
        assert ws.recv_frame().payload == b"t%d" % i
    # ...silence does not.
    assert ws.conn.closed_within(3), "an idle WebSocket outlived upgraded_idle"
    wait_for(lambda: alice_bob["alice"].records("ws_end"), 3,
             what="the backend side to be closed too")
    ws.shutdown()


def test_shutdown_closes_open_websockets(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"timeouts": {"shutdown_drain": "1s"}})
    ws = WsClient.open(u.proxy_port, user="alice")
    u.proc.signal(15)
    assert ws.conn.closed_within(5), "a WebSocket kept usher-dispatch from stopping"
    u.proc.stopped_by_us = True
    wait_for(lambda: not u.alive(), 5, what="usher-dispatch to exit")
    assert u.proc.proc.returncode == 0
    ws.shutdown()


def test_websocket_client_that_stops_reading_is_cut_off(start_usher, alice_bob):
    # [timeouts] send also bounds a WebSocket whose client no longer reads.
    u = start_usher(alice_bob, config={"timeouts": {"send": "500ms"}})
    ws = WsClient.open(u.proxy_port, user="alice")
    ws.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = os.urandom(MiB)
    for _ in range(8):
        ws.send_binary(big)  # 8 MiB of echo that is never read
    wait_for(lambda: alice_bob["alice"].records("ws_end"), 8,
             what="the proxy to drop a WebSocket client that stopped reading")
    ws.shutdown()
