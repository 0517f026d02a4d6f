"""NETCONF filters as libyang XPaths, and selecting data with them.

* `subtree_to_xpaths` turns an RFC 6241 §6 subtree filter into absolute libyang
  XPaths (JSON style: module names as prefixes, a prefix only where the module
  changes), resolving every filter element against the schema.
* `xpaths_from_select` turns the select attribute of an :xpath filter into the
  same kind of expression (XML namespace prefixes -> module names).
* `select` copies what the XPaths match out of a data tree.

Cost is proportional to what is selected: list entries named by all their keys
become `list[k1='a'][k2='b']` (keys in schema order, one predicate each), which
libyang resolves with a hash lookup instead of walking the siblings; the result
is built by copying the matched nodes and the chains of their ancestors only.

Limits:
* attribute-match expressions (RFC 6241 §6.2.3) never match: YANG data nodes
  carry no XML attributes, so an element with attributes selects nothing;
* content match on a leaf-list (`<tags>x</tags>`) selects that value (like a
  list entry named by its key); it is not a condition on the parent;
* content-match values are compared by libyang's XPath `=` (canonical values;
  identityref prefixes are rewritten from XML namespaces to module names);
  instance-identifier values are compared as given;
* a leaf-list value lookup, or a list entry matched on non-key leaves, walks the
  siblings (libyang only hashes full key predicates on lists);
* anydata/anyxml nodes are selected whole, they cannot be filtered into.
"""
from __future__ import annotations

import re
from typing import Iterable

import libyang
from _libyang import ffi, lib
from libyang.util import ly_array_iter
from lxml import etree

__all__ = ["FilterError", "subtree_to_xpaths", "xpaths_from_select", "top_level_modules", "select",
           "check_subtree_size", "check_select"]


class FilterError(Exception):
    """A filter the server cannot accept.

    .tag is the RFC 6241 error-tag ('invalid-value', 'bad-element', ...),
    .app_tag the error-app-tag (or None), str(e) the message.
    """

    def __init__(self, tag: str = "invalid-value", message: str | None = None, app_tag: str | None = None):
        super().__init__(message if message is not None else tag)
        self.tag = tag
        self.app_tag = app_tag


# Limits on what a client filter may cost (a subscription's is evaluated for every
# notification, on the event loop): its size is capped, and XPath constructs whose cost
# grows faster than the data are refused.
MAX_FILTER_ELEMENTS = 10000   # elements in a subtree filter
MAX_XPATH_LENGTH = 4096       # characters of a select expression
MAX_XPATH_NESTING = 8         # [] and () inside each other
MAX_XPATH_DESCENDANT = 8      # '//' and descendant axes: each walks the whole tree
TOO_LARGE = "filter-too-large"               # error-app-tag: over one of the caps above
NOT_ALLOWED = "xpath-construct-not-allowed"  # error-app-tag: a function or axis refused

# XPath 1.0 core functions (no extension function: lxml would otherwise offer EXSLT,
# regular expressions included)
XPATH_FUNCTIONS = frozenset({
    "last", "position", "count", "local-name", "namespace-uri", "name", "string", "concat",
    "starts-with", "contains", "substring-before", "substring-after", "substring", "string-length",
    "normalize-space", "translate", "boolean", "not", "true", "false", "lang", "number", "sum",
    "floor", "ceiling", "round"})
# ... and the YANG 1.1 ones libyang evaluates in constant time per node; re-match
# (a client's regular expression), deref(), current() and id() are left out
YANG_FUNCTIONS = XPATH_FUNCTIONS | {"derived-from", "derived-from-or-self", "enum-value", "bit-is-set"}
# axes whose cost per context node is bounded by the depth or the node's own subtree
_TOP_AXES = frozenset({"child", "attribute", "self", "parent", "descendant", "descendant-or-self",
                       "ancestor", "ancestor-or-self"})
# inside a predicate (evaluated for every candidate node): only downwards, one level
_PREDICATE_AXES = frozenset({"child", "attribute", "self"})


_DATA_TYPES = lib.LYS_CONTAINER | lib.LYS_LIST | lib.LYS_LEAF | lib.LYS_LEAFLIST | lib.LYS_ANYDATA
_TERM = lib.LYS_LEAF | lib.LYS_LEAFLIST
_INNER = lib.LYS_CONTAINER | lib.LYS_LIST


