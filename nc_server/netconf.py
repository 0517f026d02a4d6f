"""RFC 6241 base operations. Each handler takes (session, operation element) and
returns None (<ok/>), or the XML text to put inside <rpc-reply>; get and get-config
are coroutines."""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import libyang
from lxml import etree

from backends.engine.errors import EngineError
from yangcore import datastore, datatree

from . import filters, notifications
from .edit import apply_edit
from .errors import NC_NS, RpcError, RpcErrors, to_rpc_errors, wire_errors

log = logging.getLogger(__name__)

WD_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
WD_MODES = ("report-all", "report-all-tagged", "trim", "explicit")
WD_DEFAULT_NS = "urn:ietf:params:xml:ns:netconf:default:1.0"  # RFC 6243 §6


def _q(name: str) -> str:
    return f"{{{NC_NS}}}{name}"


def _params(op: etree._Element, allowed: dict[str, bool]) -> dict[str, etree._Element]:
    """Children by local name. allowed: name -> mandatory. Unknown and missing ones are errors."""
    found: dict[str, etree._Element] = {}
    for child in op:
        q = etree.QName(child)
        name = q.localname
        ns_ok = q.namespace == NC_NS or (name == "with-defaults" and q.namespace == WD_NS)
        if name not in allowed or not ns_ok:
            raise RpcError("unknown-element", f'unexpected parameter "{name}" in <{etree.QName(op).localname}>',
                           type="protocol", info=[("bad-element", name)])
        if name in found:
            raise RpcError("bad-element", f'parameter "{name}" given twice', type="protocol",
                           info=[("bad-element", name)])
        found[name] = child
    for name, mandatory in allowed.items():
        if mandatory and name not in found:
            raise RpcError("missing-element", f'<{etree.QName(op).localname}> needs the "{name}" parameter',
                           type="protocol", info=[("bad-element", name)])
    return found


def _store_choice(el: etree._Element, allowed: tuple[str, ...], *, inline: bool = False):
    """The datastore named inside <source>/<target>, or the inline <config> element."""
    kids = [c for c in el if isinstance(c.tag, str)]
    if len(kids) != 1:
        raise RpcError("missing-element" if not kids else "bad-element",
                       f"<{etree.QName(el).localname}> must name exactly one datastore",
                       type="protocol", info=[("bad-element", etree.QName(el).localname)])
    q = etree.QName(kids[0])
    if q.namespace == NC_NS and q.localname == "config" and inline:
        return kids[0]
    if q.namespace == NC_NS and q.localname == "url":
        raise RpcError("operation-not-supported", "the :url capability is not supported", type="protocol")
    if q.namespace != NC_NS or q.localname not in allowed:
        raise RpcError("invalid-value", f'"{q.localname}" is not a datastore allowed here ({", ".join(allowed)})',
                       type="protocol", info=[("bad-element", q.localname)])
    return q.localname


def _with_defaults(params) -> str:
    el = params.get("with-defaults")
    if el is None:
        return "explicit"
    mode = (el.text or "").strip()
    if mode not in WD_MODES:
        raise RpcError("invalid-value", f'with-defaults "{mode}" is not one of {", ".join(WD_MODES)}',
                       type="protocol", info=[("bad-element", "with-defaults")])
    return mode


class Selection(NamedTuple):
    """What a filter selects: location paths, and whether selecting them costs about one
    walk of the tree each (the paths a subtree filter makes) or may cost more (XPath)."""

    xpaths: list[str]
    linear: bool


def _filter(session, params) -> Selection | None:
    el = params.get("filter")
    if el is None:
        return None
    kind = el.get("type", "subtree")
    try:
        if kind == "subtree":
            return Selection(filters.subtree_to_xpaths(el, session.server.ctx), True)
        if kind == "xpath":
            select = el.get("select")
            if select is None:
                raise RpcError("missing-attribute", "an xpath filter needs a select attribute", type="protocol",
                               info=[("bad-attribute", "select"), ("bad-element", "filter")])
            return Selection(filters.xpaths_from_select(select, dict(el.nsmap), session.server.ctx), False)
    except filters.FilterError as exc:
        raise RpcError(exc.tag, str(exc), type="protocol", app_tag=exc.app_tag,
                       info=[("bad-element", "filter")]) from None
    raise RpcError("bad-attribute", f'filter type "{kind}" is not supported', type="protocol",
                   info=[("bad-attribute", "type"), ("bad-element", "filter")])


