"""Map and state reloads (inotify and SIGHUP): access follows the files at
once, revocation closes open WebSockets, and nothing else is dropped."""

import json
import socket
import time

import pytest

from harness import IDENTITY, ConnectionClosed, WsClient, wait_for

REVOKE_WITHIN = 1.0


def ws_echo_ok(ws, text):
    ws.send_text(text)
    f = ws.recv_frame(timeout=3)
    return f.opcode == 1 and f.payload == text.encode()


def wait_closed(ws, timeout):
    """Seconds until the proxy closes `ws` (a close frame or EOF), or None."""
    t0 = time.monotonic()
    c = ws.conn
    while True:
        if len(c.buf) >= 2 and c.buf[0] & 0x0F == 8:
            return time.monotonic() - t0  # a close frame
        left = t0 + timeout - time.monotonic()
        if left <= 0:
            return None
        c.settimeout(left)
        try:
            c._fill()
        except socket.timeout:
            return None
        except (ConnectionClosed, OSError):
            return time.monotonic() - t0


@pytest.mark.parametrize("how", ["rename", "in-place", "sighup"])
def test_removing_a_user_closes_their_websocket_at_once(usher, how):
    alice = WsClient.open(usher.proxy_port, user="alice")
    bob = WsClient.open(usher.proxy_port, user="bob")
    assert ws_echo_ok(alice, "a1") and ws_echo_ok(bob, "b1")
    mark = usher.mark()
    t0 = time.monotonic()
    usher.write_map(["bob=bob", "carol=carol"], atomic=(how == "rename"))
    if how == "sighup":
        usher.sighup()
    elapsed = wait_closed(alice, REVOKE_WITHIN + 2)
    assert elapsed is not None, "alice's WebSocket still open %.1fs after the map change" % (
        REVOKE_WITHIN + 2)
    elapsed = time.monotonic() - t0
    print("alice's WebSocket closed %.3fs after the map change (%s)" % (elapsed, how))
    assert elapsed < REVOKE_WITHIN
    rec = usher.wait_record("revoke", since=mark, user="alice")
    assert int(rec["connections"]) >= 1, rec
    reload = usher.wait_record("reload", since=mark, file="map")
    assert reload["result"] == "ok" and reload["entries"] == "2", reload
    # Bob's WebSocket is untouched.
    assert ws_echo_ok(bob, "b2")
    assert not bob.conn.eof
    # And alice is refused from now on.
    assert usher.get("/whoami", user="alice").status == 403
    assert usher.get("/whoami", user="bob").status == 200
    for ws in (alice, bob):
        ws.shutdown()


def test_removed_user_is_refused_on_an_open_keepalive_connection(usher):
    with usher.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        assert c.response().status == 200
        mark = usher.mark()
        usher.write_map(["bob=bob"])
        usher.wait_record("reload", since=mark, file="map")
        try:
            c.request("GET", "/whoami", [(IDENTITY, "alice")])
            r = c.response()
        except Exception:
            r = None  # closing alice's connection is fine too
        assert r is None or r.status == 403, r


def test_added_user_is_routable_within_seconds(usher, start_backend):
    dave = start_backend("dave")
    assert usher.get("/whoami", user="dave").status == 403
    usher.write_state({"alice": usher_port(usher, "alice"), "bob": usher_port(usher, "bob"),
                       "dave": dave})
    usher.write_map(["alice=alice", "bob=bob", "carol=carol", "dave=dave"])

    def routed():
        r = usher.get("/whoami", user="dave")
        return r.status == 200 and r.json()["name"] == "dave"
    wait_for(routed, 3, interval=0.05, what="dave to be routed after adding him")


def usher_port(usher, user):
    with open(usher.state_file) as f:
        return json.load(f)["users"][user]["port"]


