"""RFC 6022 NETCONF monitoring: the netconf-state data and the get-schema RPC."""
from __future__ import annotations

from datetime import datetime, timezone
from xml.sax.saxutils import escape

from _libyang import ffi, lib

from .errors import RpcError

NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
STATE = "/ietf-netconf-monitoring:netconf-state"
GET_SCHEMA = "/ietf-netconf-monitoring:get-schema"


def timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Counters:
    """The message counters of one session; each count also goes to the server's totals."""

    def __init__(self, totals: Counters | None = None):
        self.totals = totals
        self.in_rpcs = self.in_bad_rpcs = self.out_rpc_errors = self.out_notifications = 0

    def count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        if self.totals is not None:
            self.totals.count(name)


class Statistics(Counters):
    def __init__(self, start: float):
        super().__init__()
        self.start = start
        self.in_bad_hellos = self.in_sessions = self.dropped_sessions = 0


class Schemas:
    """Every module and submodule in the context, with the text get-schema returns:
    the file libyang read, byte for byte, or libyang's print of a built-in module."""

    def __init__(self, ctx):
        self.rows: dict[tuple[str, str], tuple[str, str | None]] = {}  # (name, rev) -> (ns, path)
        self._ctx = ctx
        idx = ffi.new("uint32_t *")
        mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)
        while mod != ffi.NULL:
            ns = ffi.string(mod.ns).decode()
            self._add(mod.name, mod.revision, ns, mod.filepath)
            if mod.parsed != ffi.NULL and mod.parsed.includes != ffi.NULL:
                count = ffi.cast("uint64_t *", mod.parsed.includes)[-1]  # LY_ARRAY size
                for i in range(count):
                    sub = mod.parsed.includes[i].submodule
                    if sub != ffi.NULL:
                        rev = sub.revs[0].date if sub.revs != ffi.NULL else ffi.NULL
                        self._add(sub.name, rev, ns, sub.filepath)
            mod = lib.ly_ctx_get_module_iter(ctx.cdata, idx)

    def _add(self, name, rev, ns: str, filepath) -> None:
        key = (ffi.string(name).decode(), ffi.string(rev).decode() if rev != ffi.NULL else "")
        self.rows[key] = (ns, ffi.string(filepath).decode() if filepath != ffi.NULL else None)

    def text(self, name: str, version: str | None) -> str:
        found = [k for k in self.rows if k[0] == name and (version is None or k[1] == version)]
        if not found:
            what = f"{name}@{version}" if version else name
            raise RpcError("invalid-value", f'no schema "{what}"', path=f"{GET_SCHEMA}/identifier")
        if len(found) > 1:
            raise RpcError("operation-failed", f'several versions of "{name}": give the version',
                           app_tag="data-not-unique")
        key = found[0]
        path = self.rows[key][1]
        if path is not None:
            with open(path, encoding="utf-8") as f:
                return f.read()
        mod = lib.ly_ctx_get_module(self._ctx.cdata, key[0].encode(), key[1].encode() if key[1] else ffi.NULL)
        out = ffi.new("char **")
        if mod == ffi.NULL or lib.lys_print_mem(out, mod, lib.LYS_OUT_YANG, 0) != lib.LY_SUCCESS:
            raise RpcError("operation-failed", f'cannot print the schema "{name}"')
        try:
            return ffi.string(out[0]).decode()
        finally:
            lib.free(out[0])

    def xml(self) -> str:
        return "".join(
            f"<schema><identifier>{escape(name)}</identifier><version>{rev}</version><format>yang</format>"
            f"<namespace>{escape(ns)}</namespace><location>NETCONF</location></schema>"
            for (name, rev), (ns, _path) in sorted(self.rows.items()))


def _session(s) -> str:
    c = s.connection.counters
    return (f"<session><session-id>{s.id}</session-id><transport>ncm:netconf-ssh</transport>"
            f"<username>{escape(s.username)}</username><source-host>{escape(s.source)}</source-host>"
            f"<login-time>{timestamp(s.login_time)}</login-time><in-rpcs>{c.in_rpcs}</in-rpcs>"
            f"<in-bad-rpcs>{c.in_bad_rpcs}</in-bad-rpcs><out-rpc-errors>{c.out_rpc_errors}</out-rpc-errors>"
            f"<out-notifications>{c.out_notifications}</out-notifications></session>")


def state(server) -> str:
    caps = "".join(f"<capability>{escape(c)}</capability>" for c in server.capabilities)
    stores = []
    for name in ("running", "candidate", "startup"):
        lock = ""
        if name in server.locks:
            lock = (f"<locks><global-lock><locked-by-session>{server.locks[name]}</locked-by-session>"
                    f"<locked-time>{timestamp(server.lock_times[name])}</locked-time></global-lock></locks>")
        stores.append(f"<datastore><name>{name}</name>{lock}</datastore>")
    sessions = "".join(_session(s) for s in server.sessions.values())
    st = server.stats
    stats = (f"<statistics><netconf-start-time>{timestamp(st.start)}</netconf-start-time>"
             f"<in-bad-hellos>{st.in_bad_hellos}</in-bad-hellos><in-sessions>{st.in_sessions}</in-sessions>"
             f"<dropped-sessions>{st.dropped_sessions}</dropped-sessions><in-rpcs>{st.in_rpcs}</in-rpcs>"
             f"<in-bad-rpcs>{st.in_bad_rpcs}</in-bad-rpcs><out-rpc-errors>{st.out_rpc_errors}</out-rpc-errors>"
             f"<out-notifications>{st.out_notifications}</out-notifications></statistics>")
    return (f'<netconf-state xmlns="{NS}" xmlns:ncm="{NS}"><capabilities>{caps}</capabilities>'
            f"<datastores>{''.join(stores)}</datastores><schemas>{server.schemas.xml()}</schemas>"
            f"<sessions>{sessions}</sessions>{stats}</netconf-state>")


def get_schema(server, params: dict) -> dict:
    fmt = params.get("format", "yang")
    if fmt.split(":")[-1] != "yang":
        raise RpcError("invalid-value", f'schema format "{fmt}" is not available; only yang',
                       path=f"{GET_SCHEMA}/format")
    text = server.schemas.text(params["identifier"], params.get("version") or None)
    return {"data": text}
