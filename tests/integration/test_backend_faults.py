"""Backends that misbehave. A backend runs its user's code, and one client
connection from the SSO edge carries many users' requests, so nothing a
backend sends may leak into another response on that connection."""

import pytest

from harness import IDENTITY, wait_for


def test_response_overrun_cannot_desync_the_client_connection(usher):
    # /overrun sends "Content-Length: 5" + "hello" + a whole forged response.
    with usher.connect(timeout=5) as c:
        c.request("GET", "/overrun", [(IDENTITY, "alice")])
        r = c.response()
        assert r.status == 200 and r.body == b"hello", r
        c.request("GET", "/whoami", [(IDENTITY, "bob")])
        r = c.response()
        assert r.status == 200, r
        assert r.header("X-Backend-Name") == "bob", r
        assert r.json()["name"] == "bob"
    # Nor is the forged response left on a pooled connection for alice's next request.
    r = usher.get("/whoami", user="alice")
    assert r.status == 200 and r.header("X-Backend-Name") == "alice", r
    assert r.json()["name"] == "alice"


BAD_RESPONSES = ["cl_te", "two_cl", "status", "garbage", "huge_head"]


@pytest.mark.parametrize("kind", BAD_RESPONSES)
def test_malformed_backend_response_is_a_502(usher, kind):
    mark = usher.mark()
    with usher.connect(timeout=5) as c:
        c.request("GET", "/bad-response?kind=%s" % kind, [(IDENTITY, "alice")])
        r = c.response()
        assert r.status == 502, r
        assert 0 < len(r.body) < 1024 and b"HTTP/1.1" not in r.body, r
        # The client connection is still in sync (or closed cleanly).
        try:
            c.request("GET", "/whoami", [(IDENTITY, "bob")])
            r2 = c.response()
        except Exception:
            assert c.eof and c.buf == b"", bytes(c.buf)
        else:
            assert r2.status == 200 and r2.json()["name"] == "bob", r2
    rec = usher.wait_record("audit", since=mark, status=502)
    assert rec.get("user") == "alice", rec


def test_backend_hanging_up_without_answer_is_a_502(usher):
    mark = usher.mark()
    r = usher.get("/hangup", user="alice")
    assert r.status == 502, r
    usher.wait_record("audit", since=mark, status=502)
    assert usher.get("/whoami", user="alice").status == 200


def test_backend_closing_a_pooled_connection_is_not_a_502(usher, alice_bob):
    # The backend answers and then closes (its own keep-alive timeout). The
    # next request must get a fresh backend connection, not the dead one.
    alice = alice_bob["alice"]
    r = usher.get("/linger-close", user="alice")
    assert r.status == 200 and r.body == b"bye\n", r
    wait_for(lambda: [c for c in alice.records("close") if c["reason"] == "handler_done"], 3,
             what="the backend to close its side")
    for i in range(3):
        r = usher.get("/whoami", user="alice")
        assert r.status == 200, r


def test_early_hints_do_not_break_the_exchange(usher):
    with usher.connect(timeout=5) as c:
        c.request("GET", "/early-hints", [(IDENTITY, "alice")])
        r = c.response()
        assert r.status == 200 and r.body == b"after hints\n", r
        # Relaying a 103 is optional; relaying it without its fields is not useful
        # (the Link header is the whole point of Early Hints).
        for hint in r.interim:
            assert hint.status == 103, hint
            assert hint.header("Link") == "</style.css>; rel=preload", hint
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        assert c.response().status == 200


def test_backend_status_and_headers_are_relayed(usher):
    for code in (201, 302, 404, 418, 500, 503):
        r = usher.get("/status/%d" % code, user="bob")
        assert r.status == code, r
        assert r.body == b"status %d from bob\n" % code, r
        assert r.header("X-Backend-Name") == "bob"
