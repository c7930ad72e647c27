"""Edges of minting and injection: Expect: 100-continue and pipelining on a first visit,
partial or duplicated cookies, cookie attributes the app gets wrong, the bind cookie's age,
users the sudoers rule does not cover, failures under concurrency, what the exchange request
carries, and caching of a response that sets a session cookie."""

import hashlib
import http.cookiejar
import json
import os
import signal
import threading
import time

import mint_harness as mh


def fwd(r):
    return mh.cookie_pairs(r.json()["cookie"])


def fail_cmd(env, *args):
    return " ".join([mh.PY, env.bin("fail_mint.py")] + list(args))


def test_first_post_with_expect_100_continue(usher, t3):
    a = t3["alice"]
    a.cli_delay(200)
    m0 = a.mint_count()
    b = usher.browser("alice")
    data = os.urandom(300000)
    hdrs = b.headers("/echo", "POST", ..., [("Expect", "100-continue"),
                                            ("Content-Length", str(len(data)))], ...)
    with mh.HttpConn(usher.proxy_port) as c:
        c.request("POST", "/echo", hdrs, host=False)
        # a client waits for 100 Continue (curl: up to 1 s) before it sends the body
        c.sock.settimeout(5)
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        assert c.buf.startswith(b"HTTP/1.1 100 "), bytes(c.buf[:200])
        c.send(data)
        r = c.response("POST")
    assert r.status == 200, r
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert a.mint_count() == m0 + 1
    assert mh.set_cookies(r, "t3_session")


def test_pipelined_first_requests_on_one_connection(usher, t3):
    a = t3["alice"]
    m0 = a.mint_count()
    b = usher.browser("alice")
    hdrs = b.headers("/whoami", "GET", ..., [], ...)
    head = "".join("%s: %s\r\n" % kv for kv in hdrs)
    with mh.HttpConn(usher.proxy_port) as c:
        c.send(("GET /whoami?1 HTTP/1.1\r\n%s\r\nGET /whoami?2 HTTP/1.1\r\n%s\r\n"
                % (head, head)).encode())
        r1 = c.response()
        r2 = c.response()
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    assert r1.json()["target"] == "/whoami?1" and r2.json()["target"] == "/whoami?2"
    assert r1.json()["sid"] == r2.json()["sid"]
    assert a.mint_count() == m0 + 1


def test_valid_bind_but_no_app_cookie_gets_a_session(start_usher, t3):
    """The app cookie went (the app logged out, the browser dropped it): the bind cookie alone
    vouches for nothing to forward, so Usher mints (or reuses) and injects one."""
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"reuse_window": "0"})
    b = u.browser("alice")
    assert b.get("/whoami").status == 200
    b.drop_cookie("t3_session")
    m0 = a.mint_count()
    r = b.get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert fwd(r) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_duplicate_app_cookie_is_forwarded_once(usher, t3):
    a = t3["alice"]
    b = usher.browser("alice")
    assert b.get("/whoami").status == 200
    good = b.cookie("t3_session")
    for extra in ("t3_session=junk-junk-junk-0123", ):
        r = b.get("/whoami", headers=[("Cookie", extra)])
        assert r.status == 200, r
        app = [v for n, v in fwd(r) if n == "t3_session"]
        assert len(app) == 1, fwd(r)
        assert "usher_bind" not in [n for n, _ in fwd(r)]
    del good, a


def test_bind_cookie_in_a_second_cookie_header_is_never_forwarded(usher, t3):
    b = usher.browser("alice")
    assert b.get("/whoami").status == 200
    app, bind = b.cookie("t3_session"), b.cookie("usher_bind")
    with mh.HttpConn(usher.proxy_port) as c:
        hdrs = [("Host", "usher.test"), (mh.IDENTITY, "alice"), ("Accept", "text/html"),
                ("Cookie", "t3_session=" + app), ("Cookie", "usher_bind=" + bind)]
        c.request("GET", "/whoami", hdrs, host=False)
        r = c.response()
    assert r.status == 200, r
    names = [n for n, _ in fwd(r)]
    assert "usher_bind" not in names and names.count("t3_session") == 1, fwd(r)
    assert bind not in json.dumps(r.json())


