"""The bind cookie ties a browser's app session to the SSO identity that earned it: a second
person on the same browser (same cookie jar) never reaches the first person's session, a bind
cookie that does not verify counts as none, and key rotation keeps sessions alive."""

import os

import mint_harness as mh


def fwd(r):
    return mh.cookie_pairs(r.json()["cookie"])


def test_second_person_on_the_same_jar_gets_their_own_session(env, usher, t3):
    a, b_ = t3["alice"], t3["bob"]
    alice = usher.browser("alice")
    r = alice.get("/whoami")
    assert r.status == 200, r
    alice_cookie = alice.cookie("t3_session")
    alice_bind = alice.cookie("usher_bind")
    assert alice_cookie and alice_bind

    # bob signs in on the same browser: the jar still holds alice's cookies
    bm0 = b_.mint_count()
    bob = usher.browser("bob", jar=alice.jar)
    assert "t3_session=" + alice_cookie in bob.cookie_header("/whoami")
    r = bob.get("/whoami")
    assert r.status == 200, r
    body = r.json()
    assert body["user"] == b_.os_user and body["uid"] == env.uid(b_.os_user)
    (bob_app,) = mh.set_cookies(r, "t3_session")
    assert bob_app.value != alice_cookie
    assert fwd(r) == [("t3_session", bob_app.value)]  # alice's cookie never forwarded
    assert alice_cookie not in "".join(body["cookie"])
    assert b_.mint_count() == bm0 + 1  # bob's own mint
    (bob_bind,) = mh.set_cookies(r, "usher_bind")
    assert bob_bind.value != alice_bind

    # and back: alice on the jar that now holds bob's session reaches only her own app
    r = alice.get("/whoami")
    assert r.status == 200, r
    body = r.json()
    assert body["user"] == a.os_user
    assert bob_app.value not in "".join(body["cookie"])
    assert [n for n, _ in fwd(r)] == ["t3_session"]


def test_identity_not_mapped_gets_no_session(usher, t3):
    """A name that is not in the map is refused before any mint."""
    m0 = {w: b.mint_count() for w, b in t3.items()}
    r = usher.browser("mallory").get("/whoami")
    assert r.status == 403, r
    assert not mh.set_cookies(r, "t3_session")
    assert {w: b.mint_count() for w, b in t3.items()} == m0


def test_tampered_bind_cookie_counts_as_none(start_usher, t3):
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"reuse_window": "0"})
    b = u.browser("alice")
    assert b.get("/whoami").status == 200
    old_app, old_bind = b.cookie("t3_session"), b.cookie("usher_bind")
    m0 = a.mint_count()
    flipped = old_bind[:-1] + ("A" if old_bind[-1] != "A" else "B")
    b.set_cookie("usher_bind", flipped)
    r = b.get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != old_app
    assert fwd(r) == [("t3_session", app.value)]  # the unverified one was not forwarded
    assert a.mint_count() == m0 + 1
    (bind,) = mh.set_cookies(r, "usher_bind")
    assert bind.value != flipped  # (it may equal old_bind: same identity, same second)


def test_app_cookie_without_bind_cookie_is_not_forwarded(start_usher, t3):
    a = t3["alice"]
    u = start_usher({"alice": a}, mint={"reuse_window": "0"})
    b = u.browser("alice")
    assert b.get("/whoami").status == 200
    old_app = b.cookie("t3_session")
    b.drop_cookie("usher_bind")
    r = b.get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != old_app and fwd(r) == [("t3_session", app.value)]


def test_bind_cookie_of_another_usher_key_counts_as_none(start_usher, t3):
    """Same person, but a bind cookie signed with a key this Usher does not have."""
    a = t3["alice"]
    u1 = start_usher({"alice": a})
    b = u1.browser("alice")
    assert b.get("/whoami").status == 200
    old_app = b.cookie("t3_session")
    u1.stop()
    u2 = start_usher({"alice": a})  # a new random key, no previous key
    m0 = a.mint_count()
    r = mh.Browser(u2, "alice", jar=b.jar).get("/whoami")
    assert r.status == 200, r
    (app,) = mh.set_cookies(r, "t3_session")
    assert app.value != old_app and fwd(r) == [("t3_session", app.value)]
    assert a.mint_count() == m0 + 1


