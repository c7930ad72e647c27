"""No credential or cookie value ever appears in a log line: every secret seen on the wire
(Set-Cookie values of the app and of Usher) or issued by the fakes (one-time credentials,
session tokens) is looked for in the dispatcher's log, at its most verbose level, and in the
backends' logs, after a run through every path that handles them.

(Every test in this directory also checks the log of each usher-dispatch it started; see
Usher.problems in mint_harness.py.)"""

import os

import mint_harness as mh


def test_no_secret_in_any_log(env, start_usher, t3):
    a, b_ = t3["alice"], t3["bob"]
    u = start_usher({"alice": a, "bob": b_},
                    config={"log": {"level": "trace", "access_log": "yes"}},
                    mint={"reuse_window": "0"})
    alice = u.browser("alice")
    assert alice.get("/whoami").status == 200                         # first GET
    assert u.browser("alice").post("/echo", os.urandom(70000)).status == 200  # first POST
    ws = u.browser("bob").websocket("/ws")                            # first WebSocket
    assert ws.echo("x") == (1, "x")
    ws.close()
    a.revoke()                                                        # renewal on GET
    assert alice.get("/whoami").status == 200
    a.revoke()                                                        # 401 relayed on POST
    assert alice.post("/echo", b"data").status == 401
    assert alice.get("/whoami").status == 200
    flipped = alice.cookie("usher_bind")[:-1] + "x"                   # tampered bind cookie
    alice.set_cookie("usher_bind", flipped)
    assert alice.get("/whoami").status == 200
    bob = u.browser("bob", jar=alice.jar)                             # second person, same jar
    assert bob.get("/whoami").status == 200
    a.fault("session_401")                                            # minted, then refused
    assert u.browser("alice").get("/whoami").status == 502
    a.fault("bootstrap_no_cookie")
    assert u.browser("alice").get("/whoami").status == 502
    a.fault("none")
    assert u.browser("alice", accept="application/json").post(        # cross-site refusal
        "/echo", b"x", origin="https://evil.example").status == 403
    u.stop()

    secrets = env.all_secrets()
    # sanity: the run did put secrets on the wire and the fakes issued some
    assert len(secrets) >= 10, len(secrets)
    logs = env.log_files()
    assert u.log_file in logs and os.path.join(a.base, "server.log") in logs
    hits = mh.find_secrets(logs, secrets)
    assert not hits, hits
    # the grep itself finds a secret that is there, also escaped the way logfmt quotes it
    probe = os.path.join(u.dir, "probe.log")
    some = sorted(secrets)[0]
    with open(probe, "w") as f:
        f.write('event=probe value="%s\\n"\n' % some[:2] + "\\x" + some[2:])
    assert mh.find_secrets([probe], {some}), "the secret grep is blind"
    # and the dispatcher did log those events (so the grep looked at something real)
    for event in ("mint", "remint", "audit", "access"):
        assert u.records(event), event
