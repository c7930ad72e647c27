"""The ground the mint tests stand on, without usher-dispatch: the fake t3 honours t3's auth
contract byte for byte, the mint wrapper derives everything from the user it runs as, the
sudoers rule is as narrow as the one Usher ships, and each fake runs under its user's uid."""

import json
import os

import mint_harness as mh

WRAPPER_ARGS = ["auth", "pairing", "create", "--base-dir", None, "--ttl", "5m", "--json"]


def mint_via_sudo(env, os_user):
    r = env.sudo_as_disp("-u", os_user, env.wrapper)
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    assert isinstance(out["credential"], str) and out["credential"]
    return out["credential"]


def bootstrap(b, body, ctype="application/json"):
    return b.direct("POST", "/api/auth/bootstrap", body=body, ctype=ctype)


# --- the fake t3's auth contract ---------------------------------------------------------

def test_pairing_cli_prints_credential_and_logs_one_mint(env, t3):
    a = t3["alice"]
    before = a.mint_count()
    r = mh.run_as(a.os_user, [mh.PY, env.bin("fake_t3.py"), "auth", "pairing", "create",
                              "--base-dir", a.base, "--ttl", "5m", "--json"])
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    assert set(out) >= {"credential", "expiresAt"}
    assert a.mint_count() == before + 1
    assert out["credential"] in a.issued()
    # Only a hash of the credential is stored, and the mint log does not hold it.
    with open(os.path.join(a.base, "mints.log")) as f:
        assert out["credential"] not in f.read()
    for name in os.listdir(os.path.join(a.base, "pairing")):
        with open(os.path.join(a.base, "pairing", name)) as f:
            assert out["credential"] not in f.read()


def test_bootstrap_contract_byte_for_byte(env, t3):
    a = t3["alice"]
    cred = mint_via_sudo(env, a.os_user)
    r = bootstrap(a, json.dumps({"credential": cred}).encode())
    assert r.status == 200, r
    (sc,) = r.header_all("set-cookie")
    assert [k for k, _ in r.headers if k.lower() == "set-cookie"] == ["set-cookie"]  # lower-case
    c = mh.SetCookie(sc)
    assert c.name == "t3_session" and c.value.count(".") == 2  # a signed JWT
    assert sc == "t3_session=%s; Path=/; Expires=%s; HttpOnly; SameSite=Lax" % (
        c.value, c.attr("expires"))
    lifetime = mh.http.cookiejar.http2time(c.attr("expires")) - mh.time.time()
    assert 30 * 86400 - 120 < lifetime <= 30 * 86400 + 1
    claims = json.loads(mh.base64.urlsafe_b64decode(c.value.split(".")[1] + "=="))
    assert claims["kind"] == "session" and claims["method"] == "browser-session-cookie"
    # one-time: the same credential again is refused
    assert bootstrap(a, json.dumps({"credential": cred}).encode()).status == 401
    # the session check and the app
    cookie = "t3_session=" + c.value
    s = a.direct("GET", "/api/auth/session", cookie=cookie)
    assert s.status == 200 and s.json()["authenticated"] is True
    assert a.direct("GET", "/api/auth/session").status == 401
    assert a.direct("GET", "/").status == 401
    assert a.direct("GET", "/", cookie="t3_session=" + c.value[:-2] + "xx").status == 401
    page = a.direct("GET", "/", cookie=cookie)
    assert page.status == 200 and a.os_user in page.text


def test_bootstrap_refuses_bad_payloads_with_400(env, t3):
    a = t3["alice"]
    cred = mint_via_sudo(env, a.os_user)
    bad = [b"", b"not json", b"[]", b"{}", b'{"credential": ""}', b'{"credential": "   "}',
           b'{"credential": 5}', b'{"token": "%s"}' % cred.encode(),
           b'{"credential": "%s", "extra": 1}' % cred.encode()]
    for body in bad:
        r = bootstrap(a, body)
        assert (r.status, r.body) == (400, b"Invalid bootstrap payload."), (body, r)
    # none of that consumed the credential; an unknown one is 401
    assert bootstrap(a, b'{"credential": "nope-nope-nope"}').status == 401
    assert bootstrap(a, json.dumps({"credential": cred}).encode()).status == 200


def test_revoke_makes_a_live_cookie_401(env, t3):
    a = t3["alice"]
    cred = mint_via_sudo(env, a.os_user)
    c = mh.SetCookie(bootstrap(a, json.dumps({"credential": cred}).encode())
                     .header("set-cookie"))
    cookie = "t3_session=" + c.value
    assert a.direct("GET", "/whoami", cookie=cookie).status == 200
    a.revoke()
    assert a.direct("GET", "/whoami", cookie=cookie).status == 401
    assert a.direct("GET", "/api/auth/session", cookie=cookie).status == 401


# --- the wrapper ----------------------------------------------------------------------

def test_wrapper_via_sudo_mints_as_the_target_user(env, t3):
    for who in ("alice", "bob"):
        b = t3[who]
        before = b.mint_count()
        mint_via_sudo(env, b.os_user)
        rec = b.mints()[-1]
        assert b.mint_count() == before + 1
        assert rec["uid"] == env.uid(b.os_user) and rec["user"] == b.os_user
        assert rec["argv"] == ["auth", "pairing", "create", "--base-dir",
                               "/home/%s/.t3" % b.os_user, "--ttl", "5m", "--json"]
        # a fixed minimal environment reaches t3, whatever the caller had
        assert rec["env_keys"] == ["HOME", "LANG", "LOGNAME", "PATH", "PWD", "USER"]


