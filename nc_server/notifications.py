"""RFC 5277 event notifications on the NETCONF stream, with a persisted, bounded
replay log, and the RFC 6470 base notifications' bodies.

Every notification is validated against its schema before it is logged or sent.
Each subscriber has a bounded queue; one that cannot keep up is closed with a log
line, so it never blocks the server or other sessions.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import libyang
from _libyang import ffi
from lxml import etree

from .datastore import atomic_write
from .errors import NC_NS, RpcError

log = logging.getLogger(__name__)

NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
MANAGE_NS = "urn:ietf:params:xml:ns:netmod:notification"
NCN_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
STREAM = "NETCONF"
STREAMS_PATH = "/nc-notifications:netconf"
DEFAULT_REPLAY_SIZE = 1000
DEFAULT_QUEUE_SIZE = 1000  # notifications waiting for one subscriber


def event_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise RpcError("invalid-value", f'"{text}" is not a date-and-time', type="protocol") from None


class ReplayLog:
    """The NETCONF stream's log: JSON lines of {time, xml}, the oldest dropped first."""

    def __init__(self, directory: Path, size: int):
        self.path = directory / "replay.jsonl"
        self.meta_path = directory / "replay-meta.json"
        self.size = size
        self.entries: deque[tuple[float, str]] = deque()
        directory.mkdir(parents=True, exist_ok=True)
        meta = {}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text())
        self.created = meta.get("created") or time.time()
        self.aged = meta.get("aged")
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.entries.append((float(item["time"]), str(item["xml"])))
                except (ValueError, KeyError, TypeError):
                    log.warning("skipping a damaged line of %s", self.path)  # a crash mid-append
        self._trim(rewrite=len(self.entries) > size or not meta)

    def append(self, t: float, xml: str) -> None:
        self.entries.append((t, xml))
        if len(self.entries) > self.size:
            self._trim(rewrite=True)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": t, "xml": xml}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _trim(self, rewrite: bool) -> None:
        while len(self.entries) > self.size:
            self.entries.popleft()
            self.aged = time.time()
        if rewrite:
            atomic_write(self.path, "".join(json.dumps({"time": t, "xml": x}) + "\n"
                                            for t, x in self.entries).encode(), mode=0o600)
            atomic_write(self.meta_path, json.dumps({"created": self.created, "aged": self.aged}).encode())

    def between(self, start: float, stop: float | None) -> list[tuple[float, str]]:
        return [(t, x) for t, x in self.entries if t >= start and (stop is None or t <= stop)]


def matches(flt: etree._Element | None, body: etree._Element) -> bool:
    """Whether a subtree or XPath filter selects anything of a notification."""
    if flt is None:
        return True
    if flt.get("type", "subtree") == "xpath":
        select = flt.get("select")
        try:
            result = body.xpath(select, namespaces={k: v for k, v in flt.nsmap.items() if k})
        except etree.XPathError:
            return False
        return bool(result)
    return any(_subtree(f, body) for f in flt if isinstance(f.tag, str))


def _subtree(f: etree._Element, node: etree._Element) -> bool:
    """RFC 6241 §6 subtree matching: does filter node f select anything of node?"""
    fq, nq = etree.QName(f), etree.QName(node)
    if fq.localname != nq.localname or fq.namespace not in (None, nq.namespace):
        return False
    kids = [k for k in f if isinstance(k.tag, str)]
    if not kids:  # selection node, or content match node when it has text
        text = (f.text or "").strip()
        return not text or text == (node.text or "").strip()
    content = [k for k in kids if len(k) == 0 and (k.text or "").strip()]
    if not all(any(_subtree(c, n) for n in node) for c in content):
        return False
    others = [k for k in kids if k not in content]
    return bool(content) or any(_subtree(k, n) for k in others for n in node)


class Subscription:
    def __init__(self, session, flt, stop: float | None, room: int):
        self.session = session
        self.filter = flt
        self.stop = stop
        self.queue: asyncio.Queue = asyncio.Queue(room)
        self.task: asyncio.Task | None = None


