"""edit-config (RFC 6241 §7.2) applied to a private copy of a libyang tree.

Order of work:
1. delete and remove are taken out of the request first (libyang would refuse
   `<leaf nc:operation="delete"/>` on a typed leaf, whose empty value is invalid);
   their paths come from the schema. They run first, in document order.
2. The rest is parsed by libyang (types, unknown nodes, state data) and walked:
   merge / replace / create / none, in document order.
With no operation attribute and default-operation merge, the whole edit is one
libyang merge: that is the fast path for bulk configuration.

Errors go through `_fail`: rollback-on-error raises at once (the copy is thrown
away), stop-on-error stops but keeps what was applied before the error,
continue-on-error records the error and skips only the failing subtree.
"""
from __future__ import annotations

import re

import libyang
from _libyang import ffi, lib
from lxml import etree

from yangcore import datastore, libyang_abi
from yangcore.datastore import data_path

from .errors import NC_NS, RpcError, RpcErrors, to_rpc_errors

OP_ATTR = f"{{{NC_NS}}}operation"
OPERATIONS = ("merge", "replace", "create", "delete", "remove")
YANG_NS = "urn:ietf:params:xml:ns:yang:1"
_FIND_OPS = etree.XPath(".//*[@nc:operation]", namespaces={"nc": NC_NS})
_FIND_INSERT = etree.XPath(".//*[@yang:insert]", namespaces={"yang": YANG_NS})
_KEY_PRED = re.compile(r"""\[\s*(?:[\w.-]+:)?([\w.-]+)\s*=\s*('[^']*'|"[^"]*")\s*\]""")


class _Stop(Exception):
    pass


def quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise RpcError("invalid-value", "a key value holds both quote characters")


def element_path(ctx, el: etree._Element, stop: etree._Element):
    """The libyang data path of a request element and its schema node, resolved against the schema."""
    chain = []
    node = el
    while node is not None and node is not stop:
        chain.append(node)
        node = node.getparent()
    parts = []
    snode = ffi.NULL
    parent_mod = None
    for e in reversed(chain):
        q = etree.QName(e)
        mod = ctx.module_by_ns(q.namespace or "")
        if mod is None:
            raise RpcError("unknown-namespace", f"no module has namespace {q.namespace!r}",
                           info=[("bad-element", q.localname), ("bad-namespace", q.namespace or "")])
        child = lib.lys_find_child(snode, mod, q.localname.encode(), 0, 0, 0)
        if child == ffi.NULL:
            raise RpcError("unknown-element", f'unknown element "{q.localname}"',
                           info=[("bad-element", q.localname)])
        step = f"/{q.localname}" if mod == parent_mod else f"/{ffi.string(mod.name).decode()}:{q.localname}"
        parent_mod = mod
        if child.nodetype == lib.LYS_LIST:
            key = lib.lysc_node_child(child)
            while key != ffi.NULL and key.flags & lib.LYS_KEY:
                kname = ffi.string(key.name).decode()
                kel = e.find(f"{{{q.namespace}}}{kname}")
                if kel is None:
                    raise RpcError("missing-element", f'list "{q.localname}" entry lacks its key "{kname}"',
                                   info=[("bad-element", kname)])
                step += f"[{kname}={quote((kel.text or '').strip())}]"
                key = key.next
        elif child.nodetype == lib.LYS_LEAFLIST and e is el:
            step += f"[.={quote((e.text or '').strip())}]"
        parts.append(step)
        snode = child
    return "".join(parts), snode


