"""A second mint profile, not t3, by configuration alone: "notes", whose CLI prints
{"data": {"otp": ...}}, whose exchange is a form POST to /login (otp=..., percent-encoded),
and whose cookie is notes_sid (set without HttpOnly or SameSite, which Usher adds)."""

import os

import pytest

import mint_harness as mh


@pytest.fixture
def notes(env):
    b = env.notes_backend(mh.MAPPED["alice"])
    yield b
    b.stop()


def notes_profile(notes, **extra):
    # the --tag argument shows how the command line is split: one word, kept literally,
    # no shell expansion
    p = {"command": notes.command + ' --tag "a b;$HOME|`id`"',
         "credential_pointer": "/data/otp",
         "exchange_method": "POST", "exchange_path": "/login",
         "exchange_body": "otp={credential}",
         "exchange_content_type": "application/x-www-form-urlencoded",
         "cookie_name": "notes_sid", "session_check_path": ""}
    p.update(extra)
    return p


def test_notes_first_visit_by_configuration_only(env, start_usher, notes):
    u = start_usher({"alice": notes}, mint=notes_profile(notes))
    b = u.browser("alice")
    mark = u.mark()
    r = b.get("/")
    assert r.status == 200, r
    body = r.json()
    assert body["app"] == "notes"
    (sid,) = mh.set_cookies(r, "notes_sid")
    assert sid.attr("httponly") is True and sid.attr("path") == "/"
    assert str(sid.attr("samesite")).lower() == "lax" and sid.attr("secure") is None
    assert len(mh.set_cookies(r, "usher_bind")) == 1
    assert mh.cookie_pairs(body["cookie"]) == [("notes_sid", sid.value)]
    assert not mh.set_cookies(r, "t3_session")
    # one OTP minted, with the placeholders filled in and the arguments kept as words
    otps = notes.otps()
    assert len(otps) == 1
    o = otps[0]
    assert o["port"] == notes.port
    assert o["tag"] == "a b;$HOME|`id`"
    assert o["uid"] == env.uid(mh.DISP)
    # a fixed minimal environment: nothing of the dispatcher's own leaks in
    assert "USHER_TEST_MARKER" not in o["env"], o["env"]
    assert len(u.mints(mark, result="ok")) == 1
    # the exchange was the configured one and the OTP (with + and /) arrived intact
    logins = [x for x in notes.requests() if x["path"] == "/login"]
    assert [x["result"] for x in logins] == ["ok"], logins
    # steady state
    r2 = b.get("/")
    assert r2.status == 200 and not mh.set_cookies(r2, "notes_sid")
    assert len(notes.otps()) == 1


def test_notes_profile_with_a_wrong_pointer_fails_cleanly(start_usher, notes):
    u = start_usher({"alice": notes}, mint=notes_profile(notes, credential_pointer="/otp"))
    mark = u.mark()
    r = u.browser("alice", accept="application/json").get("/")
    assert r.status == 502 and r.content_type == "application/json", r
    (a,) = u.audits(mark)
    assert a["detail"] == "no_credential", a


def test_notes_profile_with_the_wrong_cookie_name_fails_cleanly(start_usher, notes):
    u = start_usher({"alice": notes}, mint=notes_profile(notes, cookie_name="sessionid"))
    mark = u.mark()
    r = u.browser("alice").get("/")
    assert r.status == 502, r
    (a,) = u.audits(mark)
    assert a["detail"] == "no_cookie", a


def test_t3_defaults_are_what_the_example_config_says():
    """The defaults tested everywhere else are t3's, documented in usher.conf.example."""
    with open(os.path.join(mh.REPO, "dispatch", "usher.conf.example")) as f:
        text = f.read().split("[mint]", 1)[1]
    kv = dict(line.split(" = ", 1) for line in text.splitlines()
              if " = " in line and not line.startswith(";"))
    assert kv["command"] == "/usr/bin/sudo -n -u {os_user} /usr/libexec/usher/t3-mint"
    assert kv["credential_pointer"] == "/credential"
    assert kv["exchange_path"] == "/api/auth/bootstrap"
    assert kv["exchange_body"] == '{"credential":"{credential}"}'
    assert kv["exchange_content_type"] == "application/json"
    assert kv["cookie_name"] == "t3_session"
    assert kv["session_check_path"] == "/api/auth/session"
