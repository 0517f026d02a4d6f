"""RFC 7317 local users: `/ietf-system:system/authentication/user` over NETCONF,
kept in step with the user file SSH logins read (users.json).

- A password given in clear as `$0$...` is hashed (SHA-512-crypt, in a worker
  thread) as soon as an edit or copy arrives, before it is applied to any datastore,
  so no clear text is ever stored or returned.
- A commit to running rewrites users.json with running.xml, both or neither (the change
  applies to the next login).
  A user whose entry has no password keeps the hash users.json has, such as the
  scrypt hash of the first-start admin, which is not a crypt-hash and so is never
  shown in the configuration.
- At start, users.json is the truth: running's user list is rebuilt from it, so
  offline edits with `trustplane user` show up.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor

from backends.engine.errors import EngineError
from yangcore.backend import Backend, ConfigDiff, xml_text

from .errors import NC_NS, RpcError
from .users import UserDB, check_password_text, sha_crypt

log = logging.getLogger(__name__)

NS = "urn:ietf:params:xml:ns:yang:ietf-system"
AUTH = "/ietf-system:system/authentication"
USERS = f"{AUTH}/user"
CLEAR_PREFIX = "$0$"
HASH_ROUNDS = 100_000
_SALT = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# one operation's clear-text passwords; each costs up to some 0.2 s of hashing
MAX_CLEARTEXT = 16
_PASSWORD = f"{{{NS}}}password"
_PARENTS = (f"{{{NS}}}user", f"{{{NS}}}authentication", f"{{{NS}}}system")
_hasher: ThreadPoolExecutor | None = None


def crypt_hash(password: str) -> str:
    salt = "".join(secrets.choice(_SALT) for _ in range(16))
    return sha_crypt(password, f"$6$rounds={HASH_ROUNDS}${salt}")


async def hash_cleartext(op) -> None:
    """Replace every `$0$` user password in an operation's XML with its hash, in place,
    hashed one at a time in a worker thread so the event loop stays free."""
    global _hasher
    found = [el for el in op.iter(_PASSWORD) if (el.text or "").startswith(CLEAR_PREFIX) and _user_password(el)]
    if len(found) > MAX_CLEARTEXT:
        raise RpcError("too-big", f"at most {MAX_CLEARTEXT} clear-text ($0$) passwords in one operation, "
                       f"not {len(found)}", app_tag="too-many-cleartext-passwords")
    for el in found:
        try:
            check_password_text(el.text[len(CLEAR_PREFIX):])
        except ValueError as exc:
            name = el.getparent().findtext(f"{{{NS}}}name")
            raise RpcError("invalid-value", f'user "{name}": {exc}', app_tag="bad-password",
                           path=f"{USERS}[name='{name}']/password") from None
    if not found:
        return
    if _hasher is None:
        _hasher = ThreadPoolExecutor(1, thread_name_prefix="password-hash")
    hashes = await asyncio.get_running_loop().run_in_executor(
        _hasher, lambda: [crypt_hash(el.text[len(CLEAR_PREFIX):]) for el in found])
    for el, hashed in zip(found, hashes):
        el.text = hashed


def _user_password(el) -> bool:
    node = el
    for tag in _PARENTS:
        node = node.getparent()
        if node is None or node.tag != tag:
            return False
    return True


def refuse_cleartext(tree) -> None:
    """A `$0$` password that reached a tree was not hashed: never store it."""
    if tree is None:
        return
    for node in tree.find_all(f"{USERS}/password"):
        if str(node.value()).startswith(CLEAR_PREFIX):
            raise RpcError("invalid-value", "a clear-text ($0$) password must be inside <system> in the "
                           "operation itself", app_tag="bad-password", path=f"{USERS}/password")


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
        refuse_cleartext(tree)

    def validate(self, diff: ConfigDiff) -> None:
        users = _users(diff.new)
        if not users:
            raise EngineError("no-local-users",
                              "the configuration must keep at least one local user, or nobody could log in",
                              path=USERS)
        for name, user in users.items():
            password = user["password"]
            if password is not None and not password.startswith(("$5$", "$6$")):
                raise EngineError("weak-password-hash", f'user "{name}": only SHA-256-crypt ($5$) and '
                                  "SHA-512-crypt ($6$) password hashes are accepted", "invalid-value",
                                  f"{USERS}[name='{name}']/password")
            for line in user["authorized-keys"]:
                try:
                    UserDB.checked_key(line)
                except ValueError as exc:
                    raise EngineError("bad-authorized-key", f'user "{name}": {exc}', "invalid-value",
                                      f"{USERS}[name='{name}']") from None
            try:
                UserDB.check_name(name)
            except ValueError as exc:
                raise EngineError("bad-user-name", str(exc), "invalid-value", f"{USERS}[name='{name}']") from None

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