def test_odd_cookie_attributes_from_the_exchange_are_normalised(usher, t3):
    a = t3["alice"]
    a.fault("bootstrap_odd_attrs")  # Domain=127.0.0.1; Path=/api; SameSite=None; Secure
    r = usher.browser("alice").get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.attr("path") == "/", app
    assert app.attr("domain") is None, app
    assert app.attr("httponly") is True, app
    assert str(app.attr("samesite")).lower() == "lax", app
    assert app.attr("secure") is None, app  # secure_cookies = no in this config
    assert fwd(r) == [("t3_session", app.value)]


def test_bind_cookie_older_than_bind_max_age_counts_as_absent(start_usher, t3):
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"bind_max_age": "1s", "reuse_window": "0"})
    b = u.browser("alice")
    assert b.get("/whoami").status == 200
    first = b.cookie("t3_session")
    m0 = a.mint_count()

    def reminted():
        r = b.get("/whoami")
        assert r.status == 200, r
        return r if mh.set_cookies(r, "t3_session") else None

    r = mh.wait_for(reminted, 5, interval=0.1, what="the bind cookie to age out")
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != first and fwd(r) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_user_outside_the_sudoers_group_cannot_be_minted_for(env, start_usher, t3):
    """The map names an account the sudoers rule does not cover: sudo refuses, 502."""
    u = start_usher({}, map_lines=["eve=%s" % mh.OUTSIDER], start=False)
    with open(u.state_file, "w") as f:
        json.dump({"version": 1, "users": {mh.OUTSIDER: {
            "kind": "unit", "address": "127.0.0.1", "port": t3["alice"].port}}}, f)
    u.start()
    m0 = t3["alice"].mint_count()
    mark = u.mark()
    r = u.browser("eve").get("/whoami")
    assert r.status == 502, r
    (audit,) = u.audits(mark)
    assert audit["detail"] == "exit_status", audit
    assert t3["alice"].mint_count() == m0


def test_root_is_never_minted_for(start_usher, t3):
    u = start_usher({}, map_lines=["boss=root"], start=False)
    with open(u.state_file, "w") as f:
        json.dump({"version": 1, "users": {"root": {
            "kind": "unit", "address": "127.0.0.1", "port": t3["alice"].port}}}, f)
    u.start()
    m0 = t3["alice"].mint_count()
    r = u.browser("boss").get("/whoami")
    assert r.status == 403, r
    assert not u.mints()
    assert t3["alice"].mint_count() == m0


def test_concurrent_first_requests_share_one_failing_mint(env, start_usher, t3):
    u = start_usher({"alice": t3["alice"]}, start=False, mint={"command": "PLACEHOLDER"})
    count = os.path.join(u.run_dir, "runs")
    with open(u.config_file) as f:
        text = f.read().replace("PLACEHOLDER", fail_cmd(env, "exit", "3", "--count", count,
                                                        "--delay-ms", "400"))
    mh._write(u.config_file, text)
    u.start()
    mark = u.mark()
    n = 12
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        b = mh.Browser(u, "alice", jar=http.cookiejar.CookieJar())
        barrier.wait()
        results[i] = b.get("/whoami")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for r in results] == [502] * n, results
    with open(count) as f:
        runs = len(f.read().split())
    assert runs == 1, "%d command runs for %d concurrent requests" % (runs, n)
    audits = u.audits(mark, reason="mint_failed")
    assert len(audits) == n, audits  # one per request that failed


def test_exchange_body_escapes_the_credential(env, start_usher, t3):
    """A credential that needs JSON escaping still makes a well-formed bootstrap body (t3
    answers 401 to the unknown credential, not 400 to a broken payload)."""
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"command": fail_cmd(env, "weird-credential")})
    bm = a.mark()
    r = u.browser("alice").get("/whoami")
    assert r.status == 502, r
    boots = [x for x in a.requests(bm) if x["path"] == "/api/auth/bootstrap"]
    assert all(x["result"] != "invalid_payload" for x in boots), boots


