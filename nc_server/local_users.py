"""RFC 7317 local users: `/ietf-system:system/authentication/user` over NETCONF,
kept in step with the user file SSH logins read (users.json).

- A password given in clear as `$0$...` is hashed (SHA-512-crypt) as soon as an
  edit arrives, for every datastore, so no clear text is ever stored or returned.
- A commit to running rewrites users.json with running.xml, both or neither (the change
  applies to the next login).
  A user whose entry has no password keeps the hash users.json has, such as the
  scrypt hash of the first-start admin, which is not a crypt-hash and so is never
  shown in the configuration.
- At start, users.json is the truth: running's user list is rebuilt from it, so
  offline edits with `trustplane user` show up.
"""
from __future__ import annotations

import base64
import logging
import secrets

from _libyang import lib

from . import libyang_abi
from .backend import Backend, BackendError, ConfigDiff, xml_text
from .errors import NC_NS
from .users import UserDB, sha_crypt

log = logging.getLogger(__name__)

NS = "urn:ietf:params:xml:ns:yang:ietf-system"
AUTH = "/ietf-system:system/authentication"
USERS = f"{AUTH}/user"
CLEAR_PREFIX = "$0$"
HASH_ROUNDS = 100_000
_SALT = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def crypt_hash(password: str) -> str:
    salt = "".join(secrets.choice(_SALT) for _ in range(16))
    return sha_crypt(password, f"$6$rounds={HASH_ROUNDS}${salt}")


def hash_cleartext(tree) -> None:
    """Replace every `$0$` password in the tree with its hash, in place."""
    if tree is None:
        return
    for node in list(tree.find_all(f"{USERS}/password")):
        value = str(node.value())
        if value.startswith(CLEAR_PREFIX):
            if libyang_abi.change_term(node.cdata, crypt_hash(value[len(CLEAR_PREFIX):])) not in (
                    lib.LY_SUCCESS, lib.LY_EEXIST):
                raise RuntimeError("cannot store the password hash")


def _users(tree) -> dict[str, dict]:
    out = {}
    if tree is None:
        return out
    for user in tree.find_all(USERS):
        name = _leaf(user, "name")
        keys = []
        for key in user.find_all("authorized-key"):
            data = base64.b64encode(base64.b64decode(_leaf(key, "key-data"))).decode()
            keys.append(f"{_leaf(key, 'algorithm')} {data} {_leaf(key, 'name')}")
        out[name] = {"password": _leaf(user, "password"), "authorized-keys": keys}
    return out


def _leaf(node, name: str) -> str | None:
    child = node.find_path(name)
    return None if child is None else str(child.value())


class LocalUsers(Backend):
    """The server's own config hooks for the user list (nc_server, not a domain backend)."""

    def __init__(self, users: UserDB):
        super().__init__(name="local-users", modules=("ietf-system", "trustplane-system-deviations"),
                         config=(AUTH,))
        self.users = users

    def protect_secrets(self, tree) -> None:
        hash_cleartext(tree)

    def validate(self, diff: ConfigDiff) -> None:
        users = _users(diff.new)
        if not users:
            raise BackendError("the configuration must keep at least one local user, or nobody could log in",
                               app_tag="no-local-users", path=USERS)
        for name, user in users.items():
            password = user["password"]
            if password is not None and not password.startswith(("$5$", "$6$")):
                raise BackendError(f'user "{name}": only SHA-256-crypt ($5$) and SHA-512-crypt ($6$) '
                                   "password hashes are accepted", app_tag="weak-password-hash",
                                   tag="invalid-value", path=f"{USERS}[name='{name}']/password")
            for line in user["authorized-keys"]:
                try:
                    UserDB.checked_key(line)
                except ValueError as exc:
                    raise BackendError(f'user "{name}": {exc}', app_tag="bad-authorized-key",
                                       tag="invalid-value", path=f"{USERS}[name='{name}']") from None
            try:
                UserDB.check_name(name)
            except ValueError as exc:
                raise BackendError(str(exc), app_tag="bad-user-name", tag="invalid-value",
                                   path=f"{USERS}[name='{name}']") from None

    def prepare(self, diff: ConfigDiff, writes) -> None:
        self.users.replace_all(_users(diff.new), writes)

    def apply(self, diff: ConfigDiff) -> None:
        # the user file is in place: the next login reads it
        log.info("local users now: %s", ", ".join(sorted(_users(diff.new))) or "none")

    def stored_config(self) -> str:
        """The user list as configuration, from users.json."""
        parts = []
        for name in self.users.users():
            record = self.users.record(name)
            pw = record.get("password")
            pw_el = f"<password>{pw}</password>" if isinstance(pw, str) and pw.startswith(("$5$", "$6$")) else ""
            keys, seen = "", set()
            for i, line in enumerate(record.get("authorized-keys", [])):
                fields = line.split()
                if len(fields) < 2:
                    continue
                key_name = fields[2] if len(fields) > 2 and fields[2] not in seen else f"key{i}"
                seen.add(key_name)
                keys += (f"<authorized-key><name>{xml_text(key_name)}</name><algorithm>{xml_text(fields[0])}</algorithm>"
                         f"<key-data>{xml_text(fields[1])}</key-data></authorized-key>")
            parts.append(f"<user><name>{xml_text(name)}</name>{pw_el}{keys}</user>")
        return (f'<system xmlns="{NS}"><authentication xmlns:nc="{NC_NS}" nc:operation="replace">'
                f'{"".join(parts)}</authentication></system>')