class Notifications:
    def __init__(self, server, directory: Path, replay_size: int = DEFAULT_REPLAY_SIZE,
                 queue_size: int = DEFAULT_QUEUE_SIZE):
        self.server = server
        self.queue_size = queue_size
        self.log = ReplayLog(directory, replay_size)
        self.subscriptions: dict[int, Subscription] = {}

    # -- publishing -----------------------------------------------------------
    def publish(self, body: str) -> None:
        """Validate a notification body (one element), log it and queue it for the subscribers."""
        ctx = self.server.ctx
        try:
            ctx.parse_op_mem("xml", body, libyang.DataType.NOTIF_YANG).free()
        except libyang.LibyangError as exc:
            log.error("notification dropped, it does not match its schema: %s", exc)
            return
        t = time.time()
        self.log.append(t, body)
        for sub in list(self.subscriptions.values()):
            self._offer(sub, t, body)

    def _readable(self, session, el: etree._Element) -> bool:
        mod = self.server.ctx.module_by_ns(etree.QName(el).namespace or "")
        name = ffi.string(mod.name).decode() if mod is not None else ""
        return self.server.acm.notification_allowed(session, name, etree.QName(el).localname)

    def _offer(self, sub: Subscription, t: float, body: str) -> None:
        if sub.stop is not None and t > sub.stop:
            return
        el = etree.fromstring(body)
        if not matches(sub.filter, el) or not self._readable(sub.session, el):
            return
        try:
            sub.queue.put_nowait((t, body))
        except asyncio.QueueFull:
            log.warning("session %d: closing, its subscription fell %d notifications behind",
                        sub.session.id, self.queue_size)
            sub.session.kill("notification subscriber too slow")

    # -- subscriptions --------------------------------------------------------
    def subscribe(self, session, op: etree._Element) -> None:
        if session.id in self.subscriptions:
            raise RpcError("in-use", "this session already has a subscription", type="protocol")
        params = {etree.QName(c).localname: c for c in op if isinstance(c.tag, str)}
        for name, el in params.items():
            ns = etree.QName(el).namespace
            # clients put <filter> in the notification or the base namespace
            if name not in ("stream", "filter", "startTime", "stopTime") or \
                    ns not in (NOTIF_NS, NC_NS if name == "filter" else NOTIF_NS):
                raise RpcError("unknown-element", f'unexpected parameter "{name}"', type="protocol",
                               info=[("bad-element", name)])
        stream = (params["stream"].text or "").strip() if "stream" in params else STREAM
        if stream != STREAM:
            raise RpcError("invalid-value", f'no stream "{stream}"; the only stream is NETCONF', type="protocol",
                           info=[("bad-element", "stream")])
        start = parse_time(params["startTime"].text or "") if "startTime" in params else None
        stop = parse_time(params["stopTime"].text or "") if "stopTime" in params else None
        now = time.time()
        if stop is not None and start is None:
            raise RpcError("missing-element", "stopTime needs startTime", type="protocol",
                           info=[("bad-element", "startTime")])
        if start is not None and start > now:
            raise RpcError("bad-element", "startTime is in the future", type="protocol",
                           info=[("bad-element", "startTime")])
        if stop is not None and stop < start:
            raise RpcError("bad-element", "stopTime is before startTime", type="protocol",
                           info=[("bad-element", "stopTime")])
        flt = params.get("filter")
        if flt is not None and flt.get("type", "subtree") not in ("subtree", "xpath"):
            raise RpcError("bad-attribute", f'unknown filter type "{flt.get("type")}"', type="protocol",
                           info=[("bad-attribute", "type"), ("bad-element", "filter")])
        if flt is not None and flt.get("type") == "xpath":
            try:
                etree.XPath(flt.get("select") or "", namespaces={k: v for k, v in flt.nsmap.items() if k})
            except etree.XPathSyntaxError as exc:
                raise RpcError("invalid-value", f"invalid xpath filter: {exc}", type="protocol") from None
        replay = [(t, body) for t, body in (self.log.between(start, stop) if start is not None else [])
                  if matches(flt, el := etree.fromstring(body)) and self._readable(session, el)]
        # room for the replayed notifications on top of the live ones
        sub = Subscription(session, flt, stop, self.queue_size + len(replay) + 2)
        for item in replay:
            sub.queue.put_nowait(item)
        if start is not None:
            sub.queue.put_nowait((now, f'<replayComplete xmlns="{MANAGE_NS}"/>'))
        if stop is not None and stop <= now:
            sub.queue.put_nowait((now, None))  # the end, right after the replay
        self.subscriptions[session.id] = sub
        sub.task = asyncio.get_running_loop().create_task(self._deliver(sub))

    async def _deliver(self, sub: Subscription) -> None:
        try:
            while True:
                if sub.stop is not None:
                    try:
                        async with asyncio.timeout(max(0.0, sub.stop - time.time())):
                            t, body = await sub.queue.get()
                    except TimeoutError:
                        t, body = time.time(), None
                else:
                    t, body = await sub.queue.get()
                if body is None:
                    sub.session.send_notification(t, f'<notificationComplete xmlns="{MANAGE_NS}"/>')
                    break
                sub.session.send_notification(t, body)
                await sub.session.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if self.subscriptions.get(sub.session.id) is sub:
                del self.subscriptions[sub.session.id]

    def session_ended(self, sid: int) -> None:
        sub = self.subscriptions.pop(sid, None)
        if sub is not None and sub.task is not None:
            sub.task.cancel()

    # -- state -------------------------------------------------------------------
    def streams_xml(self) -> str:
        aged = f"<replayLogAgedTime>{event_time(self.log.aged)}</replayLogAgedTime>" if self.log.aged else ""
        return (f'<netconf xmlns="{MANAGE_NS}"><streams><stream><name>{STREAM}</name>'
                "<description>NETCONF base notifications and the device's events</description>"
                "<replaySupport>true</replaySupport>"
                f"<replayLogCreationTime>{event_time(self.log.created)}</replayLogCreationTime>{aged}"
                "</stream></streams></netconf>")