async def _data_reply(session, tree, selection: Selection | None, mode: str, *, owned: bool) -> str:
    acm = session.server.acm
    if acm.checked(session) is not None and tree is not None:
        if not owned:
            tree, owned = datastore.duplicate(tree), True
        tree = acm.filter_read(session, tree)
    ctx = session.server.ctx
    if selection is None:
        try:
            body = datastore.to_xml(tree, defaults=mode)
        finally:
            if owned:
                datastore.free(tree)
    elif selection.linear and len(selection.xpaths) <= INLINE_SELECTIONS:
        # as cheap as printing the tree, which an unfiltered reply does here too
        try:
            body = _selected_xml(tree, selection.xpaths, mode, ctx)
        finally:
            if owned:
                datastore.free(tree)
    else:
        if not owned:  # the worker needs its own copy: a commit frees the tree it replaces
            tree = datastore.duplicate(tree)
        body = await asyncio.get_running_loop().run_in_executor(
            _FILTER_WORKER, _selected_xml_freeing, tree, selection.xpaths, mode, ctx)
    if mode == "report-all-tagged":
        body = _RFC6243_DEFAULT.sub(_rfc6243_default, body)
    return f'<data xmlns="{NC_NS}">{body}</data>'


# libyang tags defaults with its annotation of ietf-netconf-with-defaults; RFC 6243 §6 puts
# the default attribute in its own namespace. Only tags are rewritten: text holds no "<".
_LIBYANG_WD = 'xmlns:ncwd="urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"'
_RFC6243_DEFAULT = re.compile(r"<[^<>]* (?:xmlns:)?ncwd[:=][^<>]*>")


def _rfc6243_default(tag: re.Match) -> str:
    return (tag.group(0).replace(_LIBYANG_WD, f'xmlns:wd="{WD_DEFAULT_NS}"')
            .replace(" ncwd:default=", " wd:default="))


# XPath filters (whose cost an expression can multiply) and subtree filters of more than
# INLINE_SELECTIONS paths are selected and printed off the event loop, one at a time (at
# most one core). libyang allows this: each tree is used by one thread only, the context
# is not changed after start, and its errors are kept per thread. A few paths of a subtree
# filter are selected on the loop: the thread hop would cost more than the selection.
INLINE_SELECTIONS = 8
_FILTER_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filter")


def _selected_xml(tree, xpaths: list[str], mode: str, ctx) -> str:
    """The XML of what xpaths select in tree; tree is left as it is."""
    try:
        selected = filters.select(tree, xpaths, ctx)
        try:
            return datastore.to_xml(selected, defaults=mode)
        finally:
            datastore.free(selected)
    except filters.FilterError as exc:
        raise RpcError(exc.tag, str(exc), type="protocol", app_tag=exc.app_tag,
                       info=[("bad-element", "filter")]) from None


def _selected_xml_freeing(tree, xpaths: list[str], mode: str, ctx) -> str:
    """(On the filter worker.) _selected_xml, and tree is freed: here, so that a request
    cancelled meanwhile cannot free it while it is read."""
    try:
        return _selected_xml(tree, xpaths, mode, ctx)
    finally:
        datastore.free(tree)


async def get_config(session, op):
    params = _params(op, {"source": True, "filter": False, "with-defaults": False})
    name = _store_choice(params["source"], ("running", "candidate", "startup"))
    mode = _with_defaults(params)
    selection = _filter(session, params)
    return await _data_reply(session, session.server.config.datastore(name).tree, selection, mode, owned=False)


_PRED = re.compile(r"\[[^\]]*\]")


def _wanted(provider_path: str, xpaths: list[str] | None) -> bool:
    """Does any filter xpath select (part of) the provider's subtree?"""
    if xpaths is None:
        return True
    want = [s.split(":")[-1] for s in provider_path.split("/") if s]
    top_mod = provider_path.split("/")[1].split(":")[0]
    for xp in xpaths:
        if "//" in xp or "*" in xp or not xp.startswith("/") or "|" in xp:
            return True
        steps = [s for s in _PRED.sub("", xp).split("/") if s]
        if not steps or ":" not in steps[0] or steps[0].split(":")[0] != top_mod:
            continue
        names = [s.split(":")[-1] for s in steps]
        n = min(len(names), len(want))
        if names[:n] == want[:n]:
            return True
    return False


