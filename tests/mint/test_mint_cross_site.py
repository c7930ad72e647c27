"""Cross-site protection: a page on another site must not ride the session Usher injects.
WebSocket upgrades and state-changing requests (POST, PUT, PATCH, DELETE) are checked against
the public origin(s) (Origin, else Sec-Fetch-Site) and refused with 403 and an audit line
(reason=cross_site); same-origin ones pass; safe methods are not checked."""

import pytest

import mint_harness as mh

PUBLIC = "https://usher.test"
EVIL = "https://evil.example"


@pytest.fixture
def usher_with_origins(start_usher, t3):
    return start_usher({"alice": t3["alice"]}, mint={"public_origins": PUBLIC})


def established(u):
    b = u.browser("alice")
    assert b.get("/whoami").status == 200
    return b


def check_refused(u, r, mark):
    assert r.status == 403, r
    audits = u.audits(mark)
    assert len(audits) == 1, audits
    assert audits[0]["reason"] == "cross_site" and audits[0]["status"] == "403", audits


def test_cross_site_websocket_is_refused(usher_with_origins, t3):
    u = usher_with_origins
    a = t3["alice"]
    b = established(u)
    bm, mark = a.mark(), u.mark()
    ws = b.websocket("/ws", origin=EVIL, expect=None)
    check_refused(u, ws.response, mark)
    assert not [x for x in a.requests(bm) if x["path"] == "/ws"]  # never reached the app
    # same origin passes
    ws = b.websocket("/ws", origin=PUBLIC)
    try:
        assert ws.echo("ok") == (1, "ok")
    finally:
        ws.close()


def test_cross_site_websocket_on_first_visit_mints_nothing(usher_with_origins, t3):
    u = usher_with_origins
    a = t3["alice"]
    m0, mark = a.mint_count(), u.mark()
    ws = u.browser("alice").websocket("/ws", origin=EVIL, expect=None)
    check_refused(u, ws.response, mark)
    assert not mh.set_cookies(ws.response, "t3_session")
    assert a.mint_count() == m0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_cross_site_state_changing_request_is_refused(usher_with_origins, t3, method):
    u = usher_with_origins
    a = t3["alice"]
    b = established(u)
    bm, mark = a.mark(), u.mark()
    r = b.request(method, "/echo", body=b"x=1", origin=EVIL)
    check_refused(u, r, mark)
    assert not a.requests(bm)
    r = b.request(method, "/echo", body=b"x=1", origin=PUBLIC)
    assert r.status in (200, 404), r  # reached the app (it has /echo for POST and PUT)


def test_cross_site_post_on_first_visit_mints_nothing(usher_with_origins, t3):
    u = usher_with_origins
    a = t3["alice"]
    m0, mark = a.mint_count(), u.mark()
    r = u.browser("alice").post("/echo", b"x=1", origin=EVIL)
    check_refused(u, r, mark)
    assert a.mint_count() == m0


def test_sec_fetch_site_when_there_is_no_origin(usher_with_origins, t3):
    u = usher_with_origins
    b = established(u)
    mark = u.mark()
    r = b.post("/echo", b"x", origin=None, headers=[("Sec-Fetch-Site", "cross-site")])
    check_refused(u, r, mark)
    r = b.post("/echo", b"x", origin=None, headers=[("Sec-Fetch-Site", "same-origin")])
    assert r.status == 200, r
    mark = u.mark()
    ws = b.websocket("/ws", origin=None, headers=[("Sec-Fetch-Site", "cross-site")],
                     expect=None)
    check_refused(u, ws.response, mark)


def test_origin_is_checked_before_sec_fetch_site(usher_with_origins, t3):
    u = usher_with_origins
    b = established(u)
    mark = u.mark()
    r = b.post("/echo", b"x", origin=EVIL, headers=[("Sec-Fetch-Site", "same-origin")])
    check_refused(u, r, mark)
    r = b.post("/echo", b"x", origin=PUBLIC, headers=[("Sec-Fetch-Site", "cross-site")])
    assert r.status == 200, r


def test_lookalike_origins_are_refused(usher_with_origins, t3):
    u = usher_with_origins
    b = established(u)
    for origin in ("http://usher.test", "https://usher.test:8443", "https://usher.test.evil",
                   "https://evil-usher.test", "null", "https://USHER.test.evil.example"):
        mark = u.mark()
        r = b.post("/echo", b"x", origin=origin)
        check_refused(u, r, mark)


def test_safe_methods_are_not_checked(usher_with_origins, t3):
    """A cross-site GET (a link, an image) is fine: it changes nothing."""
    u = usher_with_origins
    b = established(u)
    r = b.get("/whoami", origin=EVIL)
    assert r.status == 200, r


def test_default_public_origin_comes_from_the_forwarded_headers(usher, t3):
    """public_origins empty (the default): the request's own origin, from X-Forwarded-Proto
    and X-Forwarded-Host (the Browser sends https and usher.test, like the SSO edge)."""
    b = usher.browser("alice")
    r = b.post("/echo", b"x", origin="https://usher.test")
    assert r.status == 200, r
    for origin in (EVIL, "http://usher.test"):
        mark = usher.mark()
        r = b.post("/echo", b"x", origin=origin)
        check_refused(usher, r, mark)
    ws = b.websocket("/ws", origin="https://usher.test")
    ws.close()
    mark = usher.mark()
    ws = b.websocket("/ws", origin=EVIL, expect=None)
    check_refused(usher, ws.response, mark)


def test_refusal_page_by_accept(usher_with_origins, t3):
    u = usher_with_origins
    r = u.browser("alice", accept="text/html").post("/echo", b"x", origin=EVIL)
    assert r.status == 403 and r.content_type == "text/html", r
    r = u.browser("alice", accept="application/json").post("/echo", b"x", origin=EVIL)
    assert r.status == 403 and r.content_type == "application/json", r
    assert isinstance(r.json(), dict)
