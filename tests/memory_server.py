"""A NETCONF server in the test process, its sessions joined to the client by in-memory
streams: the session layer and the dispatch run as in `trustplane serve`, without SSH
or a subprocess. It serves the base protocol, the local users and the config-test
module; domain backends are left out."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from pathlib import Path

from conftest import CONFIG_TEST_YANG

from nc_server.local_users import LocalUsers
from nc_server.server import Limits, Server
from nc_server.session import Session
from nc_server.users import UserDB
from yangcore.backend import Services
from yangcore.devfs import DeviceFS


class MemoryServer:
    def __init__(self, state_dir: Path, limits: Limits | None = None):
        state_dir.mkdir(parents=True, exist_ok=True)
        users = UserDB(state_dir / "users.json")
        services = Services(state_dir=state_dir, devfs=DeviceFS(state_dir / "fs"),
                            clock=lambda: datetime.now(timezone.utc))
        self.server = Server(state_dir, [LocalUsers(users)], services, limits,
                             extra_yang_dirs=[CONFIG_TEST_YANG])
        self.server.load()
        self._log: list[str] = []
        self._handler = logging.Handler()
        self._handler.emit = lambda record: self._log.append(record.getMessage())
        logging.getLogger("nc_server").addHandler(self._handler)

    def close(self) -> None:
        logging.getLogger("nc_server").removeHandler(self._handler)
        self.server.close()

    def log(self) -> str:
        return "\n".join(self._log)

    def channel(self, username: str = "admin") -> MemoryChannel:
        return MemoryChannel(self.server, username)


class MemoryChannel:
    """One session joined to the client by two in-memory streams: the client writes with
    `write` and reads from `reader`, as on an SSH channel. The session runs as a task of
    the caller's event loop."""

    def __init__(self, server: Server, username: str):
        self.server = server
        self.username = username

    async def open(self) -> tuple[MemoryChannel, asyncio.StreamReader]:
        self.to_server, self.reader = asyncio.StreamReader(), asyncio.StreamReader()
        self.session = Session(self.server, self.username, "memory", "netconf-memory",
                               lambda: self.to_server.read(1 << 16), self.reader.feed_data, _no_wait,
                               self._close)
        self.task = asyncio.create_task(self.session.run())
        return self, self.reader

    def write(self, data: bytes) -> None:
        self.to_server.feed_data(data)

    def _close(self) -> None:
        # what closing the SSH channel does: both directions end
        self.reader.feed_eof()
        self.to_server.feed_eof()

    async def close(self) -> None:
        self.to_server.feed_eof()
        await self.task


async def _no_wait() -> None:
    pass