def _with_state(server, xpaths) -> datastore.Tree:
    """running plus the state of the providers the filter selects (None: all)."""
    tree = server.running.copy()
    try:
        called = set()  # one provider may serve several subtrees
        for path, provider in server.state_providers.items():
            if _wanted(path, xpaths) and provider not in called:
                called.add(provider)
                state = datatree.state(server.ctx, provider())
                try:
                    tree = datastore.merge(server.ctx, tree, state)
                finally:
                    datastore.free(state)
    except (datatree.DataError, libyang.LibyangError) as exc:
        datastore.free(tree)
        log.error("state data does not match its schema: %s", exc)
        raise RpcError("operation-failed", "internal error: state data does not match its schema") from None
    return tree


def rpc_output(server, op, spath: str, data: dict) -> str:
    """The reply body of a YANG RPC or action whose handler returned data. op: the
    `struct lyd_node *` of the operation as parsed."""
    try:
        return datatree.output(server.ctx, op, data, server.running.tree)
    except datatree.DataError as exc:
        log.error("%s output does not match its schema: %s", spath, exc)
        raise RpcError("operation-failed", "internal error: the reply does not match its schema") from None


async def get(session, op):
    params = _params(op, {"filter": False, "with-defaults": False})
    mode = _with_defaults(params)
    selection = _filter(session, params)
    xpaths = selection.xpaths if selection is not None else None
    return await _data_reply(session, _with_state(session.server, xpaths), selection, mode, owned=True)


def _redacted(handler):
    """For a handler that checks a whole configuration: its errors may name any node in it,
    so they go through the session's read access first (see AccessControl.redact_errors)."""
    @functools.wraps(handler)
    def run(session, op):
        try:
            return handler(session, op)
        except (RpcError, RpcErrors, EngineError) as exc:
            errors = session.server.acm.redact_errors(session, wire_errors(exc))
            raise errors[0] if len(errors) == 1 else RpcErrors(errors) from None
    return run


@_redacted
def edit_config(session, op):
    params = _params(op, {"target": True, "default-operation": False, "test-option": False,
                          "error-option": False, "config": False, "url": False})
    if "url" in params:
        raise RpcError("operation-not-supported", "the :url capability is not supported", type="protocol")
    if "config" not in params:
        raise RpcError("missing-element", "<edit-config> needs <config>", type="protocol",
                       info=[("bad-element", "config")])
    name = _store_choice(params["target"], ("running", "candidate"))
    default_op = _enum(params, "default-operation", ("merge", "replace", "none"), "merge")
    test_option = _enum(params, "test-option", ("test-then-set", "set", "test-only"), "test-then-set")
    error_option = _enum(params, "error-option", ("stop-on-error", "continue-on-error", "rollback-on-error"),
                         "stop-on-error")
    server = session.server
    server.check_writable(name, session.id)
    target = server.config.datastore(name)
    new, errors = apply_edit(server.ctx, target.copy(), params["config"], default_operation=default_op,
                             error_option=error_option, may_know=server.acm.existence_guard(session))
    server.config.protect_secrets(new)
    _check_writes(session, target.tree, new, sent=True)
    if test_option == "test-only":
        datastore.free(_validated(session, target.tree, new))
    elif name == "running":
        server.config.commit(_validated(session, target.tree, new), server.running, session)
        if not server.candidate_dirty:
            server.candidate.replace(server.running.copy())
    else:
        if test_option == "test-then-set":
            new = _validated(session, target.tree, new)
        server.candidate.replace(new)
        server.candidate_dirty = True
    if errors:
        raise errors[0] if len(errors) == 1 else RpcErrors(errors)
    return None


def _check_writes(session, old, new, *, sent: bool = False) -> None:
    """RFC 8341 write access for every change from old to new; frees new when refused.
    sent: new holds only what the request sent besides old (errors may name it)."""
    try:
        session.server.acm.check_tree_writes(session, old, new, sent=sent)
    except BaseException:
        datastore.free(new)
        raise