class Edit:
    def __init__(self, ctx, target: datastore.Tree, default_operation: str, error_option: str, may_know=None):
        self.ctx = ctx
        self.may_know = may_know
        self.tree = target
        self.default_operation = default_operation
        self.error_option = error_option
        self.errors: list[RpcError] = []
        self._nested: set[int] = set()

    # -- error policy -------------------------------------------------------
    def _fail(self, err: RpcError) -> None:
        self.errors.append(err)
        if self.error_option != "continue-on-error":
            raise _Stop()

    def _may_know(self, path: str, op: str | None) -> bool:
        """Asked before an answer that depends on whether path exists: a user who may not
        read the node, or not do op on it, gets access-denied whether it exists or not
        (RFC 8341 §3.4.5); the error is recorded."""
        if self.may_know is None or self.may_know(path, op):
            return True
        self._fail(RpcError("access-denied", f"access to {path} is denied", path=path))
        return False

    # -- tree helpers -------------------------------------------------------
    def _find(self, path: str):
        """The node at path, unless it is absent or only an implicit default
        (with basic-mode explicit, those do not exist for create and delete)."""
        if self.tree is None:
            return None
        out = ffi.new("struct lyd_node **")
        if lib.lyd_find_path(self.tree.cdata, path.encode(), 0, out) != lib.LY_SUCCESS:
            lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
            return None
        return None if out[0].flags & lib.LYD_DEFAULT else out[0]

    def _free(self, node) -> None:
        if self.tree is not None and node == self.tree.cdata:
            nxt = node.next
            self.tree = None if nxt == ffi.NULL else libyang.DNode.new(self.ctx, nxt)
        lib.lyd_free_tree(node)

    def _insert(self, node, recursive: bool) -> None:
        """Merge one edit node (with its parents and keys) into the tree."""
        flags = lib.LYD_DUP_WITH_PARENTS | lib.LYD_DUP_NO_META
        if recursive:
            flags |= lib.LYD_DUP_RECURSIVE
        dup = ffi.new("struct lyd_node **")
        if lib.lyd_dup_single(node, ffi.NULL, flags, dup) != lib.LY_SUCCESS:
            raise self.ctx.error("duplicate failed")
        root = dup[0]
        while root.parent != ffi.NULL:
            root = ffi.cast("struct lyd_node *", root.parent)
        target = ffi.new("struct lyd_node **")
        target[0] = self.tree.cdata if self.tree is not None else ffi.NULL
        ret = lib.lyd_merge_siblings(target, root, lib.LYD_MERGE_DESTRUCT)
        if ret != lib.LY_SUCCESS:
            raise self.ctx.error("merge failed")
        self.tree = libyang.DNode.new(self.ctx, lib.lyd_first_sibling(target[0]))

    # -- phases -------------------------------------------------------------
    def run(self, config: etree._Element) -> datastore.Tree:
        try:
            if self.default_operation == "replace":
                datastore.free(self.tree)
                self.tree = None
            removals = self._take_removals(config)
            for op, path, snode in removals:
                self._remove(op, path, snode)
            edit = self._parse(config)
            if edit is None:
                return self.tree
            try:
                if not removals and not _FIND_OPS(config) and not _FIND_INSERT(config) \
                        and self.default_operation != "none":
                    # fast path: a single libyang merge, edit tree consumed
                    target = ffi.new("struct lyd_node **")
                    target[0] = self.tree.cdata if self.tree is not None else ffi.NULL
                    if lib.lyd_merge_siblings(target, edit.cdata, lib.LYD_MERGE_DESTRUCT) != lib.LY_SUCCESS:
                        raise self.ctx.error("merge failed")
                    edit.cdata = None
                    self.tree = libyang.DNode.new(self.ctx, lib.lyd_first_sibling(target[0]))
                    return self.tree
                self._mark_nested(edit)
                inherited = "merge" if self.default_operation == "replace" else self.default_operation
                node = edit.cdata
                while node != ffi.NULL:
                    self._walk(node, inherited)
                    node = node.next
            finally:
                datastore.free(edit)
        except _Stop:
            pass
        return self.tree

    def _take_removals(self, config: etree._Element) -> list[tuple[str, str]]:
        found = []
        for el in _FIND_OPS(config):
            op = el.get(OP_ATTR)
            if op not in OPERATIONS:
                raise RpcError("bad-attribute", f'invalid operation "{op}"', type="protocol",
                               info=[("bad-attribute", "operation"), ("bad-element", etree.QName(el).localname)])
            if op not in ("delete", "remove"):
                continue
            if any(a.get(OP_ATTR) in ("delete", "remove") for a in el.iterancestors() if a is not config):
                el.getparent().remove(el)
                continue
            found.append((op, *element_path(self.ctx, el, config), el))
        for *_, el in found:
            if el.getparent() is not None:
                el.getparent().remove(el)
        return [(op, path, snode) for op, path, snode, _ in found]

    def _remove(self, op: str, path: str, snode) -> None:
        if snode.flags & lib.LYS_KEY:  # decided by the schema, whether the entry exists or not
            self._fail(RpcError("bad-element", "a list key cannot be deleted on its own", path=path,
                                info=[("bad-element", ffi.string(snode.name).decode())]))
            return
        if op == "delete" and not self._may_know(path, "delete"):
            return
        node = self._find(path)
        if node is None:
            if op == "delete":
                self._fail(RpcError("data-missing", f"{path} does not exist, so it cannot be deleted", path=path))
            return
        self._free(node)

    def _parse(self, config: etree._Element):
        xml = b"".join(etree.tostring(c) for c in config if isinstance(c.tag, str))
        if not xml:
            return None
        try:
            return self.ctx.parse_data_mem(xml, "xml", strict=True, no_state=True, parse_only=True)
        except libyang.LibyangError as exc:
            err = to_rpc_errors(exc)
            raise err

    def _mark_nested(self, edit) -> None:
        """Remember every node with an operation or insert attribute somewhere below it."""
        stack = []
        node = edit.cdata
        while node != ffi.NULL:
            stack.append(node)
            node = node.next
        while stack:
            node = stack.pop()
            if _own_op(node) or _enum_meta(node, b"yang", b"insert"):
                parent = node.parent
                while parent != ffi.NULL:
                    key = int(ffi.cast("uintptr_t", parent))
                    if key in self._nested:
                        break
                    self._nested.add(key)
                    parent = parent.parent
            child = lib.lyd_child(node)
            while child != ffi.NULL:
                stack.append(child)
                child = child.next

    def _walk(self, node, inherited: str) -> None:
        schema = node.schema
        if schema.flags & lib.LYS_KEY:
            return
        op = _own_op(node) or inherited
        nested = int(ffi.cast("uintptr_t", node)) in self._nested
        path = data_path(node)
        if op == "create" and not self._may_know(path, "create"):
            return
        if op == "none" and _needs_existence(schema) and not self._may_know(path, None):
            return
        existing = self._find(path)
        if op == "create" and existing is not None:
            self._fail(RpcError("data-exists", f"{path} already exists", path=path))
            return
        spec = self._insert_spec(node, path) if op != "none" else None
        if spec is False:
            return
        if op in ("create", "replace", "merge") and not nested:
            if op == "replace" and existing is not None:
                self._free(existing)
            self._insert(node, recursive=True)
            if spec:
                self._move(path, spec)
            return
        if op == "none":
            if existing is None and _needs_existence(schema):
                self._fail(RpcError("data-missing", f"{path} does not exist", path=path))
                return
            child_op = "none"
        else:
            if op == "replace" and existing is not None:
                self._free(existing)
            self._insert(node, recursive=False)
            if spec:
                self._move(path, spec)
            child_op = "merge"
        child = lib.lyd_child(node)
        while child != ffi.NULL:
            self._walk(child, child_op)
            child = child.next

    def _insert_spec(self, edit_node, path: str):
        """(insert, anchor path) from yang:insert on a user-ordered entry (RFC 7950 §7.8.6),
        None without one, False when the anchor does not exist (the error is recorded)."""
        insert = _enum_meta(edit_node, b"yang", b"insert")
        schema = edit_node.schema
        if insert is None or not schema.flags & lib.LYS_ORDBY_USER:
            return None
        if insert in ("first", "last"):
            return insert, None
        name = ffi.string(schema.name).decode()
        if schema.nodetype == lib.LYS_LIST:
            attr = "key"
            spec = _text_meta(self.ctx, edit_node, b"yang", b"key") or ""
            preds = "".join(f"[{k}={v}]" for k, v in _KEY_PRED.findall(spec))
        else:
            attr = "value"
            spec = _text_meta(self.ctx, edit_node, b"yang", b"value")
            preds = f"[.={quote(spec)}]" if spec is not None else ""
        parent = edit_node.parent
        anchor = data_path(ffi.cast("struct lyd_node *", parent)) if parent != ffi.NULL else ""
        # libyang's own form (a prefix only where the module changes), as access rules are written
        prefix = "" if parent != ffi.NULL and parent.schema.module == schema.module else \
            f"{ffi.string(schema.module.name).decode()}:"
        anchor += f"/{prefix}{name}{preds}"
        if preds and not self._may_know(anchor, None):
            return False
        if not preds or self._find(anchor) is None:
            self._fail(RpcError("bad-attribute", f'yang:{attr} "{spec}" names no existing {name} to insert '
                                f"{insert}", app_tag="missing-instance", path=path,
                                info=[("bad-attribute", attr), ("bad-element", name)]))
            return False
        return insert, anchor

    def _move(self, path: str, spec) -> None:
        insert, anchor_path = spec
        node = self._find(path)
        if anchor_path is None:
            peers = [n for n in _siblings_of(node) if n.schema == node.schema]
            anchor = peers[0] if insert == "first" else peers[-1]
        else:
            anchor = self._find(anchor_path)
        if anchor == node:
            return
        move = libyang_abi.insert_before if insert in ("first", "before") else libyang_abi.insert_after
        if move(anchor, node) != lib.LY_SUCCESS:
            raise self.ctx.error("cannot move the entry")
        if node.parent == ffi.NULL:
            self.tree = libyang.DNode.new(self.ctx, lib.lyd_first_sibling(node))


