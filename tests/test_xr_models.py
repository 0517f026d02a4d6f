"""Drift check: the Cisco-named modules served keep the kind, base type, range, patterns, keys
and mandatory flag the real IOS XR models give each node listed in xr_model_facts.json."""
import json
import sys
from pathlib import Path

import pytest

from yangcore.schema import build_context

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from xr_model_facts import MODULES, facts_of, schema_nodes  # noqa: E402

FACTS = json.loads((Path(__file__).parent / "xr_model_facts.json").read_text())["nodes"]

# Deliberate differences from the real models, each with its reason: {path: {field: our value}}.
ALLOWED: dict[str, dict] = {}
# Real nodes the served modules leave out (they may be subsets of the real ones), each with its reason.
NOT_SERVED = {
    "/Cisco-IOS-XR-crypto-cepki-new-oper:crypto-cepki/mypubkey/dsa-keys/dsa-key": "DSA keys are never generated",
}


@pytest.fixture(scope="module")
def nodes():
    return schema_nodes(build_context(MODULES))


def test_every_module_is_compiled(nodes):
    assert len(MODULES) == 11
    assert {p.split(":")[0].lstrip("/") for p in nodes} == set(MODULES)


@pytest.mark.parametrize("path", sorted(FACTS))
def test_node_matches_the_real_model(nodes, path):
    if path in NOT_SERVED:
        assert path not in nodes, f"{path} is served now: take it off NOT_SERVED"
        return
    assert path in nodes, f"{path} is missing"
    assert FACTS[path] is not None, f"{path} is not in the real model"
    got = facts_of(nodes[path])
    want = {**FACTS[path], **ALLOWED.get(path, {})}
    assert {k: got.get(k) for k in want} == want