def _validated(session, old, new):
    """new, validated. Validation may delete nodes the request did not name (a when that
    became false, the other case of a choice): for a checked session those deletions are
    checked too. Frees new when refused."""
    server = session.server
    if server.acm.checked(session) is None:
        return server.config.validate(new)
    try:
        new = server.config.validate(new)
    except BaseException:
        datastore.free(new)
        raise
    _check_writes(session, old, new)
    return new


def _enum(params, name: str, values: tuple[str, ...], default: str) -> str:
    el = params.get(name)
    if el is None:
        return default
    value = (el.text or "").strip()
    if value not in values:
        raise RpcError("invalid-value", f'{name} "{value}" is not one of {", ".join(values)}', type="protocol",
                       info=[("bad-element", name)])
    return value


def _source_tree(session, source_el):
    """A new tree for <source>: a copy of a datastore, or parsed inline <config>."""
    server = session.server
    src = _store_choice(source_el, ("running", "candidate", "startup"), inline=True)
    if isinstance(src, str):
        return src, server.config.datastore(src).copy()
    xml = b"".join(etree.tostring(c) for c in src if isinstance(c.tag, str))
    try:
        tree = datastore.parse_config(server.ctx, xml, validate_now=False)
    except libyang.LibyangError as exc:
        raise to_rpc_errors(exc) from None
    server.config.protect_secrets(tree)
    return None, tree


@_redacted
def copy_config(session, op):
    params = _params(op, {"target": True, "source": True, "with-defaults": False})
    _with_defaults(params)  # only meaningful for a :url target; still checked
    name = _store_choice(params["target"], ("running", "candidate", "startup"))
    server = session.server
    server.check_writable(name, session.id)
    src_name, tree = _source_tree(session, params["source"])
    if src_name == name:
        datastore.free(tree)
        raise RpcError("invalid-value", "source and target are the same datastore", type="protocol")
    old = server.config.datastore(name).tree
    _check_writes(session, old, tree, sent=src_name is None)
    if name == "candidate":
        server.candidate.replace(_validated(session, old, tree))
        server.candidate_dirty = True
    else:
        server.config.commit(_validated(session, old, tree), server.config.datastore(name), session)
        if name == "running" and not server.candidate_dirty:
            server.candidate.replace(server.running.copy())
    return None


@_redacted
def delete_config(session, op):
    params = _params(op, {"target": True})
    name = _store_choice(params["target"], ("running", "candidate", "startup"))
    if name != "startup":
        raise RpcError("invalid-value", f"the {name} datastore cannot be deleted", type="protocol",
                       info=[("bad-element", name)])
    session.server.check_writable(name, session.id)
    _check_writes(session, session.server.startup.tree, None)
    session.server.config.commit(None, session.server.startup, session)
    return None


def lock(session, op):
    params = _params(op, {"target": True})
    name = _store_choice(params["target"], ("running", "candidate", "startup"))
    server = session.server
    holder = server.locks.get(name)
    if holder is not None:
        raise RpcError("lock-denied", f"the {name} datastore is already locked by session {holder}",
                       type="protocol", info=[("session-id", str(holder))])
    if name == "candidate" and server.candidate_dirty:
        raise RpcError("lock-denied", "the candidate has uncommitted changes; commit or discard them first",
                       type="protocol", info=[("session-id", "0")])
    server.locks[name] = session.id
    server.lock_times[name] = time.time()
    return None


def unlock(session, op):
    params = _params(op, {"target": True})
    name = _store_choice(params["target"], ("running", "candidate", "startup"))
    server = session.server
    holder = server.locks.get(name)
    if holder != session.id:
        why = "is not locked" if holder is None else f"is locked by session {holder}"
        raise RpcError("operation-failed", f"the {name} datastore {why}", type="protocol")
    del server.locks[name]
    del server.lock_times[name]
    if name == "candidate":
        server.discard_candidate()  # RFC 6241 §8.3.5.2
    return None


@_redacted
def validate(session, op):
    params = _params(op, {"source": True})
    _name, tree = _source_tree(session, params["source"])
    server = session.server
    tree = server.config.validate(tree)
    datastore.free(tree)
    return None


