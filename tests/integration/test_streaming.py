"""Bodies stream through in both directions with bounded memory; framing edge
cases (chunked, HEAD, 204, 304, 100-continue, close-delimited) are relayed."""

import hashlib
import os
import threading

import pytest

from harness import IDENTITY, MiB, backend_mod, wait_for

BIG = 100 * MiB
RSS_LIMIT = 16 * MiB
# scripts/test sets USHER_SANITIZED=1 for the ASan build, whose allocator keeps
# freed memory in quarantine: the transfers are still checked, RSS is not.
SANITIZED = os.environ.get("USHER_SANITIZED") == "1"


def assert_rss_bounded(m):
    if SANITIZED:
        print("sanitized build: RSS growth %.2f MiB not checked" % (m.growth / MiB))
        return
    assert m.growth < RSS_LIMIT, "usher-dispatch RSS grew by %.1f MiB" % (m.growth / MiB)


class PeakRss:
    """Peak RSS growth of usher-dispatch over a block: VmHWM after resetting it
    (clear_refs), cross-checked by sampling VmRSS every few milliseconds."""

    def __init__(self, usher, label):
        self.usher = usher
        self.label = label

    def __enter__(self):
        self.hwm_reset = self.usher.reset_peak_rss()
        self.base, _ = self.usher.memory()
        self.sampled = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            try:
                self.sampled = max(self.sampled, self.usher.memory()[0])
            except (OSError, KeyError):
                return

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        rss, hwm = self.usher.memory()
        self.peak = max(self.sampled, hwm if self.hwm_reset else 0, rss)
        self.growth = self.peak - self.base
        print("%s: usher-dispatch RSS before %.1f MiB, peak %.1f MiB (VmHWM %s, sampled %.1f MiB)"
              ", growth %.2f MiB (limit %d MiB)"
              % (self.label, self.base / MiB, self.peak / MiB,
                 "%.1f MiB" % (hwm / MiB) if self.hwm_reset else "not resettable",
                 self.sampled / MiB, self.growth / MiB, RSS_LIMIT // MiB))
        return False


@pytest.fixture
def warm_usher(usher):
    # One small exchange first, so one-time allocations are not counted as
    # the cost of the transfer.
    assert usher.get("/whoami").status == 200
    return usher


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_100mib_streams_with_bounded_memory(warm_usher, chunked):
    u = warm_usher
    expected = hashlib.sha256()
    pieces = backend_mod.pattern_pieces(BIG, sizes=(65536, 65536, 1000, 7, 65536))

    def body():
        for p in pieces:
            expected.update(p)
            yield p

    with PeakRss(u, "upload %s" % ("chunked" if chunked else "content-length")) as m:
        with u.connect(timeout=60) as c:
            hdrs = [(IDENTITY, "alice")] + ([] if chunked else [("Content-Length", str(BIG))])
            c.request("POST", "/upload", hdrs, body=body(), chunked=chunked)
            r = c.response()
    assert r.status == 200, r
    assert r.json()["bytes"] == BIG
    assert r.json()["sha256"] == expected.hexdigest()
    assert_rss_bounded(m)


@pytest.mark.parametrize("path", ["/bytes", "/chunked"], ids=["content-length", "chunked"])
def test_download_100mib_streams_with_bounded_memory(warm_usher, path):
    u = warm_usher
    h = hashlib.sha256()
    with PeakRss(u, "download %s" % path) as m:
        with u.connect(timeout=60) as c:
            c.request("GET", "%s?n=%d" % (path, BIG), [(IDENTITY, "bob")])
            r = c.response(sink=h.update)
    assert r.status == 200, r
    assert r.body_bytes == BIG
    assert h.hexdigest() == backend_mod.pattern_sha256(BIG)
    assert_rss_bounded(m)


def test_slow_client_download_is_backpressured(warm_usher):
    # The client stops reading for a while several times; a proxy that keeps
    # reading from the (fast) backend meanwhile would buffer the whole body.
    u = warm_usher
    n = 48 * MiB
    h = hashlib.sha256()
    stall = threading.Event()
    got = [0]

    def sink(piece):
        h.update(piece)
        before = got[0]
        got[0] += len(piece)
        if before // (12 * MiB) != got[0] // (12 * MiB):
            stall.wait(0.3)  # the stimulus: a reader that pauses, not a wait for a condition

    with PeakRss(u, "slow-reader download") as m:
        with u.connect(timeout=60) as c:
            c.request("GET", "/bytes?n=%d" % n, [(IDENTITY, "alice")])
            r = c.response(sink=sink)
    assert r.status == 200 and r.body_bytes == n
    assert h.hexdigest() == backend_mod.pattern_sha256(n)
    assert_rss_bounded(m)


def test_chunked_request_with_trailers(usher):
    with usher.connect() as c:
        c.request("POST", "/upload", [(IDENTITY, "alice"), ("Transfer-Encoding", "chunked")])
        c.send(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n")
        r = c.response()
    assert r.status == 200, r
    assert r.json()["bytes"] == 11
    assert r.json()["sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_chunked_request_split_into_single_bytes(usher):
    body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    with usher.connect() as c:
        c.request("POST", "/upload", [(IDENTITY, "bob"), ("Transfer-Encoding", "chunked")])
        for i in range(len(body)):
            c.send(body[i:i + 1])
        r = c.response()
    assert r.status == 200, r
    assert r.json()["sha256"] == hashlib.sha256(b"abc0123456789abcdef").hexdigest()


def test_chunked_response_is_relayed(usher):
    n = 300000
    r = usher.get("/chunked?n=%d" % n)
    assert r.status == 200 and r.body_bytes == n
    assert hashlib.sha256(r.body).hexdigest() == backend_mod.pattern_sha256(n)


def test_bodiless_responses_keep_the_connection_in_sync(usher):
    # If the proxy sent a body (or waited for one) after any of these, the next
    # response on the same connection would be garbled or never come.
    with usher.connect(timeout=5) as c:
        h = [(IDENTITY, "alice")]
        c.request("HEAD", "/bytes?n=1000", h)
        r = c.response("HEAD")
        assert r.status == 200 and r.header("content-length") == "1000" and r.body == b"", r
        c.request("HEAD", "/chunked?n=1000", h)
        r = c.response("HEAD")
        assert r.status == 200 and r.body == b"", r
        for code in (204, 304):
            c.request("GET", "/status/%d" % code, h)
            r = c.response()
            assert r.status == code and r.body == b"", r
            assert r.header("transfer-encoding") is None, r
        c.request("GET", "/whoami", h)
        r = c.response()
        assert r.status == 200 and r.json()["conn_requests"] >= 1, r
        assert c.buf == b""


def test_bodiless_statuses_that_name_framing_still_have_no_body(usher):
    with usher.connect(timeout=5) as c:
        for code in (204, 304):
            for framing in ("te", "cl"):
                c.request("GET", "/bodiless?code=%d&framing=%s" % (code, framing),
                          [(IDENTITY, "alice")])
                r = c.response()
                assert r.status == code and r.body == b"", r
                c.request("GET", "/whoami", [(IDENTITY, "alice")])
                r = c.response()
                assert r.status == 200 and r.json()["name"] == "alice", r


def test_expect_100_continue_is_relayed(usher, alice_bob):
    body = b"x" * 100000
    with usher.connect(timeout=5) as c:
        c.request("PUT", "/upload", [(IDENTITY, "alice"), ("Expect", "100-continue"),
                                     ("Content-Length", str(len(body)))], send_body=False)
        # Nothing of the body is sent until the 100 arrives.
        version, status, _, _ = c.read_head()
        assert status == 100
        c.send(body)
        r = c.response()
    assert r.status == 200, r
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    head = alice_bob["alice"].requests()[0]["head"].lower()
    assert "expect: 100-continue" in head


def test_expect_100_continue_not_sent_for_a_refused_request(usher):
    with usher.connect(timeout=5) as c:
        c.request("PUT", "/upload", [(IDENTITY, "mallory"), ("Expect", "100-continue"),
                                     ("Content-Length", "10")], send_body=False)
        r = c.response()
    assert r.interim == [] and r.status == 403, r


def test_close_delimited_backend_response_is_relayed_whole(usher):
    n = 1 * MiB + 3
    with usher.connect(timeout=10) as c:
        c.request("GET", "/eof?n=%d" % n, [(IDENTITY, "alice")])
        r = c.response()
        assert r.status == 200 and r.body_bytes == n, r
        assert hashlib.sha256(r.body).hexdigest() == backend_mod.pattern_sha256(n)
        # Whether the proxy re-framed the body (and kept the connection) or
        # relayed it close-delimited, the next request on a fresh or the same
        # connection must work.
        if r.chunked or r.header("content-length"):
            c.request("GET", "/whoami", [(IDENTITY, "alice")])
            assert c.response().status == 200
    assert usher.get("/whoami").status == 200


def test_slow_backend_reader_is_backpressured(warm_usher, alice_bob):
    # The backend reads the upload slowly only if the proxy does not queue it
    # all up in memory; measured while the client pushes 48 MiB.
    u = warm_usher
    n = 48 * MiB
    with PeakRss(u, "upload to a stalled backend") as m:
        with u.connect(timeout=60) as c:
            c.request("POST", "/upload?stall_ms=600", [(IDENTITY, "alice"),
                                                       ("Content-Length", str(n))],
                      body=backend_mod.pattern_pieces(n))
            r = c.response()
    assert r.status == 200 and r.json()["bytes"] == n, r
    assert_rss_bounded(m)
    wait_for(lambda: alice_bob["alice"].records("complete"), 5, what="backend completed upload")
