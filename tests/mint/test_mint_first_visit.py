"""First visit: a person who passed SSO lands straight in their own app, with exactly one mint
(through real sudo, as their own uid), for GET, POST (body streamed, not lost) and a WebSocket
upgrade; the browser receives the app's cookie (attributes normalised) and Usher's bind
cookie; the backend receives the fresh app cookie and never the bind cookie."""

import hashlib
import os

import mint_harness as mh


def check_first_visit_cookies(r, secure=False):
    """The response to a first visit sets exactly one t3_session and one usher_bind."""
    apps = mh.set_cookies(r, "t3_session")
    binds = mh.set_cookies(r, "usher_bind")
    assert len(apps) == 1 and len(binds) == 1, r
    app, bind = apps[0], binds[0]
    for c in (app, bind):
        assert c.value and not c.cleared, c
        assert c.attr("httponly") is True, c
        assert c.attr("path") == "/", c
        assert str(c.attr("samesite")).lower() == "lax", c
        assert (c.attr("secure") is True) == secure, c
        assert c.attr("domain") is None, c  # host-only
    return app, bind


def forwarded_cookies(body):
    """[(name, value)] of the Cookie header(s) the fake backend received."""
    return mh.cookie_pairs(body["cookie"])


def check_mint_line(usher, mark, sso="alice"):
    recs = usher.mints(mark)
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["user"] == sso and rec["os_user"] == mh.MAPPED[sso] and rec["result"] == "ok"
    assert float(rec["duration_ms"]) >= 0
    return rec


def test_first_get_mints_once_and_injects(env, usher, t3):
    a = t3["alice"]
    m0, mark = a.mint_count(), usher.mark()
    b = usher.browser("alice")
    r = b.get("/whoami")
    assert r.status == 200, r
    body = r.json()
    # exactly one mint, through sudo, as alice
    assert a.mint_count() == m0 + 1
    assert a.mints()[-1]["uid"] == env.uid(a.os_user)
    check_mint_line(usher, mark)
    # the browser got the app's cookie and the bind cookie
    app, bind = check_first_visit_cookies(r)
    # the backend got the same fresh cookie, once, and no Usher cookie
    assert body["user"] == a.os_user and body["uid"] == env.uid(a.os_user)
    assert forwarded_cookies(body) == [("t3_session", app.value)]
    assert body["session_cookies"] == [app.value]
    hdrs = {k.lower(): v for k, v in body["headers"]}
    assert mh.IDENTITY.lower() not in hdrs
    assert hdrs.get("x-forwarded-user") == "alice"
    # the jar now holds both; the next request is served without a mint
    assert b.cookie("t3_session") == app.value and b.cookie("usher_bind") == bind.value
    r2 = b.get("/whoami")
    assert r2.status == 200, r2
    assert r2.json()["sid"] == body["sid"]
    assert forwarded_cookies(r2.json()) == [("t3_session", app.value)]
    assert not mh.set_cookies(r2, "t3_session")
    assert a.mint_count() == m0 + 1 and len(usher.mints(mark)) == 1


def test_first_page_is_the_users_own_app(env, usher, t3):
    """GET / lands in the app (its HTML page, as alice's uid): no pairing screen, no redirect."""
    r = usher.browser("alice").get("/")
    assert r.status == 200, r
    assert r.content_type == "text/html"
    assert "t3 of <b id=user>%s</b> running as uid <b id=uid>%d</b>" % (
        mh.MAPPED["alice"], env.uid(mh.MAPPED["alice"])) in r.text


