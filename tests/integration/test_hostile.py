"""Hostile raw requests: each refused with its exact status, the connection
closed, and no byte at the backend (RFC 9112: ambiguous framing is refused,
never guessed at). Every request carries a valid identity, so the framing
alone is what is refused."""

import pytest

from harness import IDENTITY

LIMITS = {"max_header_bytes": "4096", "max_headers": "20", "max_request_line": "1024",
          "max_chunk_line": "256", "max_body_bytes": "1M"}

ID = ("%s: alice\r\n" % IDENTITY).encode()


def req(head_lines, body=b"", request_line=b"POST /upload HTTP/1.1"):
    return request_line + b"\r\nHost: usher.test\r\n" + ID + b"".join(
        line + b"\r\n" for line in head_lines) + b"\r\n" + body


# (id, raw bytes, expected status)
HEAD_CASES = [
    ("cl_and_te", req([b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n"), 400),
    ("te_and_cl", req([b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"0\r\n\r\n"), 400),
    ("two_different_cl", req([b"Content-Length: 5", b"Content-Length: 6"], b"hello!"), 400),
    ("cl_list", req([b"Content-Length: 5, 6"], b"hello!"), 400),
    ("cl_plus_sign", req([b"Content-Length: +5"], b"hello"), 400),
    ("cl_minus_sign", req([b"Content-Length: -1"], b""), 400),
    ("cl_inner_space", req([b"Content-Length: 1 0"], b"0123456789"), 400),
    ("cl_hex", req([b"Content-Length: 0x10"], b"0123456789abcdef"), 400),
    ("cl_overflow", req([b"Content-Length: 99999999999999999999999"], b""), 400),
    ("te_gzip", req([b"Transfer-Encoding: gzip"], b""), 501),
    ("obs_fold", req([b"X-Folded: first", b" second"], b""), 400),
    ("obs_fold_tab", req([b"X-Folded: first", b"\tsecond"], b""), 400),
    ("bare_cr_in_header", req([b"X-Bad: a\rb"], b""), 400),
    ("bare_lf_line_end", b"GET /whoami HTTP/1.1\r\nHost: usher.test\n" + ID + b"\r\n", 400),
    ("bare_lf_everywhere", b"GET /whoami HTTP/1.1\nHost: usher.test\n" + ID.replace(b"\r\n", b"\n")
     + b"\n", 400),
    ("nul_in_header", req([b"X-Bad: a\x00b"], b""), 400),
    ("space_before_colon", req([b"X-Bad : a"], b""), 400),
    ("space_in_header_name", req([b"X Bad: a"], b""), 400),
    ("oversize_header", req([b"X-Big: " + b"a" * 5000], b""), 431),
    ("too_many_headers", req([b"X-H%d: v" % i for i in range(25)], b""), 431),
    ("oversize_request_line", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n" + ID + b"\r\n",
     414),
    ("http_0_9", b"GET /\r\n", 400),
    ("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("http_1_2", req([], request_line=b"GET /whoami HTTP/1.2"), 505),
    ("http_2_0", req([], request_line=b"GET /whoami HTTP/2.0"), 505),
    ("missing_host", b"GET /whoami HTTP/1.1\r\n" + ID + b"\r\n", 400),
    ("two_hosts", req([b"Host: other.test"], b"", request_line=b"GET /whoami HTTP/1.1"), 400),
    ("body_over_max_body_bytes", req([b"Content-Length: 2000000"], b"x" * 1000), 413),
    ("te_chunked_twice", req([b"Transfer-Encoding: chunked, chunked"], b"0\r\n\r\n"), 400),
    ("te_header_twice", req([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                            b"0\r\n\r\n"), 400),
    # RFC 9112 §6.3: chunked not last in a request -> 400 (not 501: the length is unknowable).
    ("te_chunked_not_last", req([b"Transfer-Encoding: chunked, gzip"], b"0\r\n\r\n"), 400),
    ("te_in_http_1_0", req([b"Transfer-Encoding: chunked"], b"0\r\n\r\n",
                           request_line=b"POST /upload HTTP/1.0"), 400),
    ("control_char_in_value", req([b"X-Bad: a\x01b"], b""), 400),
    ("del_in_value", req([b"X-Bad: a\x7fb"], b""), 400),
    ("empty_header_name", req([b": value"], b""), 400),
    ("space_in_target", req([], request_line=b"GET /who ami HTTP/1.1"), 400),
    ("double_space_request_line", req([], request_line=b"GET  /whoami HTTP/1.1"), 400),
    ("lowercase_version", req([], request_line=b"GET /whoami http/1.1"), 400),
    ("connect_method", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n" + ID + b"\r\n",
     501),
]


@pytest.fixture
def hostile(start_usher, start_backend):
    alice = start_backend("alice")
    u = start_usher({"alice": alice}, config={"limits": LIMITS})
    return u, alice


def send_raw(u, data):
    """Sends `data`, reads one response; returns (response, closed-after)."""
    c = u.connect(timeout=5)
    try:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished sending; the response may still be there
        r = c.response()
        return r, c.closed_within(3)
    finally:
        c.close()


def assert_backend_untouched(alice):
    assert alice.connections() == 0, alice.records()


def control_request(u, alice):
    """A valid request afterwards: proves the setup routes to this backend,
    and that the only request it ever saw is this one."""
    r = u.get("/whoami?control", user="alice")
    assert r.status == 200, r
    assert [rec["target"] for rec in alice.requests()] == ["/whoami?control"], alice.records()
    assert alice.records("error") == []


@pytest.mark.parametrize("case,data,status", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_hostile_head_is_refused_before_the_backend(hostile, case, data, status):
    u, alice = hostile
    mark = u.mark()
    r, closed = send_raw(u, data)
    assert r.status == status, r
    assert closed, "connection not closed after refusing %s" % case
    assert 0 < len(r.body) < 1024, r
    rec = u.wait_record("audit", since=mark)
    assert rec["reason"] == "bad_request" and rec["status"] == str(status), rec
    assert rec.get("detail"), rec
    assert_backend_untouched(alice)
    control_request(u, alice)


# Chunked bodies that fail only in the body: the head may already be at the
# backend, but the backend must never see a complete request.
BODY_CASES = [
    ("bad_chunk_size", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_with_sign", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("oversize_chunk_extension", b"5;" + b"x" * 300 + b"\r\nhello\r\n0\r\n\r\n"),
    ("chunk_data_without_crlf", b"5\r\nhelloXX0\r\n\r\n"),
    ("bare_lf_after_chunk_size", b"5\nhello\r\n0\r\n\r\n"),
    ("chunk_size_overflow", b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("case,body", BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_hostile_chunked_body_is_refused(hostile, case, body):
    u, alice = hostile
    mark = u.mark()
    r, closed = send_raw(u, req([b"Transfer-Encoding: chunked"], body))
    assert r.status == 400, r
    assert closed, "connection not closed after refusing %s" % case
    rec = u.wait_record("audit", since=mark)
    assert rec["reason"] == "bad_request" and rec["status"] == "400", rec
    assert alice.records("complete") == [], "the backend got a complete request: %s" % (
        alice.records(),)
    # Whatever reached the backend was cut off, not left dangling on a pooled connection.
    r = u.get("/whoami?control", user="alice")
    assert r.status == 200, r
    assert alice.records("complete")[-1]["target"] == "/whoami?control"
    assert [rec["target"] for rec in alice.records("complete")] == ["/whoami?control"]


def test_chunked_body_over_max_body_bytes(hostile):
    u, alice = hostile
    body = b"".join(b"10000\r\n" + b"x" * 0x10000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    r, closed = send_raw(u, req([b"Transfer-Encoding: chunked"], body))
    assert r.status == 413, r
    assert closed
    assert alice.records("complete") == []


def test_smuggling_attempt_does_not_reach_the_backend_as_a_second_request(hostile):
    # The classic CL.TE desync: a front end using Content-Length would forward
    # the smuggled request as body; one using chunked would see two requests.
    u, alice = hostile
    smuggled = b"GET /whoami?smuggled HTTP/1.1\r\nHost: x\r\n" + ID + b"\r\n"
    body = b"0\r\n\r\n" + smuggled
    data = req([b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"], body)
    r, closed = send_raw(u, data)
    assert r.status == 400 and closed, r
    assert alice.connections() == 0
    control_request(u, alice)


def test_limits_are_not_off_by_much(hostile):
    # Just under every limit is accepted, so the refusals above are about the limits.
    u, alice = hostile
    with u.connect() as c:
        c.request("GET", "/whoami?" + "a" * 900, [(IDENTITY, "alice")] +
                  [("X-H%d" % i, "v") for i in range(15)])
        r = c.response()
        assert r.status == 200, r
        c.request("POST", "/upload", [(IDENTITY, "alice"), ("X-Big", "a" * 3000)],
                  body=b"x" * 1000000)
        r = c.response()
        assert r.status == 200 and r.json()["bytes"] == 1000000, r
        c.request("POST", "/upload", [(IDENTITY, "alice"), ("Transfer-Encoding", "chunked")])
        c.send(b"5;" + b"e" * 200 + b"\r\nhello\r\n0\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.json()["bytes"] == 5, r


SMUGGLED = (b"GET /whoami?smuggled HTTP/1.1\r\nHost: x\r\n" + ID + b"\r\n").replace(b"alice", b"bob")


def smuggle_fixture(start_usher, start_backend):
    alice, bob = start_backend("alice"), start_backend("bob")
    return start_usher({"alice": alice, "bob": bob}), alice, bob


def test_upgrade_request_body_is_not_a_second_request(start_usher, start_backend):
    # An SSO edge strips identity headers, not bodies: if Usher read the body of
    # an Upgrade request as a new request, a user could speak as anyone.
    u, alice, bob = smuggle_fixture(start_usher, start_backend)
    with u.connect(timeout=5) as c:
        c.send(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n" + ID + b"Upgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
               + SMUGGLED)
        r = c.response()
        assert r.status in (200, 400), r
        c.closed_within(0.3)  # a bounded look for a second response
        assert c.buf == b"", "a second response came back: %r" % bytes(c.buf)
    assert bob.connections() == 0, bob.records()


def test_body_after_an_early_final_response_is_not_a_second_request(start_usher,
                                                                     start_backend):
    # The backend refuses before the body (no 100 Continue); the client sends
    # the announced body anyway. It is a body, never a request.
    u, alice, bob = smuggle_fixture(start_usher, start_backend)
    for expect in (True, False):
        with u.connect(timeout=5) as c:
            hdrs = [(IDENTITY, "alice"), ("Content-Length", str(len(SMUGGLED)))]
            if expect:
                hdrs.append(("Expect", "100-continue"))
            c.request("POST", "/early-reply", hdrs, send_body=False)
            r = c.response()
            assert r.status == 403 and r.body == b"early reply\n", r
            try:
                c.send(SMUGGLED)
                c.request("GET", "/whoami", [(IDENTITY, "alice")])
                r2 = c.response()
            except Exception:
                pass  # closing the connection after an early answer is fine
            else:
                assert r2.status == 200 and r2.json()["name"] == "alice", r2
    assert bob.connections() == 0, bob.records()
