"""RFC 8525 YANG library (and RFC 7895 modules-state for older clients), and the
yang-library capabilities of the hello (RFC 8526 §2).

The context is built once at start, so the data is built once too. The content-id
is a digest of the module set: it changes exactly when the modules, revisions or
enabled features change, and not across restarts."""
from __future__ import annotations

import hashlib
import json

import libyang
from _libyang import ffi, lib

from yangcore import datastore

NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
YANG_LIBRARY = "/ietf-yang-library:yang-library"
MODULES_STATE = "/ietf-yang-library:modules-state"


def module_set(ctx) -> list[str]:
    """One line per module: name, revision, implemented, enabled features."""
    lines = []
    idx = ffi.new("uint32_t *")
    mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
    while mod != ffi.NULL:
        name = ffi.string(mod.name).decode()
        rev = ffi.string(mod.revision).decode() if mod.revision != ffi.NULL else ""
        feats = ""
        if mod.implemented:
            feats = ",".join(f.name() for f in ctx.get_module(name).features() if f.state())
        lines.append(f"{name}@{rev} {'implement' if mod.implemented else 'import'} {feats}")
        mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
    return sorted(lines)


class YangLibrary:
    def __init__(self, ctx):
        self.content_id = hashlib.sha256("\n".join(module_set(ctx)).encode()).hexdigest()[:16]
        out = ffi.new("struct lyd_node **")
        if lib.ly_ctx_get_yanglib_data(ctx.cdata, out, self.content_id.encode()) != lib.LY_SUCCESS:
            raise ctx.error("cannot build the YANG library data")
        tree = libyang.DNode.new(ctx, out[0])
        try:
            # schema URLs would name server file paths; clients use get-schema instead
            for node in list(tree.find_all(f"{MODULES_STATE}/module/schema | "
                                           f"{MODULES_STATE}/module/submodule/schema")):
                lib.lyd_free_tree(node.cdata)
            self.data = json.loads(tree.print_mem("json", with_siblings=True, pretty=False))
        finally:
            datastore.free(tree)

    def capabilities(self) -> list[str]:
        return [f"urn:ietf:params:netconf:capability:yang-library:1.1?revision=2019-01-04&content-id={self.content_id}",
                f"urn:ietf:params:netconf:capability:yang-library:1.0?revision=2016-06-21&"
                f"module-set-id={self.content_id}"]

    def state(self) -> dict:
        """Both trees, whichever the filter selects: validation needs a whole module's data."""
        return self.data
