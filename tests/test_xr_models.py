"""Drift check: the Cisco-named modules served keep the kind, base type, range, patterns, keys
and mandatory flag the real IOS XR models give each node listed in xr_model_facts.json."""
import json
from pathlib import Path

import pytest

from yangcore.schema import YANG_DIR, build_context

FACTS = json.loads((Path(__file__).parent / "xr_model_facts.json").read_text())["nodes"]
MODULES = sorted(p.stem for p in YANG_DIR.glob("Cisco-IOS-XR-*.yang"))

# Deliberate differences from the real models, each with its reason: {path: {field: our value}}.
ALLOWED: dict[str, dict] = {}
# Real nodes the served modules leave out (they may be subsets of the real ones), each with its reason.
NOT_SERVED = {
    "/Cisco-IOS-XR-crypto-cepki-new-oper:crypto-cepki/mypubkey/dsa-keys/dsa-key": "DSA keys are never generated",
}


def schema_nodes(ctx) -> dict:
    """Every schema node of the Cisco modules by its schema path, rpc input and output included."""
    out = {}

    def walk(node):
        out[node.schema_path()] = node
        kids = [node.input(), node.output()] if node.keyword() == "rpc" else [node]
        for kid in kids:
            if kid is not None and hasattr(kid, "children"):
                for child in kid.children():
                    walk(child)

    for name in MODULES:
        for top in ctx.get_module(name).children():
            walk(top)
    return out


@pytest.fixture(scope="module")
def nodes():
    return schema_nodes(build_context(MODULES))


def facts_of(node) -> dict:
    got = {"kind": node.keyword()}
    if got["kind"] == "list":
        got["keys"] = [k.name() for k in node.keys()]
    if got["kind"] in ("leaf", "leaf-list"):
        t = node.type()
        got["type"] = t.basename()
        ranges = [r for r in t.all_ranges() if r]
        got["range"] = ranges[0] if ranges else None
        got["patterns"] = [p for p, _inverted in t.all_patterns()]
        got["enums"] = [e.name() for e in t.all_enums()]
    if got["kind"] == "leaf":
        got["mandatory"] = node.mandatory()
    return got


def test_every_module_is_compiled(nodes):
    assert len(MODULES) == 11
    assert {p.split(":")[0].lstrip("/") for p in nodes} == set(MODULES)


@pytest.mark.parametrize("path", sorted(FACTS))
def test_node_matches_the_real_model(nodes, path):
    if path in NOT_SERVED:
        assert path not in nodes, f"{path} is served now: take it off NOT_SERVED"
        return
    assert path in nodes, f"{path} is missing"
    got = facts_of(nodes[path])
    want = {**FACTS[path], **ALLOWED.get(path, {})}
    assert {k: got.get(k) for k in want} == want
