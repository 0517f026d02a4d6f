"""One NETCONF session: hello exchange, framing, message-id handling and dispatch.

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

from . import local_users, netconf, notifications, xmlsafe
from .backend import BackendError, xml_text
from .datastore import data_path
from .errors import NC_NS, RpcError, RpcErrors
from .framing import Decoder, FramingError, encode
from .netconf_monitoring import DROPPED
from .schema import to_rpc_errors

log = logging.getLogger(__name__)

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
# termination-reason values of netconf-session-end (RFC 6470)
END_REASONS = ("closed", "killed", "dropped", "timeout", "bad-hello", "other")


class SessionEnd(Exception):
    pass


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
    def __init__(self, server, username: str, source: str, transport: str, read, write, drain, close):
        self.server = server
        self.id = server.new_session_id()
        self.username = username
        self.source = source
        self.transport = transport
        self.login_time = time.time()
        self._read, self._write, self._drain, self._close = read, write, drain, close
        self.decoder = Decoder(server.limits.max_message)
        self.chunked = False
        self.closing = False
        self.client_capabilities: list[str] = []
        self.in_rpcs = self.in_bad_rpcs = self.out_rpc_errors = self.out_notifications = 0
        self.end_reason = "closed"
        self.killed_by: int | None = None
        self.started = False  # hello done

    # -- lifecycle ----------------------------------------------------------
    async def run(self) -> None:
        server = self.server
        server.sessions[self.id] = self
        server.stats.in_sessions += 1
        log.info("session %d started: user %s from %s", self.id, self.username, self.source)
        self._deadline = _Deadline()
        try:
            self._send(self._hello_bytes())
            await self._hello()
            self.started = True
            server.notify(notifications.session_start(self))
            while not self.closing:
                msg = await self._message(self.server.limits.idle_timeout, "idle")
                if msg is None:
                    if not self.closing:  # the peer went away without close-session
                        self.end_reason = "dropped"
                    break
                reply = await self.handle(msg)
                if reply is not None:
                    self._send(reply)
                    await self._drain()
        except FramingError as exc:
            self.end_reason = "bad-message"
            log.warning("session %d: framing error, closing: %s", self.id, exc)
        except SessionEnd as exc:
            if self.end_reason == "bad-hello":
                self.server.stats.in_bad_hellos += 1
            log.warning("session %d: %s", self.id, exc)
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
            self.end_reason = "dropped"
        except Exception:
            self.end_reason = "other"
            log.exception("session %d: internal error, closing", self.id)
        finally:
            self._deadline.close()
            if self.end_reason in DROPPED:
                self.server.stats.dropped_sessions += 1
            self.server.end_session(self.id)
            if self.started:
                reason = self.end_reason if self.end_reason in END_REASONS else "other"
                self.server.notify(notifications.session_end(self, reason, self.killed_by))
            self._close()
            log.info("session %d ended (%s)", self.id, self.end_reason)

    def _count(self, counter: str) -> None:
        """Per-session and server-wide counters (RFC 6022)."""
        setattr(self, counter, getattr(self, counter) + 1)
        stats = self.server.stats
        setattr(stats, counter, getattr(stats, counter) + 1)

    def send_notification(self, t: float, body: str) -> None:
        self._send(notifications.envelope(t, body))
        self._count("out_notifications")

    async def drain(self) -> None:
        await self._drain()

    def kill(self, why: str, killed_by: int | None = None) -> None:
        log.warning("session %d: %s", self.id, why)
        self.killed_by = killed_by
        self.end_reason = "killed" if killed_by is not None else "other"
        self.closing = True
        self.server.end_session(self.id)
        self._close()

    # -- framing ------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._write(encode(data, self.chunked))

    async def _message(self, timeout: float, what: str) -> bytes | None:
        """The next message, which must be complete within timeout: bytes trickled
        in do not move the deadline."""
        self._deadline.start(timeout)
        try:
            while True:
                msg = self.decoder.next_message()
                if msg is not None:
                    return msg
                try:
                    data = await self._read()
                except asyncio.CancelledError:
                    if not self._deadline.expired:
                        raise
                    self._deadline.task.uncancel()
                    self.end_reason = "timeout"
                    raise SessionEnd(f"{what} timeout after {timeout:g}s") from None
                if not data:
                    self.decoder.eof()
                    return None
                self.decoder.feed(data)
        finally:
            self._deadline.stop()

    # -- hello --------------------------------------------------------------
    def _hello_bytes(self) -> bytes:
        caps = "".join(f"<capability>{xml_text(c)}</capability>" for c in self.server.capabilities)
        return (f'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="{NC_NS}"><capabilities>{caps}'
                f"</capabilities><session-id>{self.id}</session-id></hello>").encode()

    async def _hello(self) -> None:
        msg = await self._message(self.server.limits.hello_timeout, "hello")
        if msg is None:
            raise SessionEnd("closed before hello")
        try:
            root = xmlsafe.parse(msg)
        except RpcError as exc:
            self.end_reason = "bad-hello"
            raise SessionEnd(f"unparsable hello: {exc.message}") from None
        if root.tag != f"{{{NC_NS}}}hello":
            self.end_reason = "bad-hello"
            raise SessionEnd(f"expected <hello>, got <{etree.QName(root).localname}>")
        if root.find(f"{{{NC_NS}}}session-id") is not None:
            self.end_reason = "bad-hello"
            raise SessionEnd("client hello carries a session-id")
        self.client_capabilities = [(c.text or "").strip() for c in root.iter(f"{{{NC_NS}}}capability")]
        if BASE_11 in self.client_capabilities:
            self.chunked = True
            self.decoder.switch_to_chunked()
        elif BASE_10 not in self.client_capabilities:
            self.end_reason = "bad-hello"
            raise SessionEnd("no common base capability")

    # -- rpc ----------------------------------------------------------------
    async def handle(self, msg: bytes) -> bytes | None:
        self._count("in_rpcs")
        try:
            root = xmlsafe.parse(msg)
        except RpcError as exc:
            self._count("in_bad_rpcs")
            return self._reply(None, None, [exc])
        if root.tag != f"{{{NC_NS}}}rpc":
            self._count("in_bad_rpcs")
            return self._reply(None, None, [RpcError(
                "malformed-message", f"expected <rpc>, got <{etree.QName(root).localname}>", type="rpc")])
        if root.get("message-id") is None:
            self._count("in_bad_rpcs")
            return self._reply(root, None, [RpcError(
                "missing-attribute", "<rpc> has no message-id attribute", type="rpc",
                info=[("bad-attribute", "message-id"), ("bad-element", "rpc")])])
        ops = [c for c in root if isinstance(c.tag, str)]
        try:
            if not ops:
                raise RpcError("missing-element", "<rpc> holds no operation", type="rpc",
                               info=[("bad-element", "rpc")])
            if len(ops) > 1:
                raise RpcError("malformed-message", f"<rpc> must hold exactly one operation, not {len(ops)}",
                               type="rpc")
            body = await self._dispatch(msg, ops[0])
            return self._reply(root, body, [])
        except RpcError as exc:
            return self._reply(root, None, [exc])
        except RpcErrors as exc:
            return self._reply(root, None, exc.errors)
        except BackendError as exc:
            return self._reply(root, None, [RpcError(exc.tag, exc.message, app_tag=exc.app_tag, path=exc.path)])
        except Exception:
            log.exception("session %d: operation failed", self.id)
            return self._reply(root, None, [RpcError("operation-failed", "internal error; see the server log")])

    async def _dispatch(self, msg: bytes, op: etree._Element):
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
        return await self._yang_rpc(msg, q)

    async def _yang_rpc(self, msg: bytes, q: etree.QName):
        server = self.server
        try:
            node = server.ctx.parse_op_mem("xml", msg, libyang.DataType.RPC_NETCONF)
        except libyang.LibyangError as exc:
            err = to_rpc_errors(exc)
            if isinstance(err, RpcError) and err.tag in ("unknown-element", "unknown-namespace"):
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
            self._count("out_rpc_errors")
            for e in errors:
                reply.append(e.to_xml(self.server.ctx.namespace_of))
        elif body is None:
            etree.SubElement(reply, f"{{{NC_NS}}}ok")
        else:
            head = etree.tostring(reply)
            return head[:-2] + b">" + body.encode() + b"</rpc-reply>"
        return etree.tostring(reply)


