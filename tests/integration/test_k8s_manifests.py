"""k8s/: the manifests parse, a kustomize-style build of them (resources plus
the kustomization's JSON patches, applied here without a cluster) is
consistent, and agrees with dispatch/usher.conf.example (port, identity
header). Needs python3-yaml (Debian), nothing else."""

import configparser
import os

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml missing (scripts/install-deps installs it)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(REPO, "k8s")


def load(name):
    with open(os.path.join(K8S, name)) as f:
        return list(yaml.safe_load_all(f))


def example_config():
    cp = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"),
                                   interpolation=None, strict=False)
    cp.read(os.path.join(REPO, "dispatch", "usher.conf.example"))
    return cp


def apply_json_patch(doc, ops):
    for op in ops:
        assert op["op"] == "replace", op
        parts = [p for p in op["path"].split("/") if p]
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            assert int(last) < len(node), op
            node[int(last)] = op["value"]
        else:
            assert last in node, "patch replaces a field the resource lacks: %s" % op
            node[last] = op["value"]


def build():
    """What `kubectl kustomize k8s/` renders (for the features this kustomization uses)."""
    kz = load("kustomization.yaml")[0]
    assert kz["kind"] == "Kustomization"
    docs = []
    for r in kz["resources"]:
        docs += [d for d in load(r) if d]
    for p in kz.get("patches", []):
        t = p["target"]
        ops = yaml.safe_load(p["patch"])
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        assert len(hits) == 1, "patch target %s matches %d resources" % (t, len(hits))
        apply_json_patch(hits[0], ops)
    ns = kz.get("namespace")
    for d in docs:
        if d["kind"] != "Namespace":
            d["metadata"].setdefault("namespace", ns)
    return kz, {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_every_manifest_parses():
    names = [f for f in os.listdir(K8S) if f.endswith(".yaml")]
    assert "kustomization.yaml" in names
    for f in names:
        for d in load(f):
            assert d and "apiVersion" in d and "kind" in d, f


def test_service_endpoints_and_ingress_are_consistent():
    kz, res = build()
    svc = res[("Service", "usher-dispatch")]
    ep = res[("Endpoints", "usher-dispatch")]
    ing = res[("Ingress", "usher")]
    assert "selector" not in svc["spec"], "the Service must have no selector (Endpoints by hand)"
    sport = svc["spec"]["ports"][0]
    eport = ep["subsets"][0]["ports"][0]
    assert sport["name"] == eport["name"], "Endpoints port name must match the Service's"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"] and backend["port"]["name"] == sport["name"]
    # The middleware annotation names <namespace>-<middleware>@kubernetescrd.
    mw = res[("Middleware", "authentik")]
    ann = ing["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"]
    assert ann == "%s-%s@kubernetescrd" % (kz["namespace"], mw["metadata"]["name"])
    assert res[("Namespace", kz["namespace"])]
    # The placeholders were all replaced.
    assert ep["subsets"][0]["addresses"][0]["ip"] != "192.0.2.1" and eport["port"] != 1


def test_manifests_agree_with_the_example_config():
    _, res = build()
    conf = example_config()
    listen = conf.get("server", "listen").split()[0]
    port = int(listen.rsplit(":", 1)[1])
    ep = res[("Endpoints", "usher-dispatch")]
    assert ep["subsets"][0]["ports"][0]["port"] == port, \
        "Endpoints port differs from [server] listen in usher.conf.example"
    header = conf.get("server", "identity_header").strip()
    mw = res[("Middleware", "authentik")]["spec"]["forwardAuth"]
    assert [h.lower() for h in mw["authResponseHeaders"]] == [header.lower()], \
        "forward-auth must pass exactly the dispatcher's identity header"


def test_only_marked_values_are_edited():
    """Everything an operator changes is on a line marked EDIT in kustomization.yaml."""
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        edits = [l for l in f if "# EDIT" in l]
    assert len(edits) == 3, edits
    assert all("value:" in l for l in edits)