def _needs_existence(schema) -> bool:
    """operation none on a list entry or presence container needs it to exist."""
    return schema.nodetype == lib.LYS_LIST or (
        schema.nodetype == lib.LYS_CONTAINER and bool(schema.flags & lib.LYS_PRESENCE))


def _siblings_of(node):
    cur = lib.lyd_first_sibling(node)
    while cur != ffi.NULL:
        yield cur
        cur = cur.next


def _find_meta(node, module: bytes, name: bytes):
    meta = node.meta
    while meta != ffi.NULL:
        if ffi.string(meta.name) == name and ffi.string(meta.annotation.module.name) == module:
            return meta
        meta = meta.next
    return None


def _enum_meta(node, module: bytes, name: bytes) -> str | None:
    meta = _find_meta(node, module, name)
    return None if meta is None else ffi.string(meta.value.enum_item.name).decode()


def _text_meta(ctx, node, module: bytes, name: bytes) -> str | None:
    meta = _find_meta(node, module, name)
    return None if meta is None else ffi.string(lib.lyd_value_get_canonical(ctx.cdata,
                                                                           ffi.addressof(meta.value))).decode()


def _own_op(node) -> str | None:
    return _enum_meta(node, b"ietf-netconf", b"operation")


def apply_edit(ctx, target: datastore.Tree, config: etree._Element, *,
               default_operation: str = "merge", error_option: str = "stop-on-error", may_know=None):
    """Apply an edit to `target` (consumed). Returns (new tree, errors).

    may_know(path, op): see Edit._may_know; None for a user who is not checked.
    On rollback-on-error with an error, the returned tree is None and must be ignored."""
    edit = Edit(ctx, target, default_operation, error_option, may_know)
    try:
        tree = edit.run(config)
    except RpcError:
        datastore.free(edit.tree)
        raise
    except RpcErrors:
        datastore.free(edit.tree)
        raise
    if edit.errors and error_option == "rollback-on-error":
        datastore.free(tree)
        if len(edit.errors) == 1:
            raise edit.errors[0]
        raise RpcErrors(edit.errors)
    return tree, edit.errors
