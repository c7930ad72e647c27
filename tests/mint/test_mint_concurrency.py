"""Single flight: any number of concurrent first requests from a user cause exactly one mint;
they all wait for it and are then served. The reuse window covers a page's burst."""

import http.cookiejar
import threading

import mint_harness as mh


def concurrent_first_requests(usher, who_list, target="/whoami"):
    """One request per entry of who_list, all released at once, each from an empty jar."""
    barrier = threading.Barrier(len(who_list))
    results = [None] * len(who_list)

    def one(i, who):
        b = mh.Browser(usher, who, jar=http.cookiejar.CookieJar())
        barrier.wait()
        try:
            results[i] = b.get("%s?i=%d" % (target, i))
        except Exception as e:  # reported below with the others
            results[i] = e

    threads = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate(who_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_fifty_concurrent_first_requests_mint_once(usher, t3):
    a = t3["alice"]
    a.cli_delay(400)  # all fifty arrive while the one mint is in flight
    m0, mark = a.mint_count(), usher.mark()
    results = concurrent_first_requests(usher, ["alice"] * 50)
    bad = [r for r in results if not isinstance(r, mh.Response) or r.status != 200]
    assert not bad, bad[:3]
    assert a.mint_count() == m0 + 1
    assert len(usher.mints(mark)) == 1
    sids = {r.json()["sid"] for r in results}
    assert len(sids) == 1, sids
    # every one of them was served with the minted cookie injected and set in the browser
    values = {r.json()["session_cookies"][0] for r in results}
    assert len(values) == 1
    for r in results:
        apps = mh.set_cookies(r, "t3_session")
        assert [c.value for c in apps] == list(values), r
        assert len(mh.set_cookies(r, "usher_bind")) == 1, r
    assert usher.metric('usher_mints_total{result="ok"}') == 1


def test_concurrent_first_requests_of_two_users_mint_once_each(usher, t3):
    for b in t3.values():
        b.cli_delay(300)
    m0 = {w: b.mint_count() for w, b in t3.items()}
    who = ["alice", "bob"] * 20
    results = concurrent_first_requests(usher, who)
    for w, r in zip(who, results):
        assert isinstance(r, mh.Response) and r.status == 200, r
        assert r.json()["user"] == mh.MAPPED[w]
    assert {w: b.mint_count() - m0[w] for w, b in t3.items()} == {"alice": 1, "bob": 1}


def test_reuse_window_covers_sequential_first_requests(usher, t3):
    """A minted session is given to the user's requests that arrive without one within
    reuse_window (default 30 s): a second empty jar right after the first mints nothing."""
    a = t3["alice"]
    m0 = a.mint_count()
    r1 = usher.browser("alice").get("/whoami")
    r2 = usher.browser("alice").get("/whoami")
    assert r1.status == 200 and r2.status == 200
    assert a.mint_count() == m0 + 1
    assert r1.json()["sid"] == r2.json()["sid"]
    assert mh.set_cookies(r2, "t3_session") and mh.set_cookies(r2, "usher_bind")


def test_reuse_window_zero_mints_per_sequential_first_request(start_usher, t3):
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"reuse_window": "0"})
    m0 = a.mint_count()
    r1 = u.browser("alice").get("/whoami")
    r2 = u.browser("alice").get("/whoami")
    assert r1.status == 200 and r2.status == 200
    assert a.mint_count() == m0 + 2
    assert r1.json()["sid"] != r2.json()["sid"]
