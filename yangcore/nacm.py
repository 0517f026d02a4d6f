"""The RFC 8341 access control rules: operations, data reads, data writes and
notifications, from the `/nacm` configuration in running, for any transport.

The recovery user (the local `admin` by default, RFC 8341 §3.2) and the server
itself are never checked. Rules are read again whenever running changes. A session
is anything with a `username`; None is the server itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from _libyang import ffi, lib

from backends.engine.errors import EngineError

from .datastore import data_path

NACM = "/ietf-netconf-acm:nacm"
# the entries whose access governs the device filesystem's files
DEVICE_ROOTS = "/trustplane-device:device/filesystem/root"
# a predicate of a libyang path; a quoted key value may hold "]"
_PRED = re.compile(r"""\[(?:[^\]'"]|'[^']*'|"[^"]*")*\]""")


class AccessDenied(EngineError):
    """Access to data or an action is denied (no error-app-tag: RFC 8341 names none)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(None, message, "access-denied", path)


class OperationDenied(AccessDenied):
    """Access to a protocol operation or RPC is denied."""


@dataclass
class Rule:
    module: str
    kind: str | None  # "rpc", "notification", "data" or None (module only)
    target: str | None
    ops: frozenset[str]
    permit: bool


@dataclass
class Policy:
    enabled: bool
    read_permit: bool
    write_permit: bool
    exec_permit: bool
    groups: dict[str, set[str]]  # user -> groups
    rule_lists: list[tuple[set[str], list[Rule]]]

    def rules_for(self, user: str) -> list[Rule]:
        mine = self.groups.get(user, set())
        return [r for groups, rules in self.rule_lists if "*" in groups or groups & mine for r in rules]


def first_match(rules: list[Rule], module: str, kind: str, target: str, op: str) -> bool | None:
    """The action of the first rule that matches op on target (an operation or
    notification name, or a data path for kind "data"), or None when none matches:
    the one rule-matching loop of RFC 8341 §3.4.4 to §3.4.6."""
    for r in rules:
        if r.module in ("*", module) and r.kind in (None, kind) and ("*" in r.ops or op in r.ops) and \
                (r.kind is None or (_covers(r.target, target) if kind == "data" else r.target in ("*", target))):
            return r.permit
    return None


def _text(node, path: str) -> str | None:
    child = node.find_path(path)
    return None if child is None else str(child.value())


def load_policy(tree) -> Policy:
    root = tree.find_path(NACM) if tree is not None else None
    if root is None:
        return Policy(True, True, False, True, {}, [])
    groups: dict[str, set[str]] = {}
    for g in root.find_all(f"{NACM}/groups/group"):
        name = _text(g, "name")
        for u in g.find_all("user-name"):
            groups.setdefault(str(u.value()), set()).add(name)
    lists = []
    for rl in root.find_all(f"{NACM}/rule-list"):
        rules = []
        for r in rl.find_all("rule"):
            kind, target = None, None
            for k, leaf in (("rpc", "rpc-name"), ("notification", "notification-name"), ("data", "path")):
                value = _text(r, leaf)
                if value is not None:
                    kind, target = k, value
            ops = _text(r, "access-operations") or "*"
            rules.append(Rule(_text(r, "module-name") or "*", kind, target, frozenset(ops.split()),
                              _text(r, "action") == "permit"))
        lists.append(({str(g.value()) for g in rl.find_all("group")}, rules))
    return Policy(_text(root, "enable-nacm") != "false", _text(root, "read-default") != "deny",
                  _text(root, "write-default") == "permit", _text(root, "exec-default") != "deny", groups, lists)


def _nacm_defaults(snode) -> set[str]:
    """The nacm:default-deny-* extensions on a schema node and its ancestors."""
    found = set()
    while snode != ffi.NULL:
        exts = snode.exts
        if exts != ffi.NULL:
            for i in range(ffi.cast("uint64_t *", exts)[-1]):
                d = getattr(exts[i], "def")
                if ffi.string(d.module.name) == b"ietf-netconf-acm":
                    found.add(ffi.string(d.name).decode())
        snode = snode.parent
    return found


def _covers(rule_path: str, node_path: str) -> bool:
    if "[" not in rule_path:
        node_path = _PRED.sub("", node_path)
    return node_path == rule_path or node_path.startswith(rule_path + "/") or node_path.startswith(rule_path + "[")


class AccessControl:
    """The rules of the `running` datastore (a yangcore.datastore.Datastore) applied to sessions."""

    def __init__(self, ctx, running, recovery_user: str = "admin"):
        self.ctx = ctx
        self.running = running
        self.recovery_user = recovery_user
        self.denied_operations = self.denied_data_writes = self.denied_notifications = 0
        self._cache: tuple[object, Policy] | None = None
        self._ext_paths = self._schema_ext_paths()

    def policy(self) -> Policy:
        tree = self.running.tree
        key = tree.cdata if tree is not None else None
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, load_policy(tree))
        return self._cache[1]

    def checked(self, session) -> Policy | None:
        """The policy that applies to a session, or None when it is not checked."""
        if session is None or session.username == self.recovery_user:
            return None
        pol = self.policy()
        return pol if pol.enabled else None

    # -- protocol operations ----------------------------------------------------
    def check_operation(self, session, module: str, name: str) -> None:
        pol = self.checked(session)
        if pol is None:
            return
        allowed = first_match(pol.rules_for(session.username), module, "rpc", name, "exec")
        if allowed is None:
            snode = lib.lys_find_path(self.ctx.cdata, ffi.NULL, f"/{module}:{name}".encode(), 0)
            allowed = pol.exec_permit and (snode == ffi.NULL or "default-deny-all" not in _nacm_defaults(snode))
        if not allowed:
            self.denied_operations += 1
            raise OperationDenied(f'access to the operation "{name}" is denied')

    def check_action(self, session, module: str, path: str, snode) -> None:
        """exec access to a YANG 1.1 action, by its data path (RFC 8341 §3.4.4)."""
        pol = self.checked(session)
        if pol is None:
            return
        if not self._data_allowed(pol, pol.rules_for(session.username), module, path, snode, "exec"):
            self.denied_operations += 1
            raise AccessDenied(f"access to the action {path} is denied", path)

    # -- data ---------------------------------------------------------------------
    def _data_allowed(self, pol: Policy, rules: list[Rule], module: str, path: str, snode, op: str) -> bool:
        allowed = first_match(rules, module, "data", path, op)
        if allowed is not None:
            return allowed
        defaults = _nacm_defaults(snode)
        if "default-deny-all" in defaults or (op not in ("read", "exec") and "default-deny-write" in defaults):
            return False
        return {"read": pol.read_permit, "exec": pol.exec_permit}.get(op, pol.write_permit)

    # -- data writes (RFC 8341 §3.4.5) ---------------------------------------------
    def check_tree_writes(self, session, old, new, *, sent: bool = False) -> None:
        """create, delete or update access to every node that differs from `old` to `new`:
        each node of a created or deleted subtree, each changed leaf, each moved entry.
        sent: `new` came from the request, so the error may name the nodes it adds or changes."""
        pol = self.checked(session)
        if pol is None:
            return
        out = ffi.new("struct lyd_node **")
        if lib.lyd_diff_siblings(old.cdata if old is not None else ffi.NULL,
                                 new.cdata if new is not None else ffi.NULL, 0, out) != lib.LY_SUCCESS:
            raise self.ctx.error("diff failed")
        check = _WriteCheck(self, pol, pol.rules_for(session.username))
        try:
            denied = next(check.denied(out[0]), None)
            if denied is not None:
                self.denied_data_writes += 1
                raise check.error(denied, sent)
        finally:
            if out[0] != ffi.NULL:
                lib.lyd_free_all(out[0])

    def existence_guard(self, session):
        """For an edit: None when the session is not checked, else may(path, op) telling whether
        the session may learn if the node at path exists, and do op (create, delete or None) on it.
        An edit asks before any answer that depends on existence (data-exists, data-missing)."""
        pol = self.checked(session)
        if pol is None:
            return None
        rules = pol.rules_for(session.username)

        def may(path: str, op: str | None) -> bool:
            module, snode = self._resolve(path)
            ok = self._data_allowed(pol, rules, module, path, snode, "read") and \
                (op is None or self._data_allowed(pol, rules, module, path, snode, op))
            if not ok:
                self.denied_data_writes += 1
            return ok
        return may

    def _resolve(self, path: str):
        """(module name, schema node or NULL) of a data path."""
        bare = _PRED.sub("", path)
        snode = lib.lys_find_path(self.ctx.cdata, ffi.NULL, bare.encode(), 0)
        if snode == ffi.NULL:
            lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
            return bare.split("/")[1].split(":")[0] if bare.startswith("/") else "", snode
        return ffi.string(snode.module.name).decode(), snode

    def filter_read(self, session, tree):
        """The tree without the nodes the session may not read (left out silently)."""
        pol = self.checked(session)
        if pol is None or tree is None:
            return tree
        rules = pol.rules_for(session.username)
        deep = [r.target for r in rules if r.kind == "data"] + self._ext_paths
        survivors = [n for n in _siblings(tree.cdata) if self._prune(pol, rules, deep, n)]
        if not survivors:
            return None  # every node was freed by _prune
        tree.cdata = lib.lyd_first_sibling(survivors[0])
        return tree

    def _prune(self, pol, rules, deep: list[str], node) -> bool:
        """Keep node? Frees what must go, node included."""
        path = data_path(node)
        bare = _PRED.sub("", path)
        module = ffi.string(node.schema.module.name).decode()
        if not self._data_allowed(pol, rules, module, path, node.schema, "read"):
            # an unreadable ancestor of a readable node stays, as structure only
            below = [r for r in rules if r.kind == "data" and r.permit and ("*" in r.ops or "read" in r.ops)
                     and _PRED.sub("", r.target).startswith(bare + "/")]
            if not below or not self._prune_children(pol, rules, deep, node):
                lib.lyd_free_tree(node)
                return False
            return True
        if any(_PRED.sub("", p).startswith(bare + "/") for p in deep):
            self._prune_children(pol, rules, deep, node)
        return True

    def _prune_children(self, pol, rules, deep, node) -> bool:
        """Prune every child but the keys (they go with their entry); True if any stays."""
        kept = False
        for child in list(_children(node)):
            if child.schema.flags & lib.LYS_KEY:
                continue
            kept = self._prune(pol, rules, deep, child) or kept
        return kept

    def data_readable(self, session, path: str) -> bool:
        """Whether the session may read the data node at path (a libyang data path), for
        notifications that name data nodes (RFC 8341 §3.4.6). An unknown path is not readable."""
        pol = self.checked(session)
        if pol is None:
            return True
        snode = lib.lys_find_path(self.ctx.cdata, ffi.NULL, _PRED.sub("", path).encode(), 0)
        if snode == ffi.NULL:
            return False
        module = ffi.string(snode.module.name).decode()
        return self._data_allowed(pol, pol.rules_for(session.username), module, path, snode, "read")

    # -- notifications --------------------------------------------------------------
    def notification_allowed(self, session, module: str, name: str) -> bool:
        pol = self.checked(session)
        if pol is None:
            return True
        allowed = first_match(pol.rules_for(session.username), module, "notification", name, "read")
        if allowed is None:
            allowed = pol.read_permit
        if not allowed:
            self.denied_notifications += 1
        return allowed

    # -- device files -------------------------------------------------------------
    def device_files_allowed(self, username: str, root: str, op: str) -> bool:
        """op (read, create, update or delete) on the files under a device root: the
        NACM access to that root's entry in the device filesystem state."""
        if username == self.recovery_user:
            return True
        pol = self.policy()
        if not pol.enabled:
            return True
        path = f"{DEVICE_ROOTS}[name='{root}']"
        snode = lib.lys_find_path(self.ctx.cdata, ffi.NULL, DEVICE_ROOTS.encode(), 0)
        return self._data_allowed(pol, pol.rules_for(username), "trustplane-device", path, snode, op)

    def _schema_ext_paths(self) -> list[str]:
        """Schema paths of data nodes that carry a nacm default-deny extension."""
        out = []
        ctx = self.ctx
        idx = ffi.new("uint32_t *")
        mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
        while mod != ffi.NULL:
            if mod.implemented and mod.compiled != ffi.NULL:
                stack = []
                node = lib.lys_getnext(ffi.NULL, ffi.NULL, mod.compiled, 0)
                while node != ffi.NULL:
                    stack.append(node)
                    node = lib.lys_getnext(node, ffi.NULL, mod.compiled, 0)
                while stack:
                    node = stack.pop()
                    exts = node.exts
                    if exts != ffi.NULL and any(
                            ffi.string(getattr(exts[i], "def").module.name) == b"ietf-netconf-acm"
                            for i in range(ffi.cast("uint64_t *", exts)[-1])):
                        raw = lib.lysc_path(node, lib.LYSC_PATH_DATA, ffi.NULL, 0)
                        out.append(ffi.string(raw).decode())
                        lib.free(raw)
                    child = lib.lys_getnext(ffi.NULL, node, ffi.NULL, 0)
                    while child != ffi.NULL:
                        stack.append(child)
                        child = lib.lys_getnext(child, node, ffi.NULL, 0)
            mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
        return out


# libyang diff operations and the NACM access each needs
_DIFF_ACCESS = {"create": "create", "delete": "delete", "replace": "update"}


class _WriteCheck:
    """One user's write rules over one diff. Decisions are kept per schema node and access,
    except where a rule names list entries: there each node's own path decides. A created or
    deleted subtree whose whole schema may take the access is passed without visiting its data."""

    def __init__(self, acm: AccessControl, pol: Policy, rules: list[Rule]):
        self.acm = acm
        self.pol = pol
        self.rules = [r for r in rules if r.kind in (None, "data")]
        # the rules that name list entries, and their schema paths
        self.instance_targets = [r.target for r in self.rules if r.kind == "data" and "[" in r.target]
        self.instance_rules = [_PRED.sub("", t) for t in self.instance_targets]
        self._decided: dict[tuple[int, str], bool] = {}
        self._whole: dict[tuple[int, str], bool] = {}
        self._by_instance: dict[int, bool] = {}

    def denied(self, diff):
        """(node, access) for each diff node the user may not change, in document order."""
        stack = [(n, "none") for n in reversed(list(_siblings(diff)))]
        while stack:
            node, inherited = stack.pop()
            op = _diff_op(node) or inherited
            access = _DIFF_ACCESS.get(op)
            if access is not None and not _structure_only(node.schema) and not self._allowed(node, access):
                yield node, access
            if access in ("create", "delete") and self._no_instance_rule_inside(node) and \
                    self._all_allowed(node.schema, access):
                continue
            child_op = op if op in ("create", "delete") else "none"
            stack.extend((c, child_op) for c in reversed(list(_children(node))))

    def _allowed(self, node, access: str) -> bool:
        schema = node.schema
        if not self._by_path(schema):
            return self._schema_allowed(schema, access)
        module = ffi.string(schema.module.name).decode()
        return self.acm._data_allowed(self.pol, self.rules, module, data_path(node), schema, access)

    def _by_path(self, schema) -> bool:
        """Does a rule naming list entries cover this schema node or something below it?"""
        key = int(ffi.cast("uintptr_t", schema))
        known = self._by_instance.get(key)
        if known is None:
            path = _schema_path(schema)
            known = self._by_instance[key] = any(p == path or p.startswith(path + "/") or path.startswith(p + "/")
                                                 for p in self.instance_rules)
        return known

    def _no_instance_rule_inside(self, node) -> bool:
        """Does no rule naming list entries apply to this node or below it? (Those rules never
        match a schema path, so the schema's decisions then hold for the whole subtree.)"""
        if not self._by_path(node.schema):
            return True
        path = data_path(node)
        return not any(t == path or t.startswith(path + "/") or path.startswith(t + "/") or path.startswith(t + "[")
                       for t in self.instance_targets)

    def _all_allowed(self, schema, access: str) -> bool:
        """May every configuration node of the schema subtree take access?"""
        key = (int(ffi.cast("uintptr_t", schema)), access)
        known = self._whole.get(key)
        if known is None:
            known = _structure_only(schema) or self._schema_allowed(schema, access)
            child = lib.lys_getnext(ffi.NULL, schema, ffi.NULL, 0)
            while known and child != ffi.NULL:
                known = bool(child.flags & lib.LYS_CONFIG_R) or self._all_allowed(child, access)
                child = lib.lys_getnext(child, schema, ffi.NULL, 0)
            self._whole[key] = known
        return known

    def _schema_allowed(self, schema, access: str) -> bool:
        key = (int(ffi.cast("uintptr_t", schema)), access)
        known = self._decided.get(key)
        if known is None:
            module = ffi.string(schema.module.name).decode()
            known = self._decided[key] = self.acm._data_allowed(self.pol, self.rules, module, _schema_path(schema),
                                                                schema, access)
        return known

    def error(self, denied, sent: bool) -> AccessDenied:
        """access-denied at the refused node, or at its nearest ancestor the user may read
        or sent: the error must not name data the user cannot see."""
        node, access = denied
        below = ""
        while node != ffi.NULL:
            path = data_path(node)
            module = ffi.string(node.schema.module.name).decode()
            if (sent and access != "delete") or \
                    self.acm._data_allowed(self.pol, self.rules, module, path, node.schema, "read"):
                return AccessDenied(f"{access} access to {below}{path} is denied", path)
            below = "data below "
            node = ffi.cast("struct lyd_node *", node.parent)
        return AccessDenied(f"{access} access is denied")


def _schema_path(schema) -> str:
    raw = lib.lysc_path(schema, lib.LYSC_PATH_DATA, ffi.NULL, 0)
    try:
        return ffi.string(raw).decode()
    finally:
        lib.free(raw)


def _diff_op(node) -> str | None:
    """The yang:operation libyang's diff puts on a node, if any."""
    meta = node.meta
    while meta != ffi.NULL:
        if ffi.string(meta.name) == b"operation" and ffi.string(meta.annotation.module.name) == b"yang" \
                and meta.value.enum_item != ffi.NULL:
            return ffi.string(meta.value.enum_item.name).decode()
        meta = meta.next
    return None


def _structure_only(schema) -> bool:
    """List keys come and go with their entry; a non-presence container holds no data
    of its own (RFC 7950 §7.5.1): what they hold is checked instead."""
    return bool(schema.flags & lib.LYS_KEY) or (
        schema.nodetype == lib.LYS_CONTAINER and not schema.flags & lib.LYS_PRESENCE)


def _siblings(node):
    cur = node
    while cur != ffi.NULL:
        nxt = cur.next
        yield cur
        cur = nxt


def _children(node):
    return _siblings(lib.lyd_child(node))
