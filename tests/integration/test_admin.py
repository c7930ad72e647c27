"""The admin listener: health, readiness and Prometheus metrics."""

import re

from harness import HttpConn, WsClient, wait_for


def test_healthz_and_readyz(usher):
    r = usher.admin_get("/healthz")
    assert r.status == 200 and r.text.strip() == "ok", r
    r = usher.admin_get("/readyz")
    assert r.status == 200, r


def test_admin_is_not_the_proxy(usher, alice_bob):
    # The proxy port does not serve admin pages (they go to the user's backend),
    # and the admin port does not proxy.
    r = usher.get("/metrics", user="alice")
    assert r.status == 404 and r.header("X-Backend-Name") == "alice", r
    with HttpConn(usher.admin_port) as c:
        c.request("GET", "/whoami", [("X-authentik-username", "alice")])
        assert c.response().status == 404
    assert len(alice_bob["alice"].requests()) == 1


def test_metrics_exposition(usher):
    assert usher.get("/whoami").status == 200
    r = usher.admin_get("/metrics")
    assert r.status == 200
    assert r.header("content-type", "").startswith("text/plain"), r
    text = r.text
    for name in ("usher_requests_total", "usher_connections_active", "usher_websockets_active",
                 "usher_backend_connect_errors_total", "usher_map_entries",
                 "usher_reloads_total"):
        assert re.search(r"^# TYPE %s (counter|gauge)$" % name, text, re.M), name
    # Every sample line is `name{labels} value`.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eE]+$|^\S+ (NaN|[+-]Inf)$',
                            line), line
    m = usher.metrics()
    assert m.get('usher_requests_total{code="200"}', 0) >= 1, m
    assert m.get("usher_map_entries") == 3, m
    assert "usher_backend_connect_errors_total" in m


def test_websocket_gauge_counts_open_websockets(usher):
    a = WsClient.open(usher.proxy_port, user="alice")
    b = WsClient.open(usher.proxy_port, user="bob")
    wait_for(lambda: usher.metrics().get("usher_websockets_active") == 2, 3,
             what="usher_websockets_active == 2")
    a.shutdown()
    wait_for(lambda: usher.metrics().get("usher_websockets_active") == 1, 3,
             what="usher_websockets_active == 1")
    b.shutdown()
