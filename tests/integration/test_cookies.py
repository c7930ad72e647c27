"""Which cookies reach a backend: never Usher's own, never the SSO edge's."""

import json

import pytest


def forwarded_cookie(r):
    assert r.status == 200, r
    headers = json.loads(r.body)["headers"]
    values = [v for k, v in headers if k.lower() == "cookie"]
    assert len(values) <= 1, values  # one Cookie header upstream
    return values[0] if values else None


def test_sso_and_usher_cookies_are_not_forwarded(usher):
    r = usher.get("/whoami", headers=[("Cookie", "a=1; authentik_proxy_5f2c=SSO-SECRET; usher_bind=v1.1.x"),
                                      ("Cookie", "_oauth2_proxy=O2P; authelia_session=AS; keep=2")])
    assert forwarded_cookie(r) == "a=1; keep=2"


def test_only_stripped_cookies_means_no_cookie_header(usher):
    r = usher.get("/whoami", headers=[("Cookie", "authentik_proxy_x=1; usher_bind=2")])
    assert forwarded_cookie(r) is None


@pytest.mark.parametrize("setting,sent,expected", [
    # corp_* matches corp_a but not corporate: a prefix, not a substring; a
    # setting replaces the defaults.
    ("sso_session corp_*", "sso_session=1; corp_a=2; corporate=3; authentik_proxy_x=4",
     "corporate=3; authentik_proxy_x=4"),
    ("", "authentik_proxy_x=4; b=5", "authentik_proxy_x=4; b=5"),
])
def test_strip_cookies_is_configurable(start_usher, alice_bob, setting, sent, expected):
    u = start_usher(alice_bob, config={"server": {"strip_cookies": setting}})
    r = u.get("/whoami", headers=[("Cookie", sent)])
    assert forwarded_cookie(r) == expected