def _s(c) -> str:
    return ffi.string(c).decode()


def _addr(c) -> int:
    return int(ffi.cast("uintptr_t", c))


def quote(value: str) -> str:
    """An XPath 1.0 string literal for value (no escapes exist in XPath 1.0)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    parts = value.split("'")
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"


# ---------------------------------------------------------------------------------
# schema helpers


class _Schema:
    """Schema lookups: modules by namespace, children by name."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.by_ns: dict[str, object] = {}
        idx = ffi.new("uint32_t *")
        mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
        while mod != ffi.NULL:
            if mod.implemented and mod.compiled != ffi.NULL and mod.ns != ffi.NULL:
                self.by_ns[_s(mod.ns)] = mod
            mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
        self._kids: dict[int, dict[str, list]] = {}
        # subtree filters already converted, by their text and in-scope namespaces: clients
        # poll with the same few filters, and converting one costs more than the select
        self.subtree_xpaths: dict[tuple, list[str]] = {}

    def children(self, parent) -> dict[str, list]:
        """Data-node children of parent (None: top level of every module), by name.
        Choice and case are transparent; augments are included."""
        key = 0 if parent is None else _addr(parent)
        kids = self._kids.get(key)
        if kids is None:
            kids = {}
            mods = self.by_ns.values() if parent is None else (None,)
            for mod in mods:
                last = ffi.NULL
                while True:
                    last = lib.lys_getnext(last, parent if parent is not None else ffi.NULL,
                                           mod.compiled if mod is not None else ffi.NULL, 0)
                    if last == ffi.NULL:
                        break
                    if last.nodetype & _DATA_TYPES:
                        kids.setdefault(_s(last.name), []).append(last)
            self._kids[key] = kids
        return kids

    def match(self, el: etree._Element, parent) -> list:
        """Schema nodes a filter element names under parent (None: top level)."""
        if el.attrib:
            # attribute-match expression: YANG data nodes have no XML attributes
            return []
        q = etree.QName(el)
        found = self.children(parent).get(q.localname, [])
        if q.namespace is None:  # xmlns="": every module
            return list(found)
        mod = self.by_ns.get(q.namespace)
        if mod is None:
            return []
        return [s for s in found if s.module == mod]

    def module_name(self, ns: str | None) -> str | None:
        mod = self.by_ns.get(ns) if ns is not None else None
        return _s(mod.name) if mod is not None else None


_SUBTREE_KEPT = 128           # filters remembered
_SUBTREE_KEPT_SIZE = 4096     # the largest remembered, in bytes of XML


def _schema_for(ctx) -> _Schema:
    """The context's schema lookups, built once: the context never changes after start."""
    schema = getattr(ctx, "_filter_schema", None)
    if schema is None:
        schema = ctx._filter_schema = _Schema(ctx)
    return schema


def _keys(snode) -> list:
    out = []
    k = lib.lysc_node_child(snode)
    while k != ffi.NULL and k.flags & lib.LYS_KEY:
        out.append(k)
        k = k.next
    return out


def _ident_kind(t) -> int:
    """2: only identityrefs, 1: identityref within a union, 0: no identityref."""
    bt = t.basetype
    if bt == lib.LY_TYPE_IDENT:
        return 2
    if bt == lib.LY_TYPE_LEAFREF:
        real = ffi.cast("struct lysc_type_leafref *", t).realtype
        return _ident_kind(real) if real != ffi.NULL else 0
    if bt == lib.LY_TYPE_UNION:
        kinds = [_ident_kind(u) for u in ly_array_iter(ffi.cast("struct lysc_type_union *", t).types)]
        return 1 if any(kinds) else 0
    return 0


_QVALUE = re.compile(r"([^\W\d][\w.-]*):([^\W\d][\w.-]*)")
_NCNAME = re.compile(r"[^\W\d][\w.-]*")


def _value(snode, text: str, el: etree._Element, schema: _Schema) -> str:
    """The content-match value as libyang compares it (identityref prefixes: XML -> module)."""
    kind = _ident_kind(ffi.cast("struct lysc_node_leaf *", snode).type)
    if not kind:
        return text
    if m := _QVALUE.fullmatch(text):
        name = schema.module_name(el.nsmap.get(m.group(1)))
        return f"{name}:{m.group(2)}" if name else text
    if kind == 2 and _NCNAME.fullmatch(text):
        name = schema.module_name(el.nsmap.get(None))
        return f"{name}:{text}" if name else text
    return text


