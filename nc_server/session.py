"""One NETCONF session: a Connection (hello, framing, the <rpc> envelope, the end
reason) fed from a transport under the hello and idle timeouts, and the dispatch of
its rpcs to the operations.

Transport-agnostic: it is given an async `read()` returning bytes (b"" at EOF), a
`write(bytes)` with an async `drain()`, and a `close()`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time

import libyang
from _libyang import ffi, lib
from lxml import etree

from backends.engine.errors import EngineError
from yangcore.datastore import data_path

from . import local_users, netconf, notifications
from .connection import NEED_DATA, BadRpc, Closed, Connection, EndReason, Hello, State
from .errors import NC_NS, RpcError, RpcErrors, to_rpc_errors, wire_errors
from .netconf_monitoring import Counters

log = logging.getLogger(__name__)


class _Deadline:
    """When the current read must end, for the task doing the reads. Moving it is an
    assignment: the one timer handle is re-armed only when it fires early, where
    asyncio.timeout schedules and cancels a handle around every read."""

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.at: float | None = None  # None: not reading
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None

    def start(self, seconds: float) -> None:
        self.at = self.loop.time() + seconds
        if self._handle is not None and self._handle.when() > self.at:
            self._handle.cancel()
            self._handle = None
        if self._handle is None:
            self._handle = self.loop.call_at(self.at, self._check)

    def stop(self) -> None:
        self.at = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self.at is None:
            return
        if self.loop.time() < self.at:
            self._handle = self.loop.call_at(self.at, self._check)
            return
        self.expired = True
        self.task.cancel()


class Session:
    """Drives a Connection with a transport and dispatches its rpcs; the session's
    protocol state lives in the Connection."""

    def __init__(self, server, username: str, source: str, transport: str, read, write, drain, close):
        self.server = server
        self.id = server.new_session_id()
        self.username = username
        self.source = source
        self.transport = transport
        self.login_time = time.time()
        self._read, self._write, self._drain, self._close = read, write, drain, close
        self.connection = Connection(self.id, server.capabilities, server.limits.max_message,
                                     Counters(server.stats))

    # -- lifecycle ----------------------------------------------------------
    async def run(self) -> None:
        server, conn = self.server, self.connection
        server.sessions[self.id] = self
        server.stats.in_sessions += 1
        log.info("session %d started: user %s from %s", self.id, self.username, self.source)
        self._deadline = _Deadline()
        started = False
        try:
            self._write(conn.send_hello())
            event = await self._next_event(server.limits.hello_timeout, "hello")
            if isinstance(event, Hello):
                started = True
                server.notify(notifications.session_start(self))
            while conn.state is not State.CLOSED:
                event = await self._next_event(server.limits.idle_timeout, "idle")
                if isinstance(event, Closed):
                    break
                reply, error = await self.handle(event)
                if conn.state is not State.CLOSED:
                    self._write(conn.send_reply(reply, error))
                    await self._drain()
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
            conn.close(EndReason.DROPPED, "connection lost")
        except Exception:
            conn.close(EndReason.OTHER, "internal error")
            log.exception("session %d: internal error, closing", self.id)
        finally:
            self._deadline.close()
            end = conn.closed
            if end.reason is EndReason.BAD_HELLO:
                server.stats.in_bad_hellos += 1
            if end.reason.abnormal:
                server.stats.dropped_sessions += 1
            server.end_session(self.id)
            if started:
                server.notify(notifications.session_end(self, end.reason.value, end.killed_by))
            self._close()
            level = logging.WARNING if end.reason.abnormal or end.reason is EndReason.BAD_HELLO else logging.INFO
            log.log(level, "session %d ended (%s): %s", self.id, end.reason.value, end.detail)

    def send_notification(self, t: float, body: str) -> None:
        if self.connection.state is not State.CLOSED:
            self._write(self.connection.send_notification(notifications.envelope(t, body)))

    async def drain(self) -> None:
        await self._drain()

    def kill(self, why: str, killed_by: int | None = None) -> None:
        self.connection.close(EndReason.KILLED if killed_by is not None else EndReason.OTHER, why, killed_by)
        self.server.end_session(self.id)
        self._close()

    async def _next_event(self, timeout: float, what: str):
        """The next event, whose message must be complete within timeout: bytes
        trickled in do not move the deadline."""
        conn = self.connection
        self._deadline.start(timeout)
        try:
            while (event := conn.next_event()) is NEED_DATA:
                try:
                    data = await self._read()
                except asyncio.CancelledError:
                    if not self._deadline.expired:
                        raise
                    self._deadline.task.uncancel()
                    conn.close(EndReason.TIMEOUT, f"{what} timeout after {timeout:g}s")
                    continue
                conn.receive_data(data)
            return event
        finally:
            self._deadline.stop()

    # -- rpc ----------------------------------------------------------------
    async def handle(self, event) -> tuple[bytes, bool]:
        """The reply to an Rpc or BadRpc event, and whether it carries rpc-errors."""
        if isinstance(event, BadRpc):
            return self._reply(event.root, None, [event.error]), True
        root = event.root
        ops = [c for c in root if isinstance(c.tag, str)]
        try:
            if not ops:
                raise RpcError("missing-element", "<rpc> holds no operation", info=[("bad-element", "rpc")])
            if len(ops) > 1:
                raise RpcError("malformed-message", f"<rpc> must hold exactly one operation, not {len(ops)}",
                               type="rpc")
            body = await self._dispatch(event.message, ops[0])
            return self._reply(root, body, []), False
        except (RpcError, RpcErrors, EngineError) as exc:
            errors = wire_errors(exc)
        except Exception:
            log.exception("session %d: operation failed", self.id)
            errors = [RpcError("operation-failed", "internal error; see the server log")]
        return self._reply(root, None, errors), True

    async def _dispatch(self, msg: bytes, op: etree._Element):
        q = etree.QName(op)
        if q.namespace is None:  # <get/> inside a prefixed <nc:rpc>: IOS XR reads it as a base operation
            _into_base_namespace(op)
            q = etree.QName(op)
        if q.namespace == notifications.NOTIF_NS and q.localname == "create-subscription":
            self.server.acm.check_operation(self, "notifications", q.localname)
            self.server.notifications.subscribe(self, op)
            return None
        if q.namespace == NC_NS:
            handler = netconf.OPERATIONS.get(q.localname)
            if handler is None:
                raise RpcError("operation-not-supported", f'operation "{q.localname}" is not supported',
                               type="protocol")
            self.server.acm.check_operation(self, "ietf-netconf", q.localname)
            if q.localname in ("edit-config", "copy-config"):
                await local_users.hash_cleartext(op)
            result = handler(self, op)
            return await result if inspect.isawaitable(result) else result
        return await self._yang_rpc(msg, q, op)

    async def _yang_rpc(self, msg: bytes, q: etree.QName, op: etree._Element):
        server = self.server
        if _qualify_identityrefs(server.ctx, op):
            msg = etree.tostring(op.getparent())
        try:
            node = server.ctx.parse_op_mem("xml", msg, libyang.DataType.RPC_NETCONF)
        except libyang.LibyangError as exc:
            err = to_rpc_errors(exc)
            if isinstance(err, RpcError) and err.tag in ("unknown-element", "unknown-namespace") and (
                    err.tag == "unknown-namespace" or dict(err.info).get("bad-element") == q.localname):
                raise RpcError("operation-not-supported",
                               f'operation "{q.localname}" in namespace "{q.namespace}" is not supported',
                               type="protocol") from None
            raise err from None
        root = node.cdata
        while root.parent != ffi.NULL:
            root = ffi.cast("struct lyd_node *", root.parent)
        try:
            running = server.running.tree
            if lib.lyd_validate_op(node.cdata, running.cdata if running is not None else ffi.NULL,
                                   lib.LYD_TYPE_RPC_YANG, ffi.NULL) != lib.LY_SUCCESS:
                raise to_rpc_errors(server.ctx.error("invalid input"))
            raw = lib.lysc_path(node.cdata.schema, lib.LYSC_PATH_DATA, ffi.NULL, 0)
            spath = ffi.string(raw).decode()
            lib.free(raw)
            module = ffi.string(node.cdata.schema.module.name).decode()
            if node.cdata.parent == ffi.NULL:  # an RPC
                server.acm.check_operation(self, module, spath[1:].partition(":")[2])
            else:  # an action, checked on the data node it belongs to
                server.acm.check_action(self, module, data_path(node.cdata), node.cdata.schema)
            entry = server.rpc_handlers.get(spath)
            if entry is None:
                raise RpcError("operation-not-supported", f"{spath} is not implemented", type="protocol")
            _backend, handler = entry
            params = node.print_dict(absolute=False, include_implicit_defaults=True)
            result = handler(self, next(iter(params.values()), None) or {})
            if inspect.isawaitable(result):
                result = await result
            return None if result is None else netconf.rpc_output(server, node.cdata, spath, result)
        finally:
            lib.lyd_free_all(root)

    def _reply(self, rpc: etree._Element | None, body: str | None, errors: list[RpcError]) -> bytes:
        nsmap = {None: NC_NS}
        if rpc is not None:
            nsmap.update({k: v for k, v in rpc.nsmap.items() if k is not None and v != NC_NS})
        reply = etree.Element(f"{{{NC_NS}}}rpc-reply", nsmap=nsmap)
        if rpc is not None:
            for k, v in rpc.attrib.items():
                reply.set(k, v)
        if errors:
            for e in errors:
                reply.append(e.to_xml(self.server.ctx.namespace_of))
        elif body is None:
            etree.SubElement(reply, f"{{{NC_NS}}}ok")
        else:
            head = etree.tostring(reply)
            return head[:-2] + b">" + body.encode() + b"</rpc-reply>"
        return etree.tostring(reply)


# what a base operation carries that is not its own parameters: data and filters, whose
# unqualified elements keep their meaning (a subtree filter's match any namespace)
_CONTENT = ("config", "filter")


def _into_base_namespace(op: etree._Element) -> None:
    """Put an unqualified operation and its unqualified parameters in the base namespace."""
    todo = [op]
    while todo:
        el = todo.pop()
        if etree.QName(el).namespace is None:
            el.tag = f"{{{NC_NS}}}{el.tag}"
        if el is op or etree.QName(el).localname not in _CONTENT:
            todo.extend(c for c in el if isinstance(c.tag, str))


def _qualify_identityrefs(ctx, op: etree._Element) -> bool:
    """Read each unprefixed identityref value in an operation's input in the module of the
    leaf that holds it, by giving it that module's prefix: where the default namespace is
    another (ncclient's get_schema sends <ns0:format>yang</ns0:format> with none) libyang
    could not read it. True when anything changed."""
    changed = False
    identityref: dict[str, bool] = {}  # schema path -> whether it is an identityref leaf: one lookup each
    todo = [(op, "")]
    while todo:
        el, path = todo.pop()
        q = etree.QName(el)
        mod = ctx.module_by_ns(q.namespace or "")
        if mod is None:
            continue
        module = ffi.string(mod.name).decode()
        path = f"{path}/{module}:{q.localname}"
        kids = [c for c in el if isinstance(c.tag, str)]
        if kids or el is op:
            todo.extend((c, path) for c in kids)
            continue
        text = (el.text or "").strip()
        if not text or ":" in text or el.nsmap.get(None) == q.namespace:
            continue  # prefixed already, or the default namespace is the leaf's: libyang reads it so
        if path not in identityref:
            identityref[path] = _is_identityref(ctx, path)
        if not identityref[path]:
            continue
        # the leaf is in its module's namespace by a prefix, which its value can use
        prefix = next(p for p, uri in el.nsmap.items() if p and uri == q.namespace)
        el.text = f"{prefix}:{text}"
        changed = True
    return changed


def _is_identityref(ctx, path: str) -> bool:
    try:
        snode = next(ctx.find_path(path), None)
    except libyang.LibyangError:
        return False  # not in the schema: libyang's parse says so
    return (snode is not None and snode.nodetype() in (libyang.SNode.LEAF, libyang.SNode.LEAFLIST)
            and snode.type().base() == libyang.Type.IDENT)