def test_wrapper_takes_no_arguments(env, t3):
    a = t3["alice"]
    before = a.mint_count()
    r = mh.run_as(a.os_user, [env.wrapper, "--base-dir", "/tmp"])
    assert r.returncode == 64 and "no arguments" in r.stderr, r
    assert a.mint_count() == before


def test_wrapper_ignores_environment(env, t3):
    """Home comes from the passwd entry, not $HOME; the t3 path is not read from the
    environment."""
    a = t3["alice"]
    before = a.mint_count()
    r = mh.run_as(a.os_user, [env.wrapper], env={"HOME": "/tmp", "T3_BIN": "/bin/false",
                                                  "PATH": "/tmp:/usr/bin:/bin"})
    assert r.returncode == 0, r
    assert a.mint_count() == before + 1
    assert a.mints()[-1]["argv"][4] == "/home/%s/.t3" % a.os_user


def test_wrapper_refuses_root(env):
    r = mh.run(["/bin/sh", env.wrapper], check=False)
    assert r.returncode == 77, r


def test_shipped_wrapper_defaults_to_usr_bin_t3():
    with open(os.path.join(mh.REPO, "scripts", "t3-mint")) as f:
        lines = [x for x in f.read().splitlines() if x.startswith("T3_BIN=")]
    assert lines == ["T3_BIN=/usr/bin/t3"]


# --- sudo ----------------------------------------------------------------------------

def test_sudoers_rule_is_installed_checked_and_narrow(env):
    st = os.stat(mh.SUDOERS_FILE)
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o440
    assert mh.run(["visudo", "-cf", mh.SUDOERS_FILE], check=False).returncode == 0
    r = env.sudo_as_disp("-l")
    assert r.returncode == 0, r
    rules = [x.strip() for x in r.stdout.split("may run the following commands")[1]
             .splitlines()[1:] if x.strip()]
    assert rules == ['(%%%s) NOPASSWD: %s ""' % (mh.GROUP, env.wrapper)], r.stdout


def test_sudo_negatives(env, t3):
    """The dispatcher's user can run the wrapper with no arguments as a mapped user, and
    nothing else: no other command, no arguments, not as root, not as a user outside the
    group, not with its own environment, no shell."""
    alice = mh.MAPPED["alice"]
    before = {w: b.mint_count() for w, b in t3.items()}
    attempts = [
        ["-u", alice, "/bin/id"],
        ["-u", alice, "/bin/sh", "-c", "id"],
        ["-u", alice, env.bin("t3"), "auth", "pairing", "create", "--base-dir", "/tmp/x",
         "--json"],
        ["-u", alice, env.wrapper, "x"],
        ["-u", alice, env.wrapper, ""],
        ["-u", "root", env.wrapper],
        ["-u", "#0", env.wrapper],
        [env.wrapper],
        ["-u", mh.OUTSIDER, env.wrapper],
        ["-u", mh.DISP, env.wrapper],
        # (-g with a group alice is a member of is allowed by sudo, and harmless: it still
        # runs as alice, with one of her own groups)
        ["-u", alice, "-g", "root", env.wrapper],
        ["-u", alice, "T3_BIN=/bin/sh", env.wrapper],
        ["-E", "-u", alice, env.wrapper],
        ["--preserve-env=PATH", "-u", alice, env.wrapper],
        ["-u", alice, "-s"],
        ["-u", alice, "-i"],
        ["-u", alice, "-e", "/etc/hostname"],
        ["-u", "root", "/bin/id"],
        ["/bin/id"],
    ]
    for args in attempts:
        r = env.sudo_as_disp(*args)
        assert r.returncode != 0, (args, r)
        assert "uid=" not in r.stdout and "credential" not in r.stdout, (args, r)
    assert {w: b.mint_count() for w, b in t3.items()} == before
    # and the one thing allowed does work
    mint_via_sudo(env, alice)


# --- uid isolation -------------------------------------------------------------------------

def test_each_fake_runs_as_its_user_and_cannot_read_the_other(env, t3):
    secret_of = {}
    for who, b in t3.items():
        path = os.path.join(b.home, "private.txt")
        mh._write(path, "%s's private file\n" % who, 0o600, owner=b.os_user)
        secret_of[who] = path
    for who, b in t3.items():
        cred = mint_via_sudo(env, b.os_user)
        c = mh.SetCookie(bootstrap(b, json.dumps({"credential": cred}).encode())
                         .header("set-cookie"))
        cookie = "t3_session=" + c.value
        me = b.direct("GET", "/whoami", cookie=cookie).json()
        assert me["uid"] == env.uid(b.os_user) and me["user"] == b.os_user
        other = "bob" if who == "alice" else "alice"
        own = b.direct("GET", "/read?path=" + secret_of[who], cookie=cookie).json()
        theirs = b.direct("GET", "/read?path=" + secret_of[other], cookie=cookie).json()
        assert own["ok"] is True
        assert theirs["ok"] is False and theirs["errno"] == 13, theirs  # EACCES
