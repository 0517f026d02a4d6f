"""RFC 8341 NETCONF access control: operations, data reads, data writes and
notifications, from the `/nacm` configuration in running.

The recovery user (the local `admin` by default, RFC 8341 §3.2) and the server
itself are never checked. Rules are read again whenever running changes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from _libyang import ffi, lib

from .datastore import data_path
from .errors import RpcError

NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
NACM = "/ietf-netconf-acm:nacm"
# the entries whose access governs the device filesystem's files
DEVICE_ROOTS = "/trustplane-device:device/filesystem/root"
_PRED = re.compile(r"\[[^\]]*\]")
# a fresh device: the admin group may do everything, nobody else anything
DEFAULT_POLICY = (
    f'<nacm xmlns="{NS}"><read-default>deny</read-default><write-default>deny</write-default>'
    "<exec-default>deny</exec-default><groups><group><name>admin</name><user-name>admin</user-name></group>"
    "</groups><rule-list><name>admin</name><group>admin</group><rule><name>permit-all</name>"
    "<module-name>*</module-name><access-operations>*</access-operations><action>permit</action></rule>"
    "</rule-list></nacm>")


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
    def __init__(self, server, recovery_user: str = "admin"):
        self.server = server
        self.recovery_user = recovery_user
        self.denied_operations = self.denied_data_writes = self.denied_notifications = 0
        self._cache: tuple[object, Policy] | None = None
        self._ext_paths = self._schema_ext_paths()

    def policy(self) -> Policy:
        tree = self.server.running.tree
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
        if pol is None or (module == "ietf-netconf" and name == "close-session"):
            return
        for r in pol.rules_for(session.username):
            if r.module in ("*", module) and r.kind in (None, "rpc") and \
                    (r.kind is None or r.target in ("*", name)) and ("*" in r.ops or "exec" in r.ops):
                allowed = r.permit
                break
        else:
            snode = lib.lys_find_path(self.server.ctx.cdata, ffi.NULL, f"/{module}:{name}".encode(), 0)
            allowed = pol.exec_permit and (snode == ffi.NULL or "default-deny-all" not in _nacm_defaults(snode))
        if not allowed:
            self.denied_operations += 1
            raise RpcError("access-denied", f'access to the operation "{name}" is denied', type="protocol")

    def check_action(self, session, module: str, path: str, snode) -> None:
        """exec access to a YANG 1.1 action, by its data path (RFC 8341 §3.4.4)."""
        pol = self.checked(session)
        if pol is None:
            return
        if not self._data_allowed(pol, pol.rules_for(session.username), module, path, snode, "exec"):
            self.denied_operations += 1
            raise RpcError("access-denied", f"access to the action {path} is denied", path=path)

    # -- data ---------------------------------------------------------------------
    def _data_allowed(self, pol: Policy, rules: list[Rule], module: str, path: str, snode, op: str) -> bool:
        for r in rules:
            if r.module in ("*", module) and r.kind in (None, "data") and ("*" in r.ops or op in r.ops) and \
                    (r.kind is None or _covers(r.target, path)):
                return r.permit
        defaults = _nacm_defaults(snode)
        if "default-deny-all" in defaults or (op not in ("read", "exec") and "default-deny-write" in defaults):
            return False
        return {"read": pol.read_permit, "exec": pol.exec_permit}.get(op, pol.write_permit)

    def check_writes(self, session, changes) -> None:
        pol = self.checked(session)
        if pol is None:
            return
        rules = pol.rules_for(session.username)
        ops = {"create": "create", "delete": "delete", "replace": "update"}
        for c in changes:
            bare = _PRED.sub("", c.path)
            snode = lib.lys_find_path(self.server.ctx.cdata, ffi.NULL, bare.encode(), 0)
            module = bare.split("/")[1].split(":")[0]
            if snode != ffi.NULL:
                module = ffi.string(snode.module.name).decode()
            if not self._data_allowed(pol, rules, module, c.path, snode, ops.get(c.op, "update")):
                self.denied_data_writes += 1
                raise RpcError("access-denied", f"write access to {c.path} is denied", path=c.path)

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
        snode = lib.lys_find_path(self.server.ctx.cdata, ffi.NULL, _PRED.sub("", path).encode(), 0)
        if snode == ffi.NULL:
            return False
        module = ffi.string(snode.module.name).decode()
        return self._data_allowed(pol, pol.rules_for(session.username), module, path, snode, "read")

    # -- notifications --------------------------------------------------------------
    def notification_allowed(self, session, module: str, name: str) -> bool:
        pol = self.checked(session)
        if pol is None:
            return True
        for r in pol.rules_for(session.username):
            if r.module in ("*", module) and r.kind in (None, "notification") and \
                    (r.kind is None or r.target in ("*", name)) and ("*" in r.ops or "read" in r.ops):
                allowed = r.permit
                break
        else:
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
        snode = lib.lys_find_path(self.server.ctx.cdata, ffi.NULL, DEVICE_ROOTS.encode(), 0)
        return self._data_allowed(pol, pol.rules_for(username), "trustplane-device", path, snode, op)

    def state_xml(self) -> str:
        return (f'<nacm xmlns="{NS}"><denied-operations>{self.denied_operations}</denied-operations>'
                f"<denied-data-writes>{self.denied_data_writes}</denied-data-writes>"
                f"<denied-notifications>{self.denied_notifications}</denied-notifications></nacm>")

    def _schema_ext_paths(self) -> list[str]:
        """Schema paths of data nodes that carry a nacm default-deny extension."""
        out = []
        ctx = self.server.ctx
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


def _siblings(node):
    cur = node
    while cur != ffi.NULL:
        nxt = cur.next
        yield cur
        cur = nxt


def _children(node):
    return _siblings(lib.lyd_child(node))
