"""Routing by identity, and what the backend sees of the request."""

import pytest

from harness import IDENTITY


def headers_of(r):
    return [tuple(h) for h in r.json()["headers"]]


def values(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def test_each_user_reaches_their_own_backend(usher, alice_bob):
    for user in ("alice", "bob"):
        r = usher.get("/whoami", user=user)
        assert r.status == 200, r
        assert r.json()["name"] == user
        assert r.header("X-Backend-Name") == user
    assert alice_bob["alice"].connections() == 1
    assert alice_bob["bob"].connections() == 1


def test_routing_is_per_request_on_one_client_connection(usher):
    # An SSO edge multiplexes many people over its keep-alive connections:
    # every request is routed by its own identity, never by the connection's past.
    with usher.connect() as c:
        for user in ("alice", "bob", "alice", "bob", "bob", "alice"):
            c.request("GET", "/whoami", [(IDENTITY, user)])
            r = c.response()
            assert r.status == 200 and r.json()["name"] == user, r


def test_access_log_line(usher, alice_bob):
    mark = usher.mark()
    r = usher.get("/whoami?x=1", user="bob")
    assert r.status == 200
    rec = usher.wait_record("access", since=mark)
    assert rec["user"] == "bob" and rec["os_user"] == "bob"
    assert rec["method"] == "GET" and rec["target"] == "/whoami?x=1"
    assert rec["status"] == "200"
    assert rec["backend"] == alice_bob["bob"].address
    assert rec["client"].startswith("127.0.0.1:")


def test_sso_name_differs_from_os_user(start_usher, alice_bob):
    u = start_usher(alice_bob, map_lines=["alice.smith@example.com=alice", "bob=bob"])
    r = u.get("/whoami", user="alice.smith@example.com")
    assert r.status == 200 and r.json()["name"] == "alice", r
    assert values(headers_of(r), "X-Forwarded-User") == ["alice.smith@example.com"]
    # The OS user name is not an identity.
    assert u.get("/whoami", user="alice").status == 403


def test_identity_header_is_not_forwarded(usher):
    r = usher.get("/whoami", user="alice")
    assert r.status == 200
    names = [k.lower().replace("_", "-") for k, _ in headers_of(r)]
    assert "x-authentik-username" not in names, headers_of(r)


@pytest.mark.parametrize("spelling", ["x-authentik-username", "X-AUTHENTIK-USERNAME",
                                      "x-Authentik-UserName"])
def test_identity_header_case_variants_are_the_identity_and_stripped(usher, spelling):
    with usher.connect() as c:
        c.request("GET", "/whoami", [(spelling, "bob")])
        r = c.response()
    assert r.status == 200, r
    assert r.json()["name"] == "bob"
    names = [k.lower().replace("_", "-") for k, _ in headers_of(r)]
    assert "x-authentik-username" not in names, headers_of(r)


def test_underscore_variant_alone_is_not_an_identity(usher, alice_bob):
    # CVE-2025-64484: some servers fold `_` into `-`. It must never be believed.
    mark = usher.mark()
    with usher.connect() as c:
        c.request("GET", "/whoami", [("X_authentik_username", "alice")])
        r = c.response()
    assert r.status == 401, r
    usher.wait_record("audit", since=mark, reason="missing_identity")
    assert alice_bob["alice"].connections() == 0


def test_underscore_variant_beside_the_identity_is_never_forwarded(usher):
    with usher.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice"), ("X_authentik_username", "bob"),
                                     ("x_AUTHENTIK_username", "bob")])
        r = c.response()
    # Refusing the request is as good as stripping the variant; forwarding it is not.
    assert r.status in (200, 400), r
    if r.status == 200:
        assert r.json()["name"] == "alice"
        names = [k.lower().replace("_", "-") for k, _ in headers_of(r)]
        assert "x-authentik-username" not in names, headers_of(r)


def test_forwarded_headers(usher):
    with usher.connect() as c:
        c.request("GET", "/whoami", [("Host", "apps.example.com"), (IDENTITY, "alice"),
                                     ("X-Forwarded-User", "mallory")])
        r = c.response()
    assert r.status == 200, r
    h = headers_of(r)
    assert values(h, "Host") == ["apps.example.com"]
    # Set to the SSO name; whatever the client claimed is replaced, not appended.
    assert values(h, "X-Forwarded-User") == ["alice"]
    xff = values(h, "X-Forwarded-For")
    assert len(xff) == 1 and xff[0].split(",")[-1].strip() == "127.0.0.1", h
    assert values(h, "X-Forwarded-Proto") == ["http"]
    assert values(h, "X-Forwarded-Host") == ["apps.example.com"]


def test_x_forwarded_for_from_trusted_proxy_is_extended(usher):
    with usher.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice"), ("X-Forwarded-For", "203.0.113.7")])
        r = c.response()
    xff = values(headers_of(r), "X-Forwarded-For")
    assert len(xff) == 1
    assert [p.strip() for p in xff[0].split(",")] == ["203.0.113.7", "127.0.0.1"], xff


