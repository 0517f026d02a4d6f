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
import tempfile
import time
from collections import deque
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

from _libyang import ffi
from lxml import etree

from yangcore.datastore import atomic_write, sync_dir

from . import filters, xmlsafe
from .errors import NC_NS, RpcError

log = logging.getLogger(__name__)

NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
MANAGE_NS = "urn:ietf:params:xml:ns:netmod:notification"
NCN_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
CONFIG_CHANGE = f"{{{NCN_NS}}}netconf-config-change"
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
    """The NETCONF stream's log: JSON lines of {time, xml}, the newest `size` kept.

    Each notification is one appended line. When the file holds twice `size` lines
    it is compacted to the newest `size` in an executor (a temp file renamed over
    the log; lines appended meanwhile go to both), so a full log costs one append
    per notification. A damaged last line (a crash mid-append) is skipped on load.
    Writing is best effort: when the filesystem is full or read-only, notifications
    are still delivered and kept in memory for replay, and one warning is logged.
    """

    def __init__(self, directory: Path, size: int):
        self.path = directory / "replay.jsonl"
        self.meta_path = directory / "replay-meta.json"
        self.size = size
        self.entries: deque[tuple[float, str]] = deque(maxlen=size)
        self.lines = 0  # lines in the file
        self.writable = True
        self._late: list[str] | None = None  # lines appended while a compaction runs
        self.compaction: asyncio.Future | None = None
        meta, lines = {}, []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                lines = self.path.read_text().splitlines()
            if self.meta_path.exists():
                meta = json.loads(self.meta_path.read_text())
        except OSError as exc:
            self._failed(exc)
        except ValueError:
            log.warning("%s is damaged; the replay log's times start again", self.meta_path)
        meta = meta if isinstance(meta, dict) else {}
        self.created = meta.get("created") or time.time()
        self.aged = meta.get("aged")
        for line in lines:
            try:
                item = json.loads(line)
                self._keep(float(item["time"]), str(item["xml"]))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping a damaged line of %s", self.path)  # a crash mid-append
        self.lines = len(lines)
        if not meta or self.lines > self._compact_at():
            entries = list(self.entries)
            self._compacted(self._write_compacted(entries, self.aged), entries)

    def _compact_at(self) -> int:
        return 2 * max(self.size, 1)

    def _keep(self, t: float, xml: str) -> None:
        if len(self.entries) == self.size:
            self.aged = t  # the oldest goes now
        self.entries.append((t, xml))

    def append(self, t: float, xml: str) -> None:
        self._keep(t, xml)
        line = json.dumps({"time": t, "xml": xml}) + "\n"
        if self._late is not None:
            self._late.append(line)
        if self._append(self.path, line):
            self.lines += 1
        if self.lines > self._compact_at() and self._late is None:
            self._compact()

    def _append(self, path: Path, text: str) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self._failed(exc)
            return False
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as exc:
            try:  # no partial line for the next append to run into
                os.ftruncate(fd, end)
            except OSError:
                pass
            self._failed(exc)
            return False
        finally:
            os.close(fd)
        if not self.writable:
            log.info("notification log %s: writing again", self.path)
            self.writable = True
        return True

    def _failed(self, exc: OSError | ValueError) -> None:
        if self.writable:
            log.warning("notification log %s: cannot write (%s); notifications are still delivered, "
                        "but replay after a restart lacks them", self.path, getattr(exc, "strerror", None) or exc)
            self.writable = False

    def _compact(self) -> None:
        entries = list(self.entries)
        self._late = []
        loop = asyncio.get_running_loop()
        self.compaction = loop.run_in_executor(None, self._write_compacted, entries, self.aged)
        self.compaction.add_done_callback(lambda f: self._compacted(f.result(), entries))

    def _write_compacted(self, entries: list[tuple[float, str]], aged: float | None) -> "str | OSError":
        """(In an executor.) The metadata, and a temp file holding entries: its name, or the error."""
        try:
            atomic_write(self.meta_path, json.dumps({"created": self.created, "aged": aged}).encode())
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        except OSError as exc:
            return exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write("".join(json.dumps({"time": t, "xml": x}) + "\n" for t, x in entries).encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            os.unlink(tmp)
            return exc
        return tmp

    def _compacted(self, tmp: "str | OSError", entries: list) -> None:
        """(On the loop.) Add the lines appended meanwhile, then put the file in place."""
        late, self._late, self.compaction = self._late or [], None, None
        if isinstance(tmp, OSError):
            self._failed(tmp)
            return
        if not self._append(Path(tmp), "".join(late)):
            os.unlink(tmp)
            return
        try:
            os.replace(tmp, self.path)
        except OSError as exc:
            self._failed(exc)
            return
        sync_dir(self.path.parent)
        self.lines = len(entries) + len(late)

    def between(self, start: float, stop: float | None) -> list[tuple[float, str]]:
        return [(t, x) for t, x in self.entries if t >= start and (stop is None or t <= stop)]


MAX_EVENT_FILTER_ELEMENTS = 100  # in a subscription's subtree filter: it is evaluated for every notification


class EventFilter:
    """A create-subscription filter, checked and compiled once (RFC 5277 §3.6): an
    lxml XPath without extension functions (a subtree filter is turned into one)."""

    def __init__(self, el: etree._Element):
        try:
            if el.get("type", "subtree") == "xpath":
                select = el.get("select")
                if select is None:
                    raise RpcError("missing-attribute", "an xpath filter needs a select attribute", type="protocol",
                                   info=[("bad-attribute", "select"), ("bad-element", "filter")])
                filters.check_select(select, filters.XPATH_FUNCTIONS)
                namespaces = {k: v for k, v in el.nsmap.items() if k}
            else:
                filters.check_subtree_size(el, MAX_EVENT_FILTER_ELEMENTS)
                namespaces = {}
                tops = [f"/{_subtree_xpath(f, namespaces)}" for f in el if isinstance(f.tag, str)]
                select = " | ".join(tops) if tops else "false()"
            # regexp=False: no EXSLT regular expressions; check_select refused the other extensions
            self.xpath = etree.XPath(select, namespaces=namespaces, regexp=False, smart_strings=False)
        except filters.FilterError as exc:
            raise RpcError(exc.tag, str(exc), type="protocol", app_tag=exc.app_tag,
                           info=[("bad-element", "filter")]) from None
        except etree.XPathSyntaxError as exc:
            raise RpcError("invalid-value", f"invalid xpath filter: {exc}", type="protocol",
                           info=[("bad-element", "filter")]) from None

    def matches(self, body: etree._Element) -> bool:
        """Whether the filter selects anything of a notification."""
        try:
            return bool(self.xpath(body))
        except etree.XPathError:
            return False


def _subtree_xpath(f: etree._Element, namespaces: dict[str, str]) -> str:
    """RFC 6241 §6 subtree filter element f as a relative XPath that selects the
    nodes f matches: name (any namespace without one), content-match children as
    conditions (all must hold), else any selection or containment child."""
    q = etree.QName(f)
    if q.namespace is None:
        step = f"*[local-name() = {filters.quote(q.localname)}]"
    else:
        prefix = next((p for p, ns in namespaces.items() if ns == q.namespace), f"f{len(namespaces)}")
        namespaces[prefix] = q.namespace
        step = f"{prefix}:{q.localname}"
    kids = [k for k in f if isinstance(k.tag, str)]
    if not kids:
        text = " ".join((f.text or "").split())
        return f"{step}[normalize-space() = {filters.quote(text)}]" if text else step
    content = [k for k in kids if len(k) == 0 and (k.text or "").strip()]
    if content:
        return step + "".join(f"[{_subtree_xpath(c, namespaces)}]" for c in content)
    return f"{step}[{' or '.join(_subtree_xpath(k, namespaces) for k in kids)}]"


class Subscription:
    def __init__(self, session, flt: EventFilter | None, stop: float | None, room: int):
        self.session = session
        self.filter = flt
        self.stop = stop
        self.queue: asyncio.Queue = asyncio.Queue(room)
        self.task: asyncio.Task | None = None
        self.replay: list[tuple[float, str]] | None = None  # logged notifications to send first
        self.replayed = 0.0  # the event time of replayComplete


class Notifications:
    def __init__(self, server, directory: Path, replay_size: int = DEFAULT_REPLAY_SIZE,
                 queue_size: int = DEFAULT_QUEUE_SIZE):
        self.server = server
        self.queue_size = queue_size
        self.log = ReplayLog(directory, replay_size)
        self.subscriptions: dict[int, Subscription] = {}

    # -- publishing -----------------------------------------------------------
    def publish(self, body: str) -> None:
        """Log a notification body (one element, valid: from the core's bus) and queue it
        for the subscribers."""
        t = time.time()
        self.log.append(t, body)
        el = xmlsafe.parse(body.encode())
        for sub in list(self.subscriptions.values()):
            self._offer(sub, t, el, body)

    def _visible(self, session, el: etree._Element) -> etree._Element | None:
        """What of notification el the session may read (RFC 8341 §3.4.6), or None:
        el itself, or a copy without the config-change edits of unreadable data."""
        acm = self.server.acm
        mod = self.server.ctx.module_by_ns(etree.QName(el).namespace or "")
        name = ffi.string(mod.name).decode() if mod is not None else ""
        if not acm.notification_allowed(session, name, etree.QName(el).localname):
            return None
        if el.tag != CONFIG_CHANGE or acm.checked(session) is None:
            return el
        edits = el.findall(f"{{{NCN_NS}}}edit")
        hidden = [i for i, e in enumerate(edits) if not acm.data_readable(session, self._edit_path(e))]
        if not hidden:
            return el
        if len(hidden) == len(edits):
            return None
        el = deepcopy(el)
        edits = el.findall(f"{{{NCN_NS}}}edit")
        for i in hidden:
            el.remove(edits[i])
        return el

    def _edit_path(self, edit: etree._Element) -> str:
        """An edit's target as a libyang data path ('' when it names no known module)."""
        target = edit.find(f"{{{NCN_NS}}}target")
        try:
            return data_path(target.text or "", target.nsmap, self.server.ctx)
        except ValueError:
            return ""

    def _deliverable(self, sub: Subscription, el: etree._Element, body: str) -> str | None:
        """The body as sub's session sees it, or None when it gets nothing."""
        seen = self._visible(sub.session, el)
        if seen is None or (sub.filter is not None and not sub.filter.matches(seen)):
            return None
        return body if seen is el else etree.tostring(seen, encoding="unicode")

    def _offer(self, sub: Subscription, t: float, el: etree._Element, body: str) -> None:
        if sub.stop is not None and t > sub.stop:
            return
        body = self._deliverable(sub, el, body)
        if body is None:
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
        sub = Subscription(session, EventFilter(flt) if flt is not None else None, stop, self.queue_size + 1)
        if start is not None:
            sub.replay = self.log.between(start, stop)
            sub.replayed = now
        if stop is not None and stop <= now:
            sub.queue.put_nowait((now, None))  # the end, right after the replay
        self.subscriptions[session.id] = sub
        sub.task = asyncio.get_running_loop().create_task(self._deliver(sub))

    async def _replay(self, sub: Subscription) -> None:
        """Send the logged notifications of the replay window, then replayComplete.
        Each is filtered here, yielding to the loop in between: a long log costs other
        sessions nothing. Live ones wait in the queue meanwhile."""
        for t, body in sub.replay:
            body = self._deliverable(sub, xmlsafe.parse(body.encode()), body)
            if body is not None:
                sub.session.send_notification(t, body)
                await sub.session.drain()
            await asyncio.sleep(0)
        sub.session.send_notification(sub.replayed, f'<replayComplete xmlns="{MANAGE_NS}"/>')

    async def _deliver(self, sub: Subscription) -> None:
        try:
            if sub.replay is not None:
                await self._replay(sub)
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
    def streams(self) -> dict:
        return {"nc-notifications:netconf": {"streams": {"stream": [{
            "name": STREAM, "description": "NETCONF base notifications and the device's events",
            "replaySupport": True, "replayLogCreationTime": event_time(self.log.created),
            "replayLogAgedTime": event_time(self.log.aged) if self.log.aged else None}]}}}


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
    for step, preds in _steps(path):
        if ":" in step:
            module, step = step.split(":", 1)
        if module not in mods:
            mods.append(module)
        out.append(f"/{module}:{step}")
        for pred in preds:
            name, _, value = pred.partition("=")
            name = name.strip()
            if name != "." and ":" not in name:
                name = f"{module}:{name}"
            out.append(f"[{name}={value.strip()}]")
    return "".join(out), mods


def data_path(target: str, nsmap: dict, ctx) -> str:
    """An instance-identifier (prefixes bound in nsmap) as a libyang data path: module
    names as prefixes, only where the module changes. ValueError if it is not one."""
    out = []
    module = None
    for step, preds in _steps(target):
        mod = _module_of(step, nsmap, ctx)
        name = step.partition(":")[2]
        out.append(f"/{name}" if mod == module else f"/{mod}:{name}")
        module = mod
        for pred in preds:
            key, _, value = pred.partition("=")
            key = key.strip()
            if key != ".":
                key = key.partition(":")[2] if _module_of(key, nsmap, ctx) == module else key
            out.append(f"[{key}={value.strip()}]")
    return "".join(out)


def _module_of(qname: str, nsmap: dict, ctx) -> str:
    prefix, colon, _ = qname.partition(":")
    mod = ctx.module_by_ns(nsmap.get(prefix, "")) if colon else None
    if mod is None:
        raise ValueError(f"no module for {qname!r}")
    return ffi.string(mod.name).decode()


def _steps(path: str) -> list[tuple[str, list[str]]]:
    """The steps of an instance-identifier with their predicates' texts."""
    out = []
    i = 0
    while i < len(path):
        if path[i] != "/":
            raise ValueError(f"not an instance-identifier: {path}")
        j = i + 1
        while j < len(path) and path[j] not in "/[":
            j += 1
        step, preds = path[i + 1:j].strip(), []
        while j < len(path) and path[j] == "[":
            k = j + 1
            quote = None
            while k < len(path) and (quote or path[k] != "]"):
                if path[k] in "'\"":
                    quote = None if quote == path[k] else (quote or path[k])
                k += 1
            if k == len(path):
                raise ValueError(f"unterminated predicate in {path}")
            preds.append(path[j + 1:k])
            j = k + 1
        out.append((step, preds))
        i = j
    return out