def test_first_post_streams_the_body(usher, t3):
    a = t3["alice"]
    m0 = a.mint_count()
    a.cli_delay(300)  # the body arrives while the mint is still running
    data = os.urandom(3 * 1024 * 1024 + 17)
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    b = usher.browser("alice")
    r = b.post("/echo", pieces, headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200, r
    body = r.json()
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    app, _ = check_first_visit_cookies(r)
    assert forwarded_cookies(body) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_first_post_chunked_streams_the_body(usher, t3):
    b_ = t3["bob"]
    m0 = b_.mint_count()
    data = os.urandom(1024 * 1024 + 3)
    pieces = [data[i:i + 40000] for i in range(0, len(data), 40000)]
    r = usher.browser("bob").post("/echo", pieces, chunked=True)
    assert r.status == 200, r
    body = r.json()
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["user"] == b_.os_user
    app, _ = check_first_visit_cookies(r)
    assert forwarded_cookies(body) == [("t3_session", app.value)]
    assert b_.mint_count() == m0 + 1


def test_first_websocket_upgrade(usher, t3):
    a = t3["alice"]
    m0, bm = a.mint_count(), a.mark()
    b = usher.browser("alice")
    ws = b.websocket("/ws")
    try:
        app, bind = check_first_visit_cookies(ws.response)
        for i in range(3):
            assert ws.echo("hello %d" % i) == (1, "hello %d" % i)
    finally:
        ws.close()
    assert a.mint_count() == m0 + 1
    upgrades = mh.wait_for(lambda: [r for r in a.requests(bm) if r["path"] == "/ws"],
                           what="the fake's log of the upgrade")
    assert len(upgrades) == 1 and upgrades[0]["status"] == 101
    assert upgrades[0]["cookie_names"] == ["t3_session"]
    # with the jar, the next upgrade needs no mint
    ws2 = b.websocket("/ws")
    try:
        assert ws2.echo("again") == (1, "again")
        assert not mh.set_cookies(ws2.response, "t3_session")
    finally:
        ws2.close()
    assert a.mint_count() == m0 + 1


def test_stale_app_cookie_is_replaced_and_other_cookies_kept(usher, t3):
    """A t3_session the browser sends without a matching bind cookie is not forwarded; the
    fresh one is, once; the app's other cookies pass through; Usher's own never do."""
    a = t3["alice"]
    m0 = a.mint_count()
    b = usher.browser("alice")
    b.set_cookie("t3_session", "stale-cookie-value-0123456789")
    b.set_cookie("theme", "dark")
    r = b.get("/whoami")
    assert r.status == 200, r
    app, bind = check_first_visit_cookies(r)
    fwd = forwarded_cookies(r.json())
    assert sorted(fwd) == sorted([("t3_session", app.value), ("theme", "dark")]), fwd
    assert a.mint_count() == m0 + 1
    r2 = b.get("/whoami")
    fwd2 = forwarded_cookies(r2.json())
    assert sorted(fwd2) == sorted([("t3_session", app.value), ("theme", "dark")]), fwd2
    assert all(n != "usher_bind" for n, _ in fwd2)


def test_secure_cookies_yes_adds_secure(start_usher, t3):
    u = start_usher({"alice": t3["alice"]}, mint={"secure_cookies": "yes"})
    r = u.browser("alice").get("/whoami")
    assert r.status == 200, r
    check_first_visit_cookies(r, secure=True)


def test_metrics_count_the_mint(usher, t3):
    usher.browser("alice").get("/whoami")
    usher.browser("bob").get("/whoami")
    m = usher.metrics()
    assert m.get('usher_mints_total{result="ok"}') == 2, m
    assert m.get("usher_mint_duration_seconds_count") == 2, m
    assert m.get("usher_mint_duration_seconds_sum", 0) > 0, m
    assert m.get('usher_mint_duration_seconds_bucket{le="+Inf"}') == 2, m
    assert m.get("usher_remints_total") == 0, m


def test_mint_disabled_forwards_untouched(start_usher, t3):
    """enabled = no: Usher is a plain proxy again (no mint, cookies passed through)."""
    a = t3["alice"]
    m0 = a.mint_count()
    u = start_usher({"alice": a}, mint={"enabled": "no"})
    r = u.browser("alice").get("/whoami")
    assert r.status == 401, r  # the app's own answer
    assert a.mint_count() == m0
    assert not mh.set_cookies(r)