def test_key_rotation_accepts_and_resigns_previous_key(start_usher, t3):
    a = t3["alice"]
    k1, k2 = os.urandom(32), os.urandom(48)
    u1 = start_usher({"alice": a}, key=k1)
    b = u1.browser("alice")
    assert b.get("/whoami").status == 200
    app1, bind1 = b.cookie("t3_session"), b.cookie("usher_bind")
    u1.stop()

    u2 = start_usher({"alice": a}, key=k2, previous_key=k1)
    m0 = a.mint_count()
    b2 = mh.Browser(u2, "alice", jar=b.jar)
    r = b2.get("/whoami")
    assert r.status == 200, r
    assert fwd(r) == [("t3_session", app1)]  # the same session, no mint
    assert a.mint_count() == m0
    binds = mh.set_cookies(r, "usher_bind")
    assert len(binds) == 1 and binds[0].value != bind1 and not binds[0].cleared, r
    u2.stop()

    # the re-signed cookie verifies with k2 alone
    u3 = start_usher({"alice": a}, key=k2)
    r = mh.Browser(u3, "alice", jar=b.jar).get("/whoami")
    assert r.status == 200 and fwd(r) == [("t3_session", app1)], r
    assert a.mint_count() == m0


def test_bind_cookie_does_not_move_to_another_backend(start_usher, t3):
    """The bind covers the backend: after alice's backend moves (state file), her bound cookie
    for the old one is not sent to the new one."""
    a = t3["alice"]
    u1 = start_usher({"alice": a})
    b = u1.browser("alice")
    assert b.get("/whoami").status == 200
    old_app = b.cookie("t3_session")
    u1.stop()
    # same key, same user, but the state file now names another port for alice
    other = mh.closed_port()
    u2 = start_usher({"alice": other}, key=u1.key)
    m0 = a.mint_count()
    r = mh.Browser(u2, "alice", jar=b.jar).get("/whoami")
    # the backend is unreachable, so the mint's exchange fails: what matters is that Usher did
    # not treat the old bind as valid (it tried to mint rather than forward the old cookie)
    assert r.status == 502, r
    assert u2.audits(reason="mint_failed"), u2.output()
    assert a.mint_count() == m0 + 1
    del old_app


def test_bind_key_file_must_be_private(env, t3):
    a = t3["alice"]
    for mode, content in ((0o644, os.urandom(32)), (0o640, os.urandom(32)),
                          (0o600, os.urandom(31))):
        u = env.new_usher({"alice": a})
        os.chmod(u.key_file, mode)
        with open(u.key_file, "wb") as f:
            f.write(content)
        r = u.check_config()
        started_ok = None
        try:
            u.start(timeout=5)
            started_ok = True
        except RuntimeError:
            started_ok = False
        finally:
            u.stopped_by_us = True
            u.stop()
        assert not started_ok, "started with a %o key file of %d bytes" % (mode, len(content))
        assert "bind" in (u.output() + r.stdout + r.stderr).lower(), u.output()


def test_uid_isolation_through_usher(env, usher, t3):
    """alice's app, reached through Usher, runs as alice and cannot read bob's files."""
    paths = {}
    for who, b in t3.items():
        paths[who] = os.path.join(b.home, "private-%s.txt" % who)
        mh._write(paths[who], "private\n", 0o600, owner=b.os_user)
    alice = usher.browser("alice")
    me = alice.get("/whoami").json()
    assert me["uid"] == env.uid(mh.MAPPED["alice"])
    assert alice.get("/read?path=" + paths["alice"]).json()["ok"] is True
    theirs = alice.get("/read?path=" + paths["bob"]).json()
    assert theirs["ok"] is False and theirs["errno"] == 13, theirs
