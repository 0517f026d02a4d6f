"""RFC 8341 for NETCONF: the core's access rules with the protocol's own parts, namely
close-session always allowed, the default policy of a fresh device, the <nacm> counters
and errors of whole-configuration checks redacted for what the session may not read."""
from __future__ import annotations

import re

from _libyang import ffi

from yangcore.nacm import AccessControl

from .errors import RpcError

NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
# a data path quoted in a libyang message
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
# a fresh device: the admin group may do everything, nobody else anything
DEFAULT_POLICY = (
    f'<nacm xmlns="{NS}"><read-default>deny</read-default><write-default>deny</write-default>'
    "<exec-default>deny</exec-default><groups><group><name>admin</name><user-name>admin</user-name></group>"
    "</groups><rule-list><name>admin</name><group>admin</group><rule><name>permit-all</name>"
    "<module-name>*</module-name><access-operations>*</access-operations><action>permit</action></rule>"
    "</rule-list></nacm>")


class NetconfAccessControl(AccessControl):
    def check_operation(self, session, module: str, name: str) -> None:
        if not (module == "ietf-netconf" and name == "close-session"):
            super().check_operation(session, module, name)

    def redact_errors(self, session, errors: list[RpcError]) -> list[RpcError]:
        """Errors from checking a whole configuration (unique, must, leafref, mandatory, a backend's
        check) may name any node in it: for a checked session, one that names a node the session
        may not read keeps its tags but loses its message and path."""
        pol = self.checked(session)
        if pol is None:
            return errors
        rules = pol.rules_for(session.username)

        def readable(path: str) -> bool:
            module, snode = self._resolve(path)
            if snode == ffi.NULL:  # a schema path from a module's text names no data; a data path resolves
                return "[" not in path
            return self._data_allowed(pol, rules, module, path, snode, "read")

        out = []
        for err in errors:
            paths = ([err.path] if err.path else []) + _QUOTED_PATH.findall(err.message)
            if err.tag == "access-denied" or all(readable(p) for p in paths):
                out.append(err)
            else:
                out.append(RpcError(err.tag, "the configuration is not valid where you may not read it",
                                    type=err.type, app_tag=err.app_tag, info=err.info))
        return out

    def state(self) -> dict:
        return {"ietf-netconf-acm:nacm": {"denied-operations": self.denied_operations,
                                          "denied-data-writes": self.denied_data_writes,
                                          "denied-notifications": self.denied_notifications}}
