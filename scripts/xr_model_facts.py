"""Write the facts table tests/xr_model_facts.json checks the Cisco-named modules against.

Reads the real IOS XR modules of YangModels/yang, release folder vendor/cisco/xr/2621 (IOS XR
26.2.1), saved in one directory: Cisco-IOS-XR-crypto-act.yang, Cisco-IOS-XR-um-crypto-cfg.yang,
Cisco-IOS-XR-crypto-cepki-oper.yang (+ -sub1), Cisco-IOS-XR-crypto-cepki-new-oper.yang (+ -sub1),
Cisco-IOS-XR-spirit-install-act.yang, Cisco-IOS-XR-install-cfg.yang, Cisco-IOS-XR-install-oper.yang
(+ subs), Cisco-IOS-XR-spirit-install-instmgr-oper.yang (+ subs), Cisco-IOS-XR-key-package-act.yang,
Cisco-IOS-XR-ownership-act.yang, Cisco-IOS-XR-ownership-oper.yang (+ -sub1), and what they import
(Cisco-IOS-XR-types.yang, cisco-semver.yang, Cisco-IOS-XR-um-snmp-server-cfg.yang).

    python scripts/xr_model_facts.py DIR > tests/xr_model_facts.json

It compiles them with libyang and prints, for every node the served modules define, the real
node's kind, base type, range, patterns, enums, keys and mandatory flag (absent when the real
module has no such node).
"""
import json
import sys
from pathlib import Path

import libyang

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from yangcore.schema import IANA_DIR, IETF_DIR, YANG_DIR, build_context  # noqa: E402

MODULES = sorted(p.stem for p in YANG_DIR.glob("Cisco-IOS-XR-*.yang"))


def schema_nodes(ctx, modules=MODULES) -> dict:
    """Every schema node of the modules by its schema path, rpc input and output included."""
    out = {}

    def walk(node):
        out[node.schema_path()] = node
        for part in ([node.input(), node.output()] if node.keyword() == "rpc" else [node]):
            if part is not None and hasattr(part, "children"):
                for child in part.children():
                    walk(child)

    for name in modules:
        for top in ctx.get_module(name).children():
            walk(top)
    return out


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


def main(real_dir: str) -> None:
    ours = schema_nodes(build_context(MODULES))
    real_ctx = libyang.Context(":".join([real_dir, str(IETF_DIR), str(IANA_DIR)]), disable_searchdir_cwd=True)
    names = [n for n in MODULES if (Path(real_dir) / f"{n}.yang").exists()]
    for name in names:
        real_ctx.load_module(name).feature_enable_all()
    real = schema_nodes(real_ctx, names)
    nodes = {path: facts_of(real[path]) if path in real else None for path in ours}
    json.dump({"source": f"YangModels/yang vendor/cisco/xr/2621: {', '.join(names)}", "nodes": nodes},
              sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
