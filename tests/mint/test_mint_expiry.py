"""Expiry and revocation: a backend's 401 to an injected session is renewed transparently on a
replayable request (one re-mint, one retry), relayed with the bind cookie cleared otherwise;
at most one re-mint per request; a per-user mint rate limit answers 429 with a clear page."""

import os

import mint_harness as mh


def fwd(r):
    return mh.cookie_pairs(r.json()["cookie"])


def established(usher, who="alice"):
    b = usher.browser(who)
    r = b.get("/whoami")
    assert r.status == 200, r
    return b, b.cookie("t3_session")


def test_revoked_cookie_is_renewed_transparently_on_get(usher, t3):
    a = t3["alice"]
    b, old = established(usher)
    a.revoke()
    m0, mark, remints0 = a.mint_count(), usher.mark(), usher.metric("usher_remints_total")
    bm = a.mark()
    r = b.get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != old and not app.cleared
    assert fwd(r) == [("t3_session", app.value)]
    binds = mh.set_cookies(r, "usher_bind")
    assert len(binds) == 1 and not binds[0].cleared, r
    assert a.mint_count() == m0 + 1  # one extra mint, not served from the reuse window
    assert len(usher.mints(mark)) == 1
    assert usher.metric("usher_remints_total") == remints0 + 1
    # the backend saw the old cookie refused, then the retry with the new one
    seen = [(x["path"], x["status"]) for x in a.requests(bm) if x["path"] == "/whoami"]
    assert seen == [("/whoami", 401), ("/whoami", 200)], seen
    # and from now on the new session is used as is
    r2 = b.get("/whoami")
    assert r2.status == 200 and fwd(r2) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_revoked_cookie_on_websocket_upgrade_is_renewed(usher, t3):
    """An upgrade has no body: it is replayable, so it is renewed like a GET."""
    a = t3["alice"]
    b, old = established(usher)
    a.revoke()
    m0 = a.mint_count()
    ws = b.websocket("/ws")
    try:
        (app,) = mh.set_cookies(ws.response, "t3_session")
        assert app.value != old
        assert ws.echo("renewed") == (1, "renewed")
    finally:
        ws.close()
    assert a.mint_count() == m0 + 1


def test_revoked_cookie_on_post_with_body_relays_401_and_clears_bind(usher, t3):
    a = t3["alice"]
    b, old = established(usher)
    a.revoke()
    m0, remints0 = a.mint_count(), usher.metric("usher_remints_total")
    bm = a.mark()
    r = b.post("/echo", os.urandom(50000))
    assert r.status == 401, r
    binds = mh.set_cookies(r, "usher_bind")
    assert len(binds) == 1 and binds[0].cleared, r
    assert binds[0].attr("max-age") == "0", binds[0]
    assert a.mint_count() == m0  # not replayable: no mint
    assert usher.metric("usher_remints_total") == remints0
    assert [x["status"] for x in a.requests(bm)] == [401]  # sent once, not retried
    assert b.cookie("usher_bind") is None
    # the next request mints a fresh session (the refused one is not reused)
    r = b.get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != old and fwd(r) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_at_most_one_remint_per_request(usher, t3):
    """A backend that refuses even fresh sessions: one re-mint, one retry, then its 401."""
    a = t3["alice"]
    b, _ = established(usher)
    a.fault("app_401")
    m0, bm = a.mint_count(), a.mark()
    r = b.get("/whoami")
    assert r.status == 401, r
    assert a.mint_count() == m0 + 1
    assert [x["status"] for x in a.requests(bm) if x["path"] == "/whoami"] == [401, 401]


def test_first_visit_to_a_refusing_backend_is_bounded(usher, t3):
    a = t3["alice"]
    a.fault("app_401")
    m0 = a.mint_count()
    r = usher.browser("alice").get("/whoami")
    assert r.status == 401, r
    assert 1 <= a.mint_count() - m0 <= 2, a.mint_count() - m0


def test_rate_limit_answers_429_with_a_clear_page(start_usher, t3):
    a, b_ = t3["alice"], t3["bob"]
    u = start_usher({"alice": a, "bob": b_},
                    mint={"rate_limit": "2", "rate_limit_window": "1m", "reuse_window": "0"})
    m0 = a.mint_count()
    first = u.browser("alice")
    assert first.get("/whoami").status == 200
    assert u.browser("alice").get("/whoami").status == 200
    mark = u.mark()
    r = u.browser("alice").get("/whoami")
    assert r.status == 429, r
    assert r.content_type == "text/html", r
    assert "<" in r.text and len(r.text) > 20
    assert not mh.set_cookies(r, "t3_session")
    assert a.mint_count() == m0 + 2
    audits = u.audits(mark)
    assert len(audits) == 1, audits
    assert audits[0]["reason"] == "mint_rate_limited" and audits[0]["status"] == "429"
    assert audits[0].get("user") == "alice"
    # an API client gets JSON
    r = u.browser("alice", accept="application/json").get("/whoami")
    assert r.status == 429 and r.content_type == "application/json", r
    assert isinstance(r.json(), dict)
    # the limit is per user
    assert u.browser("bob").get("/whoami").status == 200
    # a request with a live session is not limited: only mints are
    assert first.get("/whoami").status == 200
    assert u.metric('usher_mints_total{result="ok"}') == 3
