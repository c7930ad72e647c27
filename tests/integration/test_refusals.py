"""Every refusal: its status, a short human-readable body, one audit line
that says why, and no byte at any backend."""


import pytest

from harness import IDENTITY, HttpConn, free_port, wait_for

# (case id, identity headers sent, status, audit reason)
IDENTITY_CASES = [
    ("missing", [], 401, "missing_identity"),
    ("repeated_same", [(IDENTITY, "alice"), (IDENTITY, "alice")], 400, "repeated_identity"),
    ("repeated_different", [(IDENTITY, "alice"), (IDENTITY, "bob")], 400, "repeated_identity"),
    ("repeated_case_variant", [(IDENTITY, "alice"), (IDENTITY.upper(), "bob")], 400,
     "repeated_identity"),
    ("malformed_space", [(IDENTITY, "al ice")], 400, "malformed_identity"),
    ("malformed_path", [(IDENTITY, "../etc")], 400, "malformed_identity"),
    ("malformed_list", [(IDENTITY, "alice,bob")], 400, "malformed_identity"),
    ("malformed_too_long", [(IDENTITY, "a" * 300)], 400, "malformed_identity"),
    ("malformed_non_ascii", [(IDENTITY, "al\xefce")], 400, "malformed_identity"),
    ("unmapped", [(IDENTITY, "mallory")], 403, "unmapped_user"),
    ("mapped_without_backend", [(IDENTITY, "carol")], 503, "no_backend"),
]


def assert_refusal(usher, mark, r, status, reason, backends):
    assert r.status == status, r
    assert 0 < len(r.body) < 1024, r
    assert r.header("content-type", "").startswith("text/"), r
    text = r.body.decode("utf-8")
    assert text.strip() and all(ch.isprintable() or ch in "\r\n\t" for ch in text), r
    rec = usher.wait_record("audit", since=mark, reason=reason)
    assert rec["status"] == str(status), rec
    assert rec["client"].startswith("127.0.0.1:"), rec
    audits = usher.records("audit", since=mark)
    assert len(audits) == 1, audits
    for b in backends.values():
        assert b.connections() == 0, "a refused request reached backend %s" % b.name


@pytest.mark.parametrize("case,headers,status,reason", IDENTITY_CASES,
                         ids=[c[0] for c in IDENTITY_CASES])
def test_identity_refusals(usher, alice_bob, case, headers, status, reason):
    mark = usher.mark()
    with usher.connect() as c:
        c.request("GET", "/whoami", headers)
        r = c.response()
    assert_refusal(usher, mark, r, status, reason, alice_bob)
    if case == "unmapped":
        assert usher.records("audit", since=mark)[0].get("user") == "mallory"


def test_untrusted_peer_by_cidr(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"trusted_proxies": "10.255.255.1/32"}})
    mark = u.mark()
    with u.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        r = c.response()
    assert_refusal(u, mark, r, 403, "untrusted_peer", alice_bob)


def test_untrusted_peer_by_source_address(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"trusted_proxies": "127.0.0.1/32"}})
    # The same proxy port, reached from 127.0.0.2: the peer is not trusted.
    mark = u.mark()
    with HttpConn(u.proxy_port, source="127.0.0.2") as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice")])
        r = c.response()
    assert r.status == 403, r
    rec = u.wait_record("audit", since=mark, reason="untrusted_peer")
    assert rec["client"].startswith("127.0.0.2:"), rec
    assert alice_bob["alice"].connections() == 0
    # From 127.0.0.1 the same request is fine (so the refusal was about the peer).
    assert u.get("/whoami").status == 200


def test_spoofed_identity_from_untrusted_peer_never_reaches_a_backend(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"trusted_proxies": "10.255.255.1/32"}})
    spellings = [IDENTITY, IDENTITY.lower(), IDENTITY.upper(), "X_authentik_username"]
    for spelling in spellings:
        for method, target, body in (("GET", "/whoami", None), ("POST", "/upload", b"x" * 100)):
            with u.connect() as c:
                c.request(method, target, [(spelling, "alice")], body=body)
                r = c.response()
                assert r.status == 403, r
    # Pipelined, and with a WebSocket upgrade.
    with u.connect() as c:
        c.send(("GET /whoami HTTP/1.1\r\nHost: x\r\n%s: alice\r\n\r\n" % IDENTITY).encode() * 3)
        assert c.response().status == 403
    with u.connect() as c:
        c.request("GET", "/ws", [(IDENTITY, "alice"), ("Upgrade", "websocket"),
                                 ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
        assert c.response().status == 403
    for b in alice_bob.values():
        assert b.connections() == 0 and b.requests() == []
    assert len(u.records("audit", reason="untrusted_peer")) >= len(spellings) * 2


def test_untrusted_peer_without_identity_is_refused(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"trusted_proxies": "10.255.255.1/32"}})
    r = u.get("/whoami", user=None)
    assert r.status == 403, r
    assert alice_bob["alice"].connections() == 0


def test_backend_connect_failed(start_usher, alice_bob):
    u = start_usher({"alice": free_port(), "bob": alice_bob["bob"]})
    mark = u.mark()
    r = u.get("/whoami", user="alice")
    assert r.status == 502, r
    assert 0 < len(r.body) < 1024
    rec = u.wait_record("audit", since=mark, reason="backend_connect_failed")
    assert rec["status"] == "502" and rec.get("user") == "alice", rec
    assert wait_for(lambda: u.metrics().get("usher_backend_connect_errors_total", 0) >= 1, 3,
                    what="usher_backend_connect_errors_total >= 1")
    assert u.get("/whoami", user="bob").status == 200


def test_backend_timeout(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"timeouts": {"backend_response": "300ms"}})
    mark = u.mark()
    with u.connect() as c:
        c.settimeout(10)
        c.request("GET", "/delay?ms=5000", [(IDENTITY, "alice")])
        r = c.response()
    assert r.status == 504, r
    rec = u.wait_record("audit", since=mark, reason="backend_timeout")
    assert rec["status"] == "504"
    assert u.get("/whoami", user="bob").status == 200


def test_refusal_logs_cannot_be_forged(usher):
    evil = 'x" event=forged level=error user=root'
    mark = usher.mark()
    with usher.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, evil)])
        assert c.response().status == 400
    rec = usher.wait_record("audit", since=mark, reason="malformed_identity")
    assert "_dupes" not in rec, rec
    assert usher.records("forged", since=mark) == []
    for rec in usher.records(since=mark):
        assert "_dupes" not in rec, rec


def test_refusals_are_counted(usher):
    assert usher.get("/whoami", user="mallory").status == 403
    assert usher.get("/whoami", user=None).status == 401
    assert usher.get("/whoami", user="alice").status == 200

    def counted():
        m = usher.metrics()
        return all(m.get('usher_requests_total{code="%s"}' % code, 0) >= 1
                   for code in ("200", "401", "403"))
    wait_for(counted, 3, what="usher_requests_total for 200, 401 and 403")
