"""RFC 6022 NETCONF monitoring: the netconf-state data and the get-schema RPC."""
from __future__ import annotations

from datetime import datetime, timezone

from _libyang import ffi, lib

from .errors import RpcError

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

    def data(self) -> list[dict]:
        return [{"identifier": name, "version": rev, "format": "yang", "namespace": ns, "location": ["NETCONF"]}
                for (name, rev), (ns, _path) in sorted(self.rows.items())]


def _session(s) -> dict:
    c = s.connection.counters
    return {"session-id": s.id, "transport": "ietf-netconf-monitoring:netconf-ssh", "username": s.username,
            "source-host": s.source, "login-time": timestamp(s.login_time), "in-rpcs": c.in_rpcs,
            "in-bad-rpcs": c.in_bad_rpcs, "out-rpc-errors": c.out_rpc_errors,
            "out-notifications": c.out_notifications}


def state(server) -> dict:
    stores = []
    for name in ("running", "candidate", "startup"):
        store: dict = {"name": name}
        if name in server.locks:
            store["locks"] = {"global-lock": {"locked-by-session": server.locks[name],
                                              "locked-time": timestamp(server.lock_times[name])}}
        stores.append(store)
    st = server.stats
    return {"ietf-netconf-monitoring:netconf-state": {
        "capabilities": {"capability": list(server.capabilities)},
        "datastores": {"datastore": stores},
        "schemas": {"schema": server.schemas.data()},
        "sessions": {"session": [_session(s) for s in server.sessions.values()]},
        "statistics": {"netconf-start-time": timestamp(st.start), "in-bad-hellos": st.in_bad_hellos,
                       "in-sessions": st.in_sessions, "dropped-sessions": st.dropped_sessions,
                       "in-rpcs": st.in_rpcs, "in-bad-rpcs": st.in_bad_rpcs, "out-rpc-errors": st.out_rpc_errors,
                       "out-notifications": st.out_notifications}}}


def get_schema(server, params: dict) -> dict:
    fmt = params.get("format", "yang")
    if fmt.split(":")[-1] != "yang":
        raise RpcError("invalid-value", f'schema format "{fmt}" is not available; only yang',
                       path=f"{GET_SCHEMA}/format")
    text = server.schemas.text(params["identifier"], params.get("version") or None)
    return {"data": text}