@_redacted
def commit(session, op):
    params = _params(op, {"confirmed": False, "confirm-timeout": False, "persist": False, "persist-id": False})
    server = session.server
    server.check_writable("running", session.id)
    server.check_writable("candidate", session.id)
    confirmed = "confirmed" in params
    persist_id = _text(params.get("persist-id"))
    if not confirmed and ("confirm-timeout" in params or "persist" in params):
        raise RpcError("invalid-value", "confirm-timeout and persist need <confirmed/>", type="protocol")
    timeout = 600
    if "confirm-timeout" in params:
        text = _text(params["confirm-timeout"])
        if not text.isdigit() or not 0 < int(text) <= 0xFFFFFFFF:
            raise RpcError("invalid-value", f'confirm-timeout "{text}" is not a positive number of seconds',
                           type="protocol", info=[("bad-element", "confirm-timeout")])
        timeout = int(text)
    server.confirmed.check_access(session.id, persist_id, "commit", session.username == server.acm.recovery_user)
    pending = server.confirmed.pending is not None
    # the committing user needs write access to all it changes in running, whoever edited the candidate
    new = server.candidate.copy()
    _check_writes(session, server.running.tree, new)
    new = _validated(session, server.running.tree, new)
    # the confirmed-commit state changes on disk with running, in one commit
    writes = datastore.Writes()
    if confirmed:
        backup = None if pending else datastore.to_xml(server.running.tree)
        persist = _text(params["persist"]) if "persist" in params else None
        next_pending = server.confirmed.stage_begin(backup, session.id, timeout, persist, writes)
    elif pending:
        server.confirmed.stage_end(writes)
    server.config.commit(new, server.running, session, writes)
    server.candidate_dirty = False
    if confirmed:
        server.confirmed.start(next_pending)
        server.notify(notifications.confirmed_commit(session, "extend" if pending else "start", timeout))
    elif pending:
        server.confirmed.end()
        server.notify(notifications.confirmed_commit(session, "complete", None))
    return None


def cancel_commit(session, op):
    params = _params(op, {"persist-id": False})
    server = session.server
    if server.confirmed.pending is None:
        raise RpcError("operation-failed", "no confirmed commit is pending", type="protocol")
    persist_id = _text(params.get("persist-id"))
    recovery = session.username == server.acm.recovery_user
    server.confirmed.check_access(session.id, persist_id, "cancel-commit", recovery)
    holder = server.confirmed.pending.session_id
    if recovery and persist_id is None and holder != session.id:
        log.warning("session %d (%s) cancels the confirmed commit of %s", session.id, session.username,
                    f"session {holder}" if holder else "a session before the restart")
    writes = datastore.Writes()
    server.confirmed.stage_end(writes)
    tree = datastore.parse_config(server.ctx, server.confirmed.pending.backup_xml, validate_now=False)
    server.config.commit(tree, server.running, session, writes)
    server.confirmed.end()
    server.notify(notifications.confirmed_commit(session, "cancel", None))
    server.discard_candidate()
    return None


def discard_changes(session, op):
    _params(op, {})
    session.server.check_writable("candidate", session.id)
    session.server.discard_candidate()
    return None


def close_session(session, op):
    _params(op, {})
    session.connection.close_after_reply()
    return None


def kill_session(session, op):
    params = _params(op, {"session-id": True})
    text = _text(params["session-id"])
    if not text.isdigit():
        raise RpcError("invalid-value", f'session-id "{text}" is not a number', type="protocol",
                       info=[("bad-element", "session-id")])
    sid = int(text)
    if sid == session.id:
        raise RpcError("invalid-value", "a session cannot kill itself; use <close-session>", type="protocol",
                       info=[("bad-element", "session-id")])
    victim = session.server.sessions.get(sid)
    if victim is None:
        raise RpcError("invalid-value", f"no session {sid}", type="protocol", info=[("bad-element", "session-id")])
    log.info("session %d killed by session %d", sid, session.id)
    victim.kill(f"killed by session {session.id}", killed_by=session.id)
    return None


def _text(el) -> str | None:
    return None if el is None else (el.text or "").strip()


OPERATIONS = {
    "get": get,
    "get-config": get_config,
    "edit-config": edit_config,
    "copy-config": copy_config,
    "delete-config": delete_config,
    "lock": lock,
    "unlock": unlock,
    "validate": validate,
    "commit": commit,
    "cancel-commit": cancel_commit,
    "discard-changes": discard_changes,
    "close-session": close_session,
    "kill-session": kill_session,
}