def envelope(t: float, body: str) -> bytes:
    return (f'<notification xmlns="{NOTIF_NS}"><eventTime>{event_time(t)}</eventTime>{body}'
            "</notification>").encode()


# -- RFC 6470 bodies -------------------------------------------------------------

def _who(session) -> str:
    if session is None:
        return "<server/>"
    return (f"<username>{escape(session.username)}</username><session-id>{session.id}</session-id>"
            f"<source-host>{escape(session.source)}</source-host>")


def session_start(session) -> str:
    return f'<netconf-session-start xmlns="{NCN_NS}">{_who(session)}</netconf-session-start>'


def session_end(session, reason: str, killed_by: int | None) -> str:
    killed = f"<killed-by>{killed_by}</killed-by>" if killed_by is not None else ""
    return (f'<netconf-session-end xmlns="{NCN_NS}">{_who(session)}{killed}'
            f"<termination-reason>{reason}</termination-reason></netconf-session-end>")


def config_change(session, datastore: str, edits: list[tuple[str, str, dict[str, str]]]) -> str:
    """edits: (instance-identifier with XML prefixes, operation, prefix -> namespace)."""
    parts = []
    for target, op, nsmap in edits:
        decl = "".join(f' xmlns:{p}="{escape(ns)}"' for p, ns in nsmap.items())
        parts.append(f"<edit><target{decl}>{escape(target)}</target><operation>{op}</operation></edit>")
    return (f'<netconf-config-change xmlns="{NCN_NS}"><changed-by>{_who(session)}</changed-by>'
            f"<datastore>{datastore}</datastore>{''.join(parts)}</netconf-config-change>")


def confirmed_commit(session, event: str, timeout: int | None) -> str:
    who = _who(session) if session is not None else ""
    secs = f"<timeout>{timeout}</timeout>" if timeout is not None and event in ("start", "extend") else ""
    return (f'<netconf-confirmed-commit xmlns="{NCN_NS}">{who}<confirm-event>{event}</confirm-event>{secs}'
            "</netconf-confirmed-commit>")



MAX_EDITS_PER_PARENT = 100


def summarize(changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(path, operation) edits, with more than MAX_EDITS_PER_PARENT changes under
    one parent reported as one merge of that parent: a bulk edit stays one record
    instead of a notification as large as the configuration."""
    by_parent: dict[str, list[tuple[str, str]]] = {}
    for path, op in changes:
        by_parent.setdefault(_parent(path), []).append((path, op))
    out = []
    for parent, group in by_parent.items():
        if len(group) > MAX_EDITS_PER_PARENT and parent:
            out.append((parent, "merge"))
        else:
            out.extend(group)
    return out


def _parent(path: str) -> str:
    """The path without its last step ('/' inside quoted key values is not a step)."""
    quote, cut = None, 0
    for i, ch in enumerate(path):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "/":
            cut = i
    return path[:cut]


def xml_instance_id(path: str) -> tuple[str, list[str]]:
    """A libyang data path (`/mod:a/b[k='v']`) as an instance-identifier with a
    prefix on every step and key. The prefixes are module names; the second
    value lists them, for the caller to bind to their namespaces."""
    out, mods = [], []
    module = None
    i = 0
    while i < len(path):
        if path[i] != "/":
            raise ValueError(f"not a data path: {path}")
        j = i + 1
        while j < len(path) and path[j] not in "/[":
            j += 1
        step = path[i + 1:j]
        if ":" in step:
            module, step = step.split(":", 1)
        if module not in mods:
            mods.append(module)
        out.append(f"/{module}:{step}")
        while j < len(path) and path[j] == "[":
            k = j + 1
            quote = None
            while k < len(path) and (quote or path[k] != "]"):
                if path[k] in "'\"":
                    quote = None if quote == path[k] else (quote or path[k])
                k += 1
            pred = path[j + 1:k]
            name, _, value = pred.partition("=")
            name = name.strip()
            if name != "." and ":" not in name:
                name = f"{module}:{name}"
            out.append(f"[{name}={value.strip()}]")
            j = k + 1
        i = j
    return "".join(out), mods