def test_hop_by_hop_request_headers_are_removed(usher):
    with usher.connect() as c:
        c.request("GET", "/whoami", [
            (IDENTITY, "alice"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "for-the-proxy-only"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Public", "kept"),
        ])
        r = c.response()
    assert r.status == 200, r
    h = headers_of(r)
    lower = [k.lower() for k, _ in h]
    for gone in ("x-secret", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"):
        assert gone not in lower, (gone, h)
    # The proxy may send its own Connection header to the backend, but not the client's.
    for v in values(h, "Connection"):
        assert {t.strip().lower() for t in v.split(",")} <= {"keep-alive", "close"}, h
    assert values(h, "X-Public") == ["kept"]


def test_hop_by_hop_response_headers_are_removed(usher):
    r = usher.get("/hop")
    assert r.status == 200 and r.body == b"hop\n", r
    lower = [k.lower() for k, _ in r.headers]
    assert "x-backend-secret" not in lower, r.headers
    assert "proxy-connection" not in lower, r.headers
    assert r.header("X-Backend-Public") == "fine"


def test_forward_user_header_can_be_renamed(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"forward_user_header": "X-Remote-User"}})
    with u.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice"), ("X-Remote-User", "mallory")])
        r = c.response()
    h = headers_of(r)
    assert values(h, "X-Remote-User") == ["alice"], h


def test_forward_user_header_can_be_turned_off(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"forward_user_header": ""}})
    r = u.get("/whoami")
    assert r.status == 200, r
    assert values(headers_of(r), "X-Forwarded-User") == []


def test_custom_identity_header(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"server": {"identity_header": "Remote-User"}})
    with u.connect() as c:
        c.request("GET", "/whoami", [("Remote-User", "bob")])
        r = c.response()
        assert r.status == 200 and r.json()["name"] == "bob", r
        assert "remote-user" not in [k.lower() for k, _ in headers_of(r)]
    with u.connect() as c:
        c.request("GET", "/whoami", [("Remote_User", "bob")])
        assert c.response().status == 401


def test_demo_page_through_the_proxy(usher):
    r = usher.get("/", user="bob")
    assert r.status == 200
    assert "Hello from bob's backend" in r.text
    assert "X-Forwarded-User: bob" in r.text


def test_underscore_variant_of_forwarded_user_is_not_forwarded(usher):
    # The backend trusts X-Forwarded-User; a client-supplied spelling that a
    # backend framework might fold into it (CVE-2025-64484) must not get through.
    with usher.connect() as c:
        c.request("GET", "/whoami", [(IDENTITY, "alice"), ("X_Forwarded_User", "mallory"),
                                     ("x-forwarded_user", "mallory")])
        r = c.response()
    assert r.status in (200, 400), r
    if r.status == 200:
        h = headers_of(r)
        fu = [v for k, v in h if k.lower().replace("_", "-") == "x-forwarded-user"]
        assert fu == ["alice"], h


def test_request_target_is_forwarded_unchanged(usher, alice_bob):
    targets = ["/whoami?q=%2F..%2F&x=%22y%22", "/whoami/../whoami", "//whoami",
               "/whoami?a=1&a=2&empty=&%C3%A9=%E2%82%AC"]
    for target in targets:
        r = usher.get(target)
        # The backend answers 404 for paths it does not know; what matters is
        # that it saw the exact target.
        assert r.header("X-Backend-Name") == "alice", r
    assert [rec["target"] for rec in alice_bob["alice"].requests()] == targets


def test_request_body_on_get_is_forwarded(usher):
    r = usher.get("/whoami", body=b"0123456789")
    assert r.status == 200 and r.json()["body_bytes"] == 10, r


def test_identity_in_request_trailers_never_reaches_the_backend(usher, alice_bob):
    with usher.connect() as c:
        c.request("POST", "/upload", [(IDENTITY, "alice"), ("Transfer-Encoding", "chunked")])
        c.send(b"3\r\nabc\r\n0\r\n%s: bob\r\nX_authentik_username: bob\r\nX-Forwarded-User: bob\r\n\r\n"
               % IDENTITY.encode())
        r = c.response()
    assert r.status in (200, 400), r
    for rec in alice_bob["alice"].records("complete"):
        for line in rec["trailers"]:
            name = line.split(":", 1)[0].strip().lower().replace("_", "-")
            assert name not in ("x-authentik-username", "x-forwarded-user"), rec


def test_second_sso_name_for_one_os_user_needs_shared(start_usher, alice_bob):
    u = start_usher(alice_bob, map_lines=["alice=alice", "alice2=alice", "bob=bob",
                                          "bob2=bob shared=yes", "# comment", ""])
    assert u.get("/whoami", user="alice").status == 200
    assert u.get("/whoami", user="alice2").status == 403
    assert u.get("/whoami", user="bob").json()["name"] == "bob"
    assert u.get("/whoami", user="bob2").json()["name"] == "bob"