# ---------------------------------------------------------------------------------
# subtree filters


def _elements(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _text(el: etree._Element) -> str:
    """Character content of an element without element children (comments skipped)."""
    return (el.text or "") + "".join(c.tail or "" for c in el)


def _step(snode, parent_mod) -> str:
    name = _s(snode.name)
    if parent_mod is None or snode.module != parent_mod:
        return f"{_s(snode.module.name)}:{name}"
    return name


def subtree_to_xpaths(filter_el: etree._Element, ctx) -> list[str]:
    """The <filter type='subtree'> element as libyang XPaths.

    Each XPath selects nodes to output with their whole subtree (plus their
    ancestors and the keys of ancestor list entries, see `select`). An empty
    filter selects nothing: [].
    """
    schema = _schema_for(ctx)
    check_subtree_size(filter_el)
    text = etree.tostring(filter_el, with_tail=False)
    key = (text, tuple(sorted(filter_el.nsmap.items(), key=str)))
    known = schema.subtree_xpaths.get(key)
    if known is not None:
        return list(known)
    out: list[str] = []
    for el in _elements(filter_el):
        for snode in schema.match(el, None):
            out.extend(_node_xpaths(el, snode, "", None, schema))
    out = list(dict.fromkeys(out))
    if len(text) > _SUBTREE_KEPT_SIZE:
        return out
    if len(schema.subtree_xpaths) >= _SUBTREE_KEPT:
        schema.subtree_xpaths.pop(next(iter(schema.subtree_xpaths)))
    schema.subtree_xpaths[key] = out
    return list(out)


def check_subtree_size(filter_el: etree._Element, limit: int = MAX_FILTER_ELEMENTS) -> None:
    """Raise FilterError('too-big') for a subtree filter of more than limit elements."""
    for n, _ in enumerate(filter_el.iter(), 0):
        if n > limit:
            raise FilterError("too-big", f"the subtree filter has more than {limit} elements", TOO_LARGE)


def _node_xpaths(el: etree._Element, snode, base: str, parent_mod, schema: _Schema) -> list[str]:
    """XPaths for filter element el, which names schema node snode under base."""
    path = f"{base}/{_step(snode, parent_mod)}"
    kids = _elements(el)
    text = _text(el).strip() if not kids else ""
    nodetype = snode.nodetype
    if nodetype & _TERM:
        if kids:
            return []  # nothing exists under a leaf
        if text:  # content match used as a selection: that value only
            return [f"{path}[.={quote(_value(snode, text, el, schema))}]"]
        return [path]
    if not nodetype & _INNER:  # anydata / anyxml
        return [] if kids or text else [path]
    if not kids:
        # selection node; content match on a container or list can never be true
        return [] if text else [path]

    # content-match children (leaves with text) are conditions on this node
    conds: list[tuple[list, str, etree._Element]] = []
    others: list[tuple[etree._Element, list]] = []
    for k in kids:
        matches = schema.match(k, snode)
        ktext = _text(k).strip() if not _elements(k) else ""
        if ktext:
            leaves = [m for m in matches if m.nodetype == lib.LYS_LEAF]
            lists = [m for m in matches if m.nodetype == lib.LYS_LEAFLIST]
            if not leaves and not lists:
                return []  # a condition no data can meet
            if leaves:
                conds.append((leaves, ktext, k))
            if lists:
                others.append((k, lists))
        else:
            others.append((k, matches))

    preds: list[str] = []
    if nodetype == lib.LYS_LIST:
        # full key predicates first, in schema order: libyang hashes those
        rest = []
        for key in _keys(snode):
            for i, (leaves, ktext, k) in enumerate(conds):
                if len(leaves) == 1 and leaves[0] == key and i not in rest:
                    preds.append(f"[{_step(key, snode.module)}={quote(_value(key, ktext, k, schema))}]")
                    rest.append(i)
                    break
        todo = [c for i, c in enumerate(conds) if i not in rest]
    else:
        todo = conds
    for leaves, ktext, k in todo:
        alts = [f"{_step(m, snode.module)}={quote(_value(m, ktext, k, schema))}" for m in leaves]
        preds.append(f"[{' or '.join(alts)}]")
    here = path + "".join(preds)

    if not others:
        return [here]  # only content matches: the whole node
    out: list[str] = []
    for k, matches in others:
        for m in matches:
            out.extend(_node_xpaths(k, m, here, snode.module, schema))
    for leaves, ktext, k in conds:  # content-match nodes are output too
        for m in leaves:
            leaf = f"{here}/{_step(m, snode.module)}"
            out.append(leaf if len(leaves) == 1 else f"{leaf}[.={quote(_value(m, ktext, k, schema))}]")
    return out


# ---------------------------------------------------------------------------------
# xpath filters

_TOKEN = re.compile(
    r"""
      (?P<lit>'[^']*'|"[^"]*")
    | (?P<ws>\s+)
    | (?P<num>\d+(?:\.\d*)?|\.\d+)
    | (?P<var>\$[^\W\d][\w.-]*(?::[^\W\d][\w.-]*)?)
    | (?P<qname>(?P<pfx>[^\W\d][\w.-]*):(?P<local>[^\W\d][\w.-]*|\*))
    | (?P<name>[^\W\d][\w.-]*)
    | (?P<dots>\.\.|\.)
    | (?P<op>::|//|/|\||\+|-|!=|<=|>=|=|<|>|\*|\(|\)|\[|\]|,|@)
    """,
    re.X,
)
_OPERATOR_NAMES = {"and", "or", "mod", "div"}
_NODE_TYPES = {"node", "text", "comment", "processing-instruction"}
# after these (or at the start) a name is a name test and * a wildcard (XPath 1.0 §3.7)
_OPERAND_BEFORE = {None, "@", "::", "(", "[", ",", "and", "or", "mod", "div", "*", "/", "//", "|",
                   "+", "-", "=", "!=", "<", "<=", ">", ">="}
# ... and a location path starts there, unless it continues one
_NOT_A_START = {"@", "::", "/", "//"}


def xpaths_from_select(select: str, nsmap: dict[str | None, str], ctx) -> list[str]:
    """The select attribute of <filter type='xpath'> as libyang XPaths, one for
    each operand of a top-level union: libyang 2.1 fails to evaluate a union
    whose operand has an and/or predicate, so the server selects each apart.

    Prefixes are XML namespace prefixes from nsmap (the filter element's .nsmap);
    they become module names. String literals, axes and function names are kept.
    Relative location paths at the top level (context: the root, RFC 6241 §8.9)
    are made absolute. An unprefixed first step names the one module with a
    top-level node of that name (later unprefixed steps inherit it, as in
    libyang), so `/device/inventory` works as netconf-console users expect. Raises FilterError('invalid-value') for an unknown prefix,
    a namespace no module implements, or an expression libyang rejects or that
    is not a node-set.
    """
    schema = _schema_for(ctx)
    tokens = check_select(select, YANG_FUNCTIONS)
    parts: list[str] = []
    out: list[str] = []
    prev = None  # previous significant token (operator names and '*' classified)
    depth = 0  # predicate nesting: inside [...] the context node is no longer the root
    parens = 0
    first_step = False  # the next name test is the first step of a path from the root
    for i, (kind, text, m) in enumerate(tokens):
        if kind == "ws":
            out.append(text)
            continue
        operand = prev in _OPERAND_BEFORE  # a name here is a name test, '*' a wildcard
        starts_path = operand and prev not in _NOT_A_START and depth == 0
        root = "/" if starts_path else ""
        if kind == "qname":
            if _next_significant(tokens, i) == "(":
                out.append(text)  # a prefixed function name, not a name test
            else:
                pfx = m.group("pfx")
                ns = nsmap.get(pfx)
                if ns is None:
                    raise FilterError("invalid-value", f'unknown prefix "{pfx}" in the xpath filter')
                mod = schema.module_name(ns)
                if mod is None:
                    raise FilterError("invalid-value", f'no module implements namespace "{ns}" (xpath filter)')
                out.append(f"{root}{mod}:{m.group('local')}")
            prev = "qname"
            first_step = False
        elif kind == "name":
            if not operand and text in _OPERATOR_NAMES:
                out.append(text)
                prev = text
                continue
            function = _next_significant(tokens, i) == "(" and text not in _NODE_TYPES
            nxt = _next_significant(tokens, i)
            if (first_step or starts_path) and not function and nxt != "::" and text not in _NODE_TYPES:
                text = f"{_top_module(schema, text)}:{text}"
            out.append(text if function else root + text)  # a name test, node type test or axis
            prev = "name"
            first_step = False
        elif kind == "op":
            if text == "*" and operand:  # wildcard name test
                out.append(root + text)
                prev = "name"
                first_step = False
                continue
            if text in ("/", "//"):
                first_step = text == "/" and operand and prev not in _NOT_A_START and depth == 0
            if text == "|" and depth == 0 and parens == 0:
                parts.append("".join(out).strip())
                out = []
                prev = text
                continue
            if text == "@":
                out.append(root)
            elif text == "(":
                parens += 1
            elif text == ")":
                parens -= 1
            elif text == "[":
                depth += 1
            elif text == "]":
                depth -= 1
            out.append(text)
            prev = text
        elif kind == "dots" and text == "." and starts_path:
            out.append("/.")  # the context node is the root
            prev = kind
        else:  # literal, number, variable, '..'
            out.append(text)
            prev = kind
    parts.append("".join(out).strip())
    for xpath in parts:
        _check(xpath, ctx)
    return parts


def check_select(select: str, functions: frozenset[str]) -> list[tuple[str, str, re.Match]]:
    """The tokens of an xpath filter's select expression, which must keep within the
    caps above and call only the given functions (unprefixed: no extensions).

    Raises FilterError: 'too-big' for a cap, 'invalid-value' for a refused construct."""
    if len(select) > MAX_XPATH_LENGTH:
        raise FilterError("too-big", f"the xpath filter is longer than {MAX_XPATH_LENGTH} characters", TOO_LARGE)
    tokens = _tokenize(select)
    nesting = []  # the open brackets
    descendant = 0
    prev = None
    for i, (kind, text, _) in enumerate(tokens):
        if kind == "ws":
            continue
        operand = prev in _OPERAND_BEFORE
        in_predicate = "[" in nesting
        nxt = _next_significant(tokens, i)
        if kind in ("name", "qname") and nxt == "(" and text not in _NODE_TYPES and \
                not (kind == "name" and not operand and text in _OPERATOR_NAMES):
            if kind == "qname" or text not in functions:
                raise FilterError("invalid-value", f'xpath filter: the function "{text}" is not allowed', NOT_ALLOWED)
        elif kind == "name" and nxt == "::":
            axes = _PREDICATE_AXES if in_predicate else _TOP_AXES
            if text not in axes:
                where = "in a predicate" if in_predicate else "in an xpath filter"
                raise FilterError("invalid-value", f'xpath filter: the axis "{text}" is not allowed {where}',
                                  NOT_ALLOWED)
            descendant += text.startswith("descendant")
        elif text == "//":
            descendant += 1
        if in_predicate and (text == ".." or text == "//" or (text == "/" and operand and prev not in _NOT_A_START)):
            raise FilterError("invalid-value", f'xpath filter: "{text}" is not allowed in a predicate '
                              "(a predicate looks only at the node and its children)", NOT_ALLOWED)
        if descendant > MAX_XPATH_DESCENDANT:
            raise FilterError("too-big", f"the xpath filter has more than {MAX_XPATH_DESCENDANT} descendant steps",
                              TOO_LARGE)
        if text in ("[", "("):
            nesting.append(text)
            if len(nesting) > MAX_XPATH_NESTING:
                raise FilterError("too-big", f"the xpath filter nests more than {MAX_XPATH_NESTING} levels "
                                  "of brackets", TOO_LARGE)
        elif text in ("]", ")") and nesting:
            nesting.pop()
        if kind == "op":
            prev = "name" if text == "*" and operand else text
        elif kind == "name" and not operand and text in _OPERATOR_NAMES:
            prev = text
        else:
            prev = "name" if kind in ("name", "qname") else kind
    return tokens


def _top_module(schema: _Schema, name: str) -> str:
    mods = {_s(n.module.name) for n in schema.children(None).get(name, [])}
    if len(mods) != 1:
        where = "no module" if not mods else f"several modules ({', '.join(sorted(mods))})"
        raise FilterError("invalid-value", f'xpath filter: {where} with a top-level node "{name}"; use a prefix')
    return mods.pop()


def _tokenize(expr: str) -> list[tuple[str, str, re.Match]]:
    tokens = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise FilterError("invalid-value", f"invalid xpath filter: unexpected {expr[pos]!r} at offset {pos}")
        tokens.append((m.lastgroup, m.group(), m))
        pos = m.end()
    return tokens


def _next_significant(tokens, i: int) -> str | None:
    for j in range(i + 1, len(tokens)):
        if tokens[j][0] != "ws":
            return tokens[j][1]
    return None


def _check(xpath: str, ctx) -> None:
    """libyang must accept xpath (syntax, modules) and it must give a node-set."""
    s = ffi.new("struct ly_set **")
    if lib.lys_find_xpath(ctx.cdata, ffi.NULL, xpath.encode(), 0, s) != lib.LY_SUCCESS:
        raise FilterError("invalid-value", f"invalid xpath filter: {ctx.error(xpath)}")
    lib.ly_set_free(s[0], ffi.NULL)
    if not _is_node_set(_tokenize(xpath)):
        raise FilterError("invalid-value", f'invalid xpath filter: "{xpath}" does not select nodes')


# functions whose result is a node-set (XPath 1.0 id(); YANG current() and deref())
_NODE_SET_FUNCTIONS = {"id", "current", "deref"}


def _is_node_set(tokens) -> bool:
    """Whether the expression's value is a node-set, from its top-level tokens.

    A static check because libyang 2.1 cannot be asked on sample data: an
    and/or predicate evaluated on an empty node-set fails there."""
    depth = 0
    prev = fname = None
    for i, (kind, text, _) in enumerate(tokens):
        if kind == "ws":
            continue
        operand = prev in _OPERAND_BEFORE
        if text in ("[", "("):
            if depth == 0 and text == "(" and prev == "function" and fname not in _NODE_SET_FUNCTIONS:
                return False
            depth += 1
        elif text in ("]", ")"):
            depth -= 1
        elif depth == 0:
            if kind in ("lit", "num", "var"):
                return False
            if kind == "op" and text not in ("/", "//", "|", "@", "::") and not (text == "*" and operand):
                return False
            if kind == "name" and not operand and text in _OPERATOR_NAMES:
                return False
            if kind in ("name", "qname") and _next_significant(tokens, i) == "(" and text not in _NODE_TYPES:
                fname = text.split(":")[-1]
                prev = "function"
                continue
        prev = text if kind == "op" or (kind == "name" and text in _OPERATOR_NAMES and not operand) else kind
    return True


_TOP = re.compile(r"/([^\W\d][\w.-]*):")


def top_level_modules(xpaths: list[str]) -> set[str] | None:
    """Modules of the top-level nodes the xpaths can select, or None when that is
    not plain from the text (a wildcard, union, descendant axis or relative path)."""
    mods: set[str] = set()
    for xp in xpaths:
        m = _TOP.match(xp)
        if m is None or "|" in xp or xp.startswith("//") or "::" in xp.split("/")[1]:
            return None
        mods.add(m.group(1))
    return mods


# ---------------------------------------------------------------------------------
# selecting data


def _find(root, xpath: str, ctx) -> list:
    s = ffi.new("struct ly_set **")
    if lib.lyd_find_xpath(root, xpath.encode(), s) != lib.LY_SUCCESS:
        err = ctx.error(xpath)
        if _EMPTY_SET_BUG.search(str(err)):
            # libyang 2.1 fails an and/or predicate on an empty node-set
            # instead of giving an empty result; the filter passed _check.
            return []
        raise FilterError("invalid-value", f"cannot evaluate the filter: {err}")
    try:
        return [s[0].dnodes[i] for i in range(s[0].count)]
    finally:
        lib.ly_set_free(s[0], ffi.NULL)


_EMPTY_SET_BUG = re.compile(r"is not a node set|Cannot apply XPath operation")


def _dup(node, parent, recursive: bool, ctx):
    """Copy node (its list keys always come along) into parent (NULL: standalone)."""
    flags = lib.LYD_DUP_WITH_FLAGS | (lib.LYD_DUP_RECURSIVE if recursive else 0)
    out = ffi.new("struct lyd_node **")
    par = ffi.cast("struct lyd_node_inner *", parent) if parent != ffi.NULL else ffi.NULL
    if lib.lyd_dup_single(node, par, flags, out) != lib.LY_SUCCESS:
        raise ctx.error("cannot copy the selected data")
    return out[0]


def _parent(node):
    p = node.parent
    return ffi.cast("struct lyd_node *", p) if p != ffi.NULL else ffi.NULL


def select(data: "libyang.DNode | None", xpaths: Iterable[str], ctx) -> "libyang.DNode | None":
    """A new tree holding every node any of xpaths matches in data, each with its
    subtree, its ancestors and the keys of ancestor list entries. The first
    top-level sibling is returned, or None when nothing matched. data is left
    as it is; nodes matched several times (or inside another match) appear once.
    """
    xpaths = list(xpaths)
    if data is None or data.cdata is None or not xpaths:
        return None
    root = data.cdata

    found: dict[int, tuple[object, int]] = {}
    for i, xp in enumerate(xpaths):
        for node in _find(root, xp, ctx):
            found.setdefault(_addr(node), (node, i))

    # a node inside another selected node comes with it
    keep = []
    for node, i in found.values():
        p = _parent(node)
        while p != ffi.NULL and _addr(p) not in found:
            p = _parent(p)
        if p == ffi.NULL:
            keep.append((node, i))

    made: dict[int, object] = {}  # input node -> its copy (ancestor shell)
    tops: list = []
    # user-ordered list / leaf-list copies: (copy parent, schema) -> [(input, copy, xpath index)]
    ordered: dict[tuple[int, int], list] = {}

    def note(src, copy, res_parent, i):
        if res_parent == ffi.NULL:
            tops.append(copy)
        elif (src.schema != ffi.NULL and src.schema.nodetype & (lib.LYS_LIST | lib.LYS_LEAFLIST)
              and src.schema.flags & lib.LYS_ORDBY_USER):
            ordered.setdefault((_addr(res_parent), _addr(src.schema)), []).append((src, copy, i))

    try:
        for node, i in keep:
            chain = []
            p = _parent(node)
            while p != ffi.NULL and _addr(p) not in made:
                chain.append(p)
                p = _parent(p)
            res_parent = made[_addr(p)] if p != ffi.NULL else ffi.NULL
            for anc in reversed(chain):
                copy = _dup(anc, res_parent, False, ctx)
                note(anc, copy, res_parent, i)
                made[_addr(anc)] = copy
                res_parent = copy
            if res_parent != ffi.NULL and node.schema != ffi.NULL and node.schema.flags & lib.LYS_KEY:
                continue  # a list key: copied with its list entry
            note(node, _dup(node, res_parent, True, ctx), res_parent, i)

        for (res_parent, _), entries in ordered.items():
            if len({i for _, _, i in entries}) > 1:
                _restore_order(entries, ffi.cast("struct lyd_node *", res_parent), ctx)

        if not tops:
            return None
        first = ffi.new("struct lyd_node **")
        first[0] = tops[0]
        for t in tops[1:]:
            if lib.lyd_merge_siblings(first, t, lib.LYD_MERGE_DESTRUCT | lib.LYD_MERGE_WITH_FLAGS) != lib.LY_SUCCESS:
                raise ctx.error("cannot assemble the selected data")
        tops = [first[0]]
        return libyang.DNode.new(ctx, lib.lyd_first_sibling(first[0]))
    except BaseException:
        for t in tops:
            lib.lyd_free_all(t)
        raise


def _restore_order(entries: list, res_parent, ctx) -> None:
    """Copies of a user-ordered list were made xpath by xpath: put them back in
    the data's order (walks that list's siblings in the input, only in this case)."""
    where = {_addr(src): n for n, (src, _, _) in enumerate(entries)}
    pos = {}
    sib = lib.lyd_first_sibling(entries[0][0])
    n = 0
    while sib != ffi.NULL and len(pos) < len(where):
        if _addr(sib) in where:
            pos[_addr(sib)] = n
        n += 1
        sib = sib.next
    wanted = sorted(entries, key=lambda e: pos.get(_addr(e[0]), n))
    if [e[1] for e in wanted] == [e[1] for e in entries]:
        return
    for src, copy, _ in wanted:  # re-append in order: user-ordered instances go last
        _dup(copy, res_parent, True, ctx)
        lib.lyd_free_tree(copy)
