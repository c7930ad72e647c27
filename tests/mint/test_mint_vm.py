"""VM backends in the dispatcher: a VM user is signed in through the profile that made the
VM (state file "vm.profile"): `mint = none` proxies without any mint; a profile the
configuration does not know fails with a clear 502 and audit line, never a mint through the
host's own command. (The provider's `mint` verb against a real VM: tests/vm/.)"""

import json
import os

import mint_harness as mh


def make_vms(u, profiles):
    """Rewrites the state file: each OS user in `profiles` becomes a VM backend (same port)."""
    with open(u.state_file) as f:
        state = json.load(f)
    for os_user, profile in profiles.items():
        entry = state["users"][os_user]
        state["users"][os_user] = {"kind": "vm", "address": entry["address"], "port": entry["port"],
                                   "vm": {"name": "usher-" + os_user, "profile": profile}}
    mark = u.mark()
    with open(u.state_file + ".new", "w") as f:
        json.dump(state, f)
    os.rename(u.state_file + ".new", u.state_file)
    u.wait_record("reload", since=mark, file="state", result="ok")


def test_vm_profile_without_mint_proxies_plainly_and_an_unknown_profile_is_refused(start_usher, t3):
    u = start_usher({"alice": t3["alice"], "bob": t3["bob"]},
                    config={"vm.plain": {"base_image": "base.qcow2", "mint": "none"}})
    make_vms(u, {mh.MAPPED["alice"]: "plain", mh.MAPPED["bob"]: "gone"})
    mark = u.mark()
    alice = u.browser("alice")
    since = len(t3["alice"].requests())
    r = alice.get("/")
    # the app's own answer (it wants its own login), not a refusal by Usher
    assert r.status == 401, r
    assert u.audits(mark) == []
    assert not mh.set_cookies(r, "t3_session") and not mh.set_cookies(r, "usher_bind")
    # the app's own cookie, if the browser has one, passes through untouched
    alice.set_cookie("t3_session", "the-apps-own")
    alice.get("/")
    seen = [x for x in t3["alice"].requests()[since:] if x["event"] == "request"]
    assert [x["session_cookies"] for x in seen] == [0, 1], seen
    assert u.mints(mark) == []

    bob = u.browser("bob", accept="application/json")
    r = bob.get("/")
    assert r.status == 502, r
    (audit,) = u.audits(mark, reason="mint_failed")
    assert audit["detail"] == "no_vm_profile"
    assert u.mints(mark) == []
    assert t3["bob"].mint_count() == 0
