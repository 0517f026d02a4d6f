"""Backend data as libyang trees.

Backends hand state, RPC output and notifications over as Python data; this module
builds the libyang tree from it, checked against the schema as it is built. The
data has the shape of an RFC 7951 JSON object:

- a node's name is `module:name` where its module differs from its parent's (at the
  top always; inside, for what an augment adds), otherwise plain `name`;
- a container is a dict, a list is a list of dicts (key leaves first), a leaf-list a
  list of values;
- a leaf value is a str, an int or a bool; None leaves the node out. An identity is
  `module:name`, as RFC 7951 writes identityref values.

The tree is built by one call to libyang's parser over an encoding of the data made
here, with the one escaping rule (`xml_text`), rather than by a libyang call per node
from Python (the binding's `dict_to_dnode`): state reads of a large device stay as fast
as they were (tests/test_reference_forms.py holds the two to the same trees). A value the
schema refuses, text XML cannot carry (control characters, U+FFFE), an unknown node or a
name without its module is a DataError: the backend's bug, which the caller logs and
answers with operation-failed.
"""
from __future__ import annotations

import libyang
from _libyang import ffi, lib

from . import datastore
from .backend import xml_text

# libyang parses an RPC reply only inside the NETCONF <rpc-reply> envelope
_REPLY_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


class DataError(Exception):
    """Backend data that does not match its schema."""


def _encode(ctx, data: dict, ns: str | None, out: list[str]) -> None:
    for key, value in data.items():
        if value is None:
            continue
        module, _, name = key.rpartition(":")
        child_ns = ns
        if module:
            child_ns = ctx.namespace_of(module)
            if child_ns is None:
                raise DataError(f'"{key}": no module "{module}"')
        elif ns is None:
            raise DataError(f'"{key}": a top-level node needs its module name')
        head = f'<{name} xmlns="{child_ns}">' if child_ns != ns else f"<{name}>"
        tail = f"</{name}>"
        for item in value if type(value) is list else (value,):
            if type(item) is dict:
                out.append(head)
                _encode(ctx, item, child_ns, out)
                out.append(tail)
            elif type(item) is str:
                out.append(_with_prefix(ctx, head, item) + xml_text(item) + tail)
            elif type(item) is bool:
                out.append(head + ("true" if item else "false") + tail)
            else:
                out.append(head + xml_text(str(item)) + tail)


def _with_prefix(ctx, head: str, value: str) -> str:
    """head, binding the module name of a `module:name` value as its XML prefix: what
    an identityref needs, and harmless on a string leaf that reads the same."""
    module, colon, _ = value.partition(":")
    if not colon:
        return head
    ns = ctx.identity_namespace(module)
    return head if ns is None else f'{head[:-1]} xmlns:{module}="{xml_text(ns)}">'


def encode(ctx, data: dict) -> str:
    """The XML encoding of top-level data."""
    out: list[str] = []
    _encode(ctx, data, None, out)
    return "".join(out)


def state(ctx, data: dict | None) -> datastore.Tree:
    """A state provider's data as a tree: each value checked against its type, each node
    against the schema. (Whole-module rules, such as mandatory nodes, are not checked on
    every read: that costs more than building the tree.)"""
    if not data:
        return None
    try:
        tree = ctx.parse_data_mem(encode(ctx, data), "xml", strict=True, parse_only=True)
    except libyang.LibyangError as exc:
        raise DataError(str(exc)) from None
    return tree


def notification(ctx, path: str, data: dict) -> str:
    """The XML of a notification (`/module:name`) with its content; the notification
    bus parses it against the schema before anyone sees it."""
    return encode(ctx, {path.lstrip("/"): data})


def output(ctx, op, data: dict, running) -> str:
    """The XML of an RPC's or action's output. op: the `struct lyd_node *` of the
    operation as parsed; running: the tree its leafrefs and musts are checked against.
    The output is built as a tree, validated, and printed from it."""
    dup = ffi.new("struct lyd_node **")
    if lib.lyd_dup_single(op, ffi.NULL, lib.LYD_DUP_WITH_PARENTS, dup) != lib.LY_SUCCESS:
        raise ctx.error("cannot copy the operation")
    top = dup[0]
    while top.parent != ffi.NULL:
        top = ffi.cast("struct lyd_node *", top.parent)
    try:
        module = ffi.string(op.schema.module.name).decode()
        qualified = {k if ":" in k else f"{module}:{k}": v for k, v in data.items()}
        reply = f'<rpc-reply xmlns="{_REPLY_NS}">{encode(ctx, qualified)}</rpc-reply>'.encode()
        _parse_reply(ctx, dup[0], reply)
        if lib.lyd_validate_op(dup[0], running.cdata if running is not None else ffi.NULL,
                               lib.LYD_TYPE_REPLY_YANG, ffi.NULL) != lib.LY_SUCCESS:
            raise DataError(str(ctx.error("invalid output")))
        return _print_children(ctx, dup[0])
    finally:
        lib.lyd_free_all(top)


def _parse_reply(ctx, op, reply: bytes) -> None:
    in_ = ffi.new("struct ly_in **")
    lib.ly_in_new_memory(reply, in_)
    envelope = ffi.new("struct lyd_node **")
    try:
        rc = lib.lyd_parse_op(ctx.cdata, op, in_[0], lib.LYD_XML, lib.LYD_TYPE_REPLY_NETCONF, envelope, ffi.NULL)
    finally:
        lib.ly_in_free(in_[0], 0)
    if envelope[0] != ffi.NULL:
        lib.lyd_free_all(envelope[0])
    if rc != lib.LY_SUCCESS:
        raise DataError(str(ctx.error("invalid output")))


def _print_children(ctx, op) -> str:
    """The output nodes under op, copied out first so that each prints its namespace."""
    child = lib.lyd_child(op)
    if child == ffi.NULL:
        return ""
    out = ffi.new("struct lyd_node **")
    if lib.lyd_dup_siblings(child, ffi.NULL, lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS, out) != lib.LY_SUCCESS:
        raise ctx.error("cannot copy the output")
    tree = libyang.DNode.new(ctx, out[0])
    try:
        return datastore.to_xml(tree)
    finally:
        datastore.free(tree)
