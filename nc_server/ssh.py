"""SSH transport (RFC 6242) on asyncssh: the netconf subsystem, plus SFTP/SCP for the device filesystem."""
from __future__ import annotations

import asyncio
import logging

import asyncssh
from asyncssh.constants import MSG_IGNORE, OPEN_RESOURCE_SHORTAGE
from asyncssh.packet import String

from .sftp import sftp_factory
from .session import Session
from .users import LoginBusy, LoginLimiter, UserDB

log = logging.getLogger(__name__)

# AES-GCM first and chacha20-poly1305 left out: SSH takes the client's first choice
# the server offers, and asyncssh's chacha20 costs about 8 times more per packet.
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")


_EMPTY = String(b"")


class _Connection(asyncssh.SSHServerConnection):
    """asyncssh's server connection without the empty SSH_MSG_IGNORE it puts before every packet,
    and with at most MAX_CHANNELS channels open at once.

    That packet defends CBC mode (RFC 4251 section 9.3.1); only GCM and CTR are offered
    here, so it would only cost an encryption and a send per reply.
    """

    MAX_CHANNELS = 8

    def _process_session_open(self, packet):
        # without a bound, one logged-in connection could open channels until memory runs out
        if len(self._channels) >= self.MAX_CHANNELS:
            log.warning("refusing a channel on a connection of %s: %d channels open",
                        self.get_extra_info("username"), len(self._channels))
            raise asyncssh.ChannelOpenError(OPEN_RESOURCE_SHORTAGE,
                                            f"at most {self.MAX_CHANNELS} channels per connection")
        return super()._process_session_open(packet)

    def send_packet(self, pkttype, *args, handler=None):
        if pkttype == MSG_IGNORE and args == (_EMPTY,):
            return
        super().send_packet(pkttype, *args, handler=handler)


class LoginQueue:
    """Connections not logged in yet, at most per_source from one address and total in all.
    Each may take the whole login timeout: unbounded, one client could hold every file
    descriptor, and one address cannot crowd out the others."""

    def __init__(self, per_source: int = 10, total: int = 100):
        self.per_source = per_source
        self.total = total
        self._by_source: dict[str, int] = {}

    def enter(self, ip: str) -> str | None:
        """Count a new connection; why it is refused (and not counted), or None."""
        waiting = self._by_source.get(ip, 0)
        if waiting >= self.per_source:
            return f"{waiting} connections from {ip} not logged in yet"
        if sum(self._by_source.values()) >= self.total:
            return f"{self.total} connections not logged in yet"
        self._by_source[ip] = waiting + 1
        return None

    def leave(self, ip: str) -> None:
        left = self._by_source.pop(ip) - 1
        if left:
            self._by_source[ip] = left


class _Auth(asyncssh.SSHServer):
    """Password and public-key login, with failed attempts bounded per connection,
    per user and source address, and per source address (LoginLimiter)."""

    def __init__(self, server, users: UserDB, limiter: LoginLimiter, queue: LoginQueue, logins: dict[str, int]):
        self.server = server
        self.users = users
        self.limiter = limiter
        self.queue = queue
        self.queued = False
        self.logins = logins  # logged-in connections by user
        self.counted = False
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = "?"
        self.username = ""

    def connection_made(self, conn):
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.source = str(peer[0])
        refusal = self.queue.enter(self.source)
        if refusal is not None:
            log.warning("refusing a connection from %s: %s", self.source, refusal)
            conn.close()
            return
        self.queued = True

    def _dequeue(self) -> None:
        if self.queued:
            self.queued = False
            self.queue.leave(self.source)

    def connection_lost(self, exc):
        self._dequeue()
        self.limiter.forget(id(self))
        if self.counted:
            self.logins[self.username] -= 1
            if not self.logins[self.username]:
                del self.logins[self.username]

    def begin_auth(self, username):
        self.username = username
        keys = self.users.authorized_keys(username) if self.users.exists(username) else []
        if keys:
            try:
                self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(keys)))
            except (ValueError, asyncssh.KeyImportError):
                log.warning("unreadable authorized keys for user %s", username)
        return True

    def auth_completed(self):
        self._dequeue()
        self.limiter.record_success(id(self), self.username, self.source)
        # a NETCONF session and a file transfer take a connection each; beyond twice the
        # session limit, a user would only be holding connections
        most = 2 * self.server.limits.max_sessions_per_user
        have = self.logins.get(self.username, 0)
        if self.username != self.server.acm.recovery_user and have >= most:
            log.warning("closing a connection of %s from %s: %d connections open, the most one user may have",
                        self.username, self.source, have)
            self.conn.close()
            return
        self.logins[self.username] = have + 1
        self.counted = True

    def password_auth_supported(self):
        return True

    async def validate_password(self, username, password):
        refusal = self.limiter.refusal(username, self.source)
        if refusal is not None:
            log.warning("refusing a password for %r unchecked: %s", username[:64], refusal)
        else:
            try:
                if await self.users.check_password(username, password):
                    return True
            except LoginBusy as exc:
                # the server's load, not the client's guess: not counted as a failure
                log.warning("refusing a password for %r from %s unchecked: %s", username[:64], self.source, exc)
                return False
        self._failed(username)
        return False

    def public_key_auth_supported(self):
        return True

    def _failed(self, username: str) -> None:
        log.warning("failed login for %r from %s", username[:64], self.source)
        if not self.limiter.record_failure(id(self), username, self.source):
            log.warning("closing connection from %s: too many failed logins", self.source)
            self.conn.close()


async def listen(server, host: str, port: int, host_key_path, users: UserDB, devfs):
    limiter, queue, logins = LoginLimiter(), LoginQueue(), {}

    async def process(proc: asyncssh.SSHServerProcess):
        if proc.subsystem != "netconf":
            proc.stderr.write(b"only the netconf subsystem is available\n")
            proc.exit(1)
            return
        peer = proc.get_extra_info("peername") or ("?", 0)
        username = proc.get_extra_info("username")
        refusal = server.admission(username)
        if refusal is not None:
            log.warning("refusing a session for %s from %s: %s", username, peer[0], refusal)
            proc.stderr.write(f"session refused: {refusal}\n".encode())
            proc.exit(1)
            return

        async def read():
            try:
                return await proc.stdin.read(1 << 16)
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, asyncssh.ConnectionLost):
                return b""  # treated as the end of input

        def close():
            if not proc.is_closing():
                proc.exit(0)

        session = Session(server, username, str(peer[0]), "netconf-ssh", read, proc.stdout.write,
                          proc.stdout.drain, close)
        await session.run()

    options = await asyncssh.SSHServerConnectionOptions.construct(
        server_factory=lambda: _Auth(server, users, limiter, queue, logins),
        server_host_keys=[str(host_key_path)],
        process_factory=process,
        encoding=None,
        line_editor=False,
        sftp_factory=sftp_factory(devfs),
        allow_scp=True,
        login_timeout=30,
        keepalive_interval=0,
        encryption_algs=ENCRYPTION_ALGS,
    )
    loop = asyncio.get_running_loop()
    # what asyncssh.listen does, with the connection class above
    listener = await loop.create_server(lambda: _Connection(loop, options), host, port)
    return asyncssh.SSHAcceptor(listener, options)