def test_state_change_moves_a_user_to_a_new_backend(usher, start_backend):
    new = start_backend("alice-new")
    assert usher.get("/whoami", user="alice").json()["name"] == "alice"
    mark = usher.mark()
    usher.write_state({"alice": new, "bob": usher_port(usher, "bob")})
    rec = usher.wait_record("reload", since=mark, file="state")
    assert rec["result"] == "ok", rec

    def moved():
        return usher.get("/whoami", user="alice").json()["name"] == "alice-new"
    wait_for(moved, 3, interval=0.05, what="alice to be routed to her new backend")
    assert usher.get("/whoami", user="bob").json()["name"] == "bob"


def test_bad_map_line_is_skipped_and_others_keep_working(usher):
    mark = usher.mark()
    usher.write_map(["alice=alice", "this line is not a mapping", "bob=bob"])
    rec = usher.wait_record("reload", since=mark, file="map")
    assert rec["entries"] == "2", rec
    assert usher.get("/whoami", user="alice").status == 200
    assert usher.get("/whoami", user="bob").status == 200
    # The bad line is reported with its number.
    later = usher.output().split("\n")[mark:]
    assert any("2" in line and "line" in line and "event=reload" not in line
               for line in later), later


def test_unreadable_state_keeps_the_last_good_one(usher):
    mark = usher.mark()
    with open(usher.state_file, "w") as f:
        f.write("{ this is not json")
    rec = usher.wait_record("reload", since=mark, file="state")
    assert rec["result"] == "error", rec
    assert usher.get("/whoami", user="alice").status == 200
    assert usher.get("/whoami", user="bob").status == 200


def test_sighup_reloads_both_files(usher):
    mark = usher.mark()
    usher.sighup()
    usher.wait_record("reload", since=mark, file="map", result="ok")
    usher.wait_record("reload", since=mark, file="state", result="ok")
    assert usher.get("/whoami", user="alice").status == 200


def test_reload_drops_no_request_and_no_websocket(usher):
    bob = WsClient.open(usher.proxy_port, user="bob")
    with usher.connect(timeout=20) as c:
        # A download in flight across several reloads (map keeps alice).
        n = 8 * 1024 * 1024
        c.request("GET", "/bytes?n=%d" % n, [(IDENTITY, "alice")])
        version, status, _, headers = c.read_head()
        assert status == 200
        for i in range(3):
            mark = usher.mark()
            usher.write_map(["alice=alice", "bob=bob", "carol=carol", "# reload %d" % i])
            usher.wait_record("reload", since=mark, file="map")
            mark = usher.mark()
            usher.sighup()
            usher.wait_record("reload", since=mark, file="state")
        got = len(c.buf)
        c.buf.clear()
        while got < n:
            got += len(c._take(n - got))
        assert got == n
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        assert c.response().status == 200
    assert ws_echo_ok(bob, "still here")
    bob.shutdown()


def test_reload_metrics(usher):
    before = usher.metrics()
    assert before.get("usher_map_entries") == 3, before
    mark = usher.mark()
    usher.write_map(["alice=alice"])
    usher.wait_record("reload", since=mark, file="map")
    key = 'usher_reloads_total{file="map",result="ok"}'
    wait_for(lambda: usher.metrics().get("usher_map_entries") == 1, 3,
             what="usher_map_entries == 1")
    assert usher.metrics().get(key, 0) >= before.get(key, 0) + 1


def test_revocation_closes_every_connection_of_the_user_with_one_line(usher):
    sockets = [WsClient.open(usher.proxy_port, user="alice") for _ in range(2)]
    keepalive = usher.connect()
    keepalive.request("GET", "/whoami", [(IDENTITY, "alice")])
    assert keepalive.response().status == 200
    bob = WsClient.open(usher.proxy_port, user="bob")
    mark = usher.mark()
    usher.write_map(["bob=bob"])
    for ws in sockets:
        assert wait_closed(ws, 2) is not None
    assert ws_echo_ok(bob, "b")
    usher.wait_record("revoke", since=mark, user="alice")
    lines = usher.records("revoke", since=mark, user="alice")
    # event=revoke user=<sso> connections=N: one line per revoked user.
    assert len(lines) == 1 and int(lines[0]["connections"]) >= 2, lines
    for ws in sockets + [bob]:
        ws.shutdown()
    keepalive.close()