def test_exchange_request_carries_nothing_of_the_browser(usher, t3):
    """The bootstrap request is Usher's own: no browser cookie, no identity header."""
    a = t3["alice"]
    bm = a.mark()
    b = usher.browser("alice")
    b.set_cookie("theme", "dark")
    assert b.get("/whoami").status == 200
    boots = [x for x in a.requests(bm) if x["path"] == "/api/auth/bootstrap"]
    assert len(boots) == 1, boots
    names = boots[0]["header_names"]
    assert "cookie" not in names and mh.IDENTITY.lower() not in names, names
    assert boots[0]["content_type"].startswith("application/json")
    checks = [x for x in a.requests(bm) if x["path"] == "/api/auth/session"]
    assert len(checks) == 1 and checks[0]["cookie_names"] == ["t3_session"], checks


def test_response_that_sets_a_session_is_not_publicly_cacheable(usher, t3):
    """A first visit can land on an asset the app marks `public`: with a session cookie in
    it, a shared cache (the seed deployment has Cloudflare in front) must not keep it."""
    r = usher.browser("alice").get("/static")
    assert r.status == 200, r
    assert mh.set_cookies(r, "t3_session")
    cc = ",".join(r.header_all("cache-control")).lower()
    assert "public" not in cc and ("private" in cc or "no-store" in cc), r.headers


def test_slow_exchange_is_bounded_by_the_mint_timeout(start_usher, t3):
    """The timeout covers the whole mint, the exchange included."""
    a = t3["alice"]
    a.fault("bootstrap_slow")
    u = start_usher({"alice": a}, mint={"timeout": "1s"})
    mark = u.mark()
    t0 = time.monotonic()
    r = u.browser("alice").get("/whoami")
    elapsed = time.monotonic() - t0
    assert r.status == 502, r
    assert elapsed < 3, elapsed
    (audit,) = u.audits(mark)
    assert audit["detail"] in ("timeout", "exchange_failed"), audit


def test_reload_during_a_mint_drops_nothing(start_usher, t3):
    a = t3["alice"]
    a.cli_delay(600)
    u = start_usher({"alice": a})
    out = {}
    t = threading.Thread(target=lambda: out.update(r=u.browser("alice").get("/whoami")))
    t.start()
    mh.wait_for(lambda: mint_processes(u.env, a.os_user), 5, what="the mint to be running")
    mark = u.mark()
    u.proc.send_signal(signal.SIGHUP)
    u.wait_record("reload", mark)
    t.join(15)
    assert out["r"].status == 200, out["r"]
    assert mh.set_cookies(out["r"], "t3_session")


def test_shutdown_during_a_mint_leaves_no_process(env, start_usher, t3):
    """usher-dispatch stopped (SIGTERM, short drain) while a mint runs through sudo: sudo,
    the wrapper and t3 must not outlive it."""
    a = t3["alice"]
    a.cli_delay(30000)
    u = start_usher({"alice": a}, config={"timeouts": {"shutdown_drain": "300ms"}})
    out = {}

    def visit():
        try:
            out["r"] = u.browser("alice").get("/whoami")
        except Exception as e:  # the connection is cut: fine
            out["r"] = e

    t = threading.Thread(target=visit)
    t.start()
    mh.wait_for(lambda: mint_processes(env, a.os_user), 5, what="the mint to be running")
    u.stop()
    t.join(15)
    try:
        mh.wait_for(lambda: not mint_processes(env, a.os_user), 5,
                    what="the mint processes to be gone")
    except TimeoutError:
        raise AssertionError("left running after usher-dispatch stopped: %r"
                             % mint_processes(env, a.os_user))


def mint_processes(env, os_user):
    """[(pid, cmdline)] of any part of the sudo mint path still running."""
    out = []
    for pid in mh.pids_of_uid(env.uid(os_user)) + mh.pids_of_uid(0):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "pairing create" in cmd or env.wrapper in cmd:
            out.append((pid, cmd))
    return out
