"""The server side of one NETCONF connection as a sans-IO state machine (RFC 6241, 6242).

Bytes go in with `receive_data`, events come out of `next_event`: the client's
`Hello`, each `Rpc` (or a `BadRpc` the server must answer with an rpc-error),
`NEED_DATA` when more bytes are needed, and `Closed` with the end reason. The
`send_*` methods return the framed bytes to write. Nothing here reads a socket or
a clock: the transport feeds the bytes and reports timeouts and lost connections
with `close`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from lxml import etree

from . import xmlsafe
from .errors import NC_NS, RpcError
from .framing import DEFAULT_MAX_MESSAGE, Decoder, FramingError, encode
from .netconf_monitoring import Counters

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # the client's hello not yet received
    ESTABLISHED = "established"
    CLOSING = "closing"  # close-session accepted: its reply is the last message
    CLOSED = "closed"


_TRANSITIONS = {
    State.AWAIT_HELLO: {State.ESTABLISHED, State.CLOSED},
    State.ESTABLISHED: {State.CLOSING, State.CLOSED},
    State.CLOSING: {State.CLOSED},
    State.CLOSED: set(),
}


class EndReason(enum.Enum):
    """Why a session ended: the termination-reason values of netconf-session-end (RFC 6470)."""
    CLOSED = "closed"  # <close-session>, or the client left before its hello
    KILLED = "killed"  # <kill-session>
    DROPPED = "dropped"  # the transport closed without <close-session>
    TIMEOUT = "timeout"  # no hello, or no message, in time
    BAD_HELLO = "bad-hello"
    OTHER = "other"  # broken framing, a server-side close, an internal error

    @property
    def abnormal(self) -> bool:
        """Counted in RFC 6022 dropped-sessions (a bad hello has a counter of its own)."""
        return self in (EndReason.DROPPED, EndReason.TIMEOUT, EndReason.OTHER)


class ConnectionStateError(RuntimeError):
    """The server used the connection in a way its state does not allow: a bug, not bad input."""


@dataclass(frozen=True)
class Hello:
    capabilities: tuple[str, ...]
    chunked: bool  # both sides speak base:1.1: chunked framing from now on


@dataclass(frozen=True)
class Rpc:
    message: bytes
    root: etree._Element
    message_id: str


@dataclass(frozen=True)
class BadRpc:
    """A message that is not a well-formed <rpc>; root is echoed in the reply when not None."""
    root: etree._Element | None
    error: RpcError


@dataclass(frozen=True)
class Closed:
    reason: EndReason
    detail: str
    killed_by: int | None = None


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class Connection:
    def __init__(self, session_id: int, capabilities: list[str], max_message: int = DEFAULT_MAX_MESSAGE,
                 counters: Counters | None = None):
        self.session_id = session_id
        self.capabilities = list(capabilities)
        self.counters = counters or Counters()
        self.client_capabilities: tuple[str, ...] = ()
        self.state = State.AWAIT_HELLO
        self.closed: Closed | None = None
        self._decoder = Decoder(max_message)
        self._eof = False

    @property
    def chunked(self) -> bool:
        """The framing negotiated by the hellos; the decoder holds it for both directions."""
        return self._decoder.chunked

    def _set_state(self, new: State) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise ConnectionStateError(f"no transition from {self.state.value} to {new.value}")
        self.state = new

    # -- bytes in, events out -----------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" means the client closed its side."""
        if self.state is State.CLOSED:
            return
        if self._eof:
            raise ConnectionStateError("data after the end of input")
        if not data:
            self._eof = True  # checked for a truncated message once the whole messages are out
            return
        try:
            self._decoder.feed(data)
        except FramingError as exc:
            self.close(EndReason.OTHER, f"framing error: {exc}")

    def next_event(self):
        if self.state is State.CLOSED:
            return self.closed
        try:
            return self._next_event()
        except FramingError as exc:
            self.close(EndReason.OTHER, f"framing error: {exc}")
            return self.closed

    def _next_event(self):
        msg = self._decoder.next_message()
        if msg is None:
            if not self._eof:
                return NEED_DATA
            self._decoder.eof()
            if self.state is State.AWAIT_HELLO:
                self.close(EndReason.CLOSED, "closed before hello")
            else:  # close-session ends the connection when its reply is sent, so this is a drop
                self.close(EndReason.DROPPED, "the client went away without close-session")
            return self.closed
        if self.state is State.AWAIT_HELLO:
            return self._hello(msg)
        return self._rpc(msg)

    def _hello(self, msg: bytes):
        """RFC 6241 §8.1: a client hello has no session-id and shares a base capability with ours."""
        try:
            root = xmlsafe.parse(msg)
        except RpcError as exc:
            return self._bad_hello(f"unparsable hello: {exc.message}")
        if root.tag != f"{{{NC_NS}}}hello":
            return self._bad_hello(f"expected <hello>, got <{etree.QName(root).localname}>")
        if root.find(f"{{{NC_NS}}}session-id") is not None:
            return self._bad_hello("client hello carries a session-id")
        caps = tuple((c.text or "").strip() for c in root.iter(f"{{{NC_NS}}}capability"))
        common = {BASE_10, BASE_11}.intersection(caps, self.capabilities)
        if not common:
            return self._bad_hello("no common base capability")
        self.client_capabilities = caps
        self._set_state(State.ESTABLISHED)
        if BASE_11 in common:
            try:
                self._decoder.switch_to_chunked()
            except FramingError as exc:
                # the hello stands whatever came after it in the same read: the next event is Closed
                self.close(EndReason.OTHER, f"framing error: {exc}")
        return Hello(caps, self.chunked)

    def _bad_hello(self, detail: str) -> Closed:
        self.close(EndReason.BAD_HELLO, detail)
        return self.closed

    def _rpc(self, msg: bytes):
        """The <rpc> envelope (RFC 6241 §4.1); what it holds is the dispatcher's to check."""
        self.counters.count("in_rpcs")
        try:
            root = xmlsafe.parse(msg)
        except RpcError as exc:
            return self._bad_rpc(None, exc)
        if root.tag != f"{{{NC_NS}}}rpc":
            return self._bad_rpc(None, RpcError(
                "malformed-message", f"expected <rpc>, got <{etree.QName(root).localname}>", type="rpc"))
        message_id = root.get("message-id")
        if message_id is None:
            return self._bad_rpc(root, RpcError(
                "missing-attribute", "<rpc> has no message-id attribute", type="rpc",
                info=[("bad-attribute", "message-id"), ("bad-element", "rpc")]))
        return Rpc(msg, root, message_id)

    def _bad_rpc(self, root: etree._Element | None, error: RpcError) -> BadRpc:
        self.counters.count("in_bad_rpcs")
        return BadRpc(root, error)

    # -- state changes the server makes --------------------------------------
    def close_after_reply(self) -> None:
        """The client asked to close: the next reply sent is the last message."""
        self._set_state(State.CLOSING)

    def close(self, reason: EndReason, detail: str, killed_by: int | None = None) -> None:
        """End the connection; the first end reason stands."""
        if self.state is State.CLOSED:
            return
        self._set_state(State.CLOSED)
        self.closed = Closed(reason, detail, killed_by)

    # -- events out, bytes out ------------------------------------------------
    def send_hello(self) -> bytes:
        if self.state is not State.AWAIT_HELLO:
            raise ConnectionStateError(f"hello sent in state {self.state.value}")
        hello = etree.Element(f"{{{NC_NS}}}hello", nsmap={None: NC_NS})
        caps = etree.SubElement(hello, f"{{{NC_NS}}}capabilities")
        for c in self.capabilities:
            etree.SubElement(caps, f"{{{NC_NS}}}capability").text = c
        etree.SubElement(hello, f"{{{NC_NS}}}session-id").text = str(self.session_id)
        # the hello always goes in end-of-message framing
        return encode(b'<?xml version="1.0" encoding="UTF-8"?>' + etree.tostring(hello), False)

    def send_reply(self, reply: bytes, error: bool = False) -> bytes:
        """An <rpc-reply>; error: it carries <rpc-error>s. After close-session it ends the connection."""
        self._check_sendable("rpc-reply")
        if error:
            self.counters.count("out_rpc_errors")
        data = encode(reply, self.chunked)
        if self.state is State.CLOSING:
            self.close(EndReason.CLOSED, "closed by the client")
        return data

    def send_notification(self, notification: bytes) -> bytes:
        self._check_sendable("notification")
        self.counters.count("out_notifications")
        return encode(notification, self.chunked)

    def _check_sendable(self, what: str) -> None:
        if self.state not in (State.ESTABLISHED, State.CLOSING):
            raise ConnectionStateError(f"{what} sent in state {self.state.value}")
