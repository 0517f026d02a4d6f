"""`trustplane` command line: the composition root that wires nc_server to the backends."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncssh

import backends.builtin  # noqa: F401  (registers the backends)
from backends.device.profile import ProfileError, init_state_dir
from backends.engine.onboarding.voucher import VoucherError, parse_datetime
from nc_server.local_users import LocalUsers
from nc_server.server import Limits, Server
from nc_server.ssh import listen
from nc_server.users import UserDB
from yangcore.backend import Services, registered
from yangcore.datastore import StorageError
from yangcore.devfs import DEFAULT_MAX_FILES, DEFAULT_QUOTA_BYTES, DeviceFS

from . import lab, logs

log = logging.getLogger("trustplane")

DEFAULT_STATE = Path.home() / ".trustplane" / "device"


def lab_dir_for(state_dir: Path) -> Path:
    return state_dir.with_name(state_dir.name + "-lab")


def initialise(state_dir: Path, lab_dir: Path, nodes=None, manufacturer_anchors=(), masa_anchors=()) -> None:
    """Create a state directory: profile and IDevIDs, SSH host key, admin user, filesystem."""
    init_state_dir(state_dir, lab_dir, nodes=nodes, manufacturer_anchors=list(manufacturer_anchors),
                   masa_anchors=list(masa_anchors), now=datetime.now(timezone.utc))
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = state_dir / "ssh_host_ed25519_key"
    key.write_private_key(str(key_path))
    os.chmod(key_path, 0o600)
    users = UserDB(state_dir / "users.json")
    password = os.environ.get("TRUSTPLANE_ADMIN_PASSWORD")
    if not password:
        password = secrets.token_urlsafe(12)
        print(f"trustplane: created user admin with password {password} (shown only once)",
              file=sys.stderr, flush=True)
    users.add_user("admin", password=password)
    DeviceFS(state_dir / "fs")


async def serve(args) -> int:
    state_dir: Path = args.state_dir
    if not (state_dir / "device.json").exists():
        initialise(state_dir, args.lab_dir or lab_dir_for(state_dir))
    users = UserDB(state_dir / "users.json")
    users.load()
    devfs = DeviceFS(state_dir / "fs", max_bytes=args.fs_quota, max_files=args.fs_max_files)
    if devfs.used_bytes > devfs.max_bytes or devfs.used_files > devfs.max_files:
        log.warning("the device filesystem holds %d bytes in %d files, over its quota of %d bytes and %d files: "
                    "writes that add to it are refused", devfs.used_bytes, devfs.used_files, devfs.max_bytes,
                    devfs.max_files)
    offset = args.clock - datetime.now(timezone.utc) if args.clock else timedelta(0)
    if args.clock:
        log.warning("device clock set to %s", args.clock.isoformat())
    rate, started = args.clock_rate, datetime.now(timezone.utc)
    if rate != 1:
        log.warning("device clock runs %g times as fast as real time", rate)
    services = Services(state_dir=state_dir, devfs=devfs, clock_rate=rate,
                        clock=lambda: started + offset + (datetime.now(timezone.utc) - started) * rate)
    instances = [LocalUsers(users), *(factory(services) for factory in registered().values())]
    limits = Limits(max_message=args.max_message, hello_timeout=args.hello_timeout,
                    idle_timeout=args.idle_timeout, max_sessions=args.max_sessions,
                    max_sessions_per_user=args.max_sessions_per_user, admin_sessions=args.admin_sessions)
    server = Server(state_dir, instances, services, limits, extra_yang_dirs=args.yang_dir,
                    replay_size=args.replay_size, notification_queue=args.notification_queue)
    server.load()
    server.restore_confirmed()
    devfs.authorize = server.acm.device_files_allowed
    # what start-up built lives as long as the server: keep it out of every GC pass
    gc.freeze()
    acceptor = await listen(server, args.host, args.port, state_dir / "ssh_host_ed25519_key", users, devfs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # only now: whoever reads this line may send SIGTERM at once
    print(f"trustplane: listening on {args.host}:{acceptor.get_port()}", flush=True)
    await stop.wait()
    log.info("shutting down")
    acceptor.close()
    for session in list(server.sessions.values()):
        session.kill("server shutdown")
    await acceptor.wait_closed()
    server.close()
    return 0


def user_command(args) -> int:
    """Edit users.json offline; a running server applies it to new logins at once,
    and to its configuration at the next start."""
    users = UserDB(args.state_dir / "users.json")
    users.load()
    try:
        if args.action == "list":
            for name in users.users():
                print(name)
        elif args.action == "del":
            users.remove_user(args.name)
        else:
            hashed = args.password_hash
            if hashed is not None and not hashed.startswith(("$5$", "$6$")):
                raise ValueError("--password-hash takes a $5$ or $6$ crypt hash")
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
            keys = list(args.key)
            if users.exists(args.name):
                keys = users.authorized_keys(args.name) + keys
                if password is None and hashed is None:
                    hashed = users.record(args.name).get("password")
            users.add_user(args.name, password=password, hashed=hashed, authorized_keys=keys)
    except KeyError:
        print(f"trustplane: no user {args.name!r}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"trustplane: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"trustplane: cannot write {users.path}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _instant(text: str) -> datetime:
    try:
        return parse_datetime(text, "--clock")
    except VoucherError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _clock_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected a rate from 1 to 3600, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _node(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LOCATION=SERIAL, got {text!r}")
    loc, serial = text.split("=", 1)
    return loc, serial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustplane", description="NETCONF server for a device's trust plane")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the NETCONF server")
    p_serve.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    p_serve.add_argument("--lab-dir", type=Path, default=None,
                         help="where a first start puts the lab manufacturing CA and MASA root keys "
                              "(default: STATE-DIR-lab)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8830)
    p_serve.add_argument("--max-message", type=int, default=32 * 1024 * 1024, help="bytes per message")
    p_serve.add_argument("--hello-timeout", type=float, default=60.0,
                         help="seconds from the start of a session to the end of the client's hello")
    p_serve.add_argument("--idle-timeout", type=float, default=3600.0,
                         help="seconds from the last reply to the end of the next message")
    p_serve.add_argument("--max-sessions", type=int, default=64)
    p_serve.add_argument("--max-sessions-per-user", type=int, default=8,
                         help="NETCONF sessions one user may hold (the recovery user admin: no limit)")
    p_serve.add_argument("--admin-sessions", type=int, default=2,
                         help="of --max-sessions, how many only the recovery user admin may use")
    p_serve.add_argument("--replay-size", type=int, default=1000,
                         help="notifications kept for replay; the oldest are dropped first")
    p_serve.add_argument("--notification-queue", type=int, default=1000,
                         help="notifications a subscriber may fall behind before its session is closed")
    p_serve.add_argument("--fs-quota", type=_positive, default=DEFAULT_QUOTA_BYTES, metavar="BYTES",
                         help="the most bytes the device filesystem may hold (default: 4 GiB)")
    p_serve.add_argument("--fs-max-files", type=_positive, default=DEFAULT_MAX_FILES, metavar="N",
                         help="the most files and directories the device filesystem may hold")
    p_serve.add_argument("--yang-dir", type=Path, action="append", default=[],
                         help="also serve every module in this directory, as configuration without a backend")
    p_serve.add_argument("--clock", type=_instant, default=None, metavar="RFC3339",
                         help="start the device clock at this instant (it runs on from there): to check "
                              "artifacts that are only valid at another time")
    p_serve.add_argument("--clock-rate", type=_clock_rate, default=1.0, metavar="RATE",
                         help="run the device clock RATE times as fast as real time (1 to 3600; default 1), and "
                              "the device's timers with it (SCEP polls, trust pool updates, expiry alerts): "
                              "to watch what happens over hours in minutes")
    p_serve.add_argument("--log-level", default="INFO")

    p_init = sub.add_parser("init", help="create a state directory without prompting")
    p_init.add_argument("--state-dir", type=Path, required=True)
    p_init.add_argument("--lab-dir", type=Path, default=None)
    p_init.add_argument("--node", type=_node, action="append", metavar="LOCATION=SERIAL")
    p_init.add_argument("--manufacturer-anchor", type=Path, action="append", default=[], metavar="CERT.pem",
                        help="also trust this CA as an issuer of device identities (IDevIDs)")
    p_init.add_argument("--masa-anchor", type=Path, action="append", default=[], metavar="CERT.pem",
                        help="also trust this CA to verify ownership vouchers (a manufacturer's MASA)")

    p_user = sub.add_parser("user", help="manage local users offline (users.json)")
    p_user.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    p_user.add_argument("action", choices=("add", "del", "list"))
    p_user.add_argument("name", nargs="?")
    p_user.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p_user.add_argument("--password-hash", help="a $5$ or $6$ crypt hash")
    p_user.add_argument("--key", action="append", default=[], help="an OpenSSH public key line")

    lab.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "user" and args.action != "list" and not args.name:
        parser.error("user add and del need a NAME")
    if args.command == "serve" and not (0 <= args.admin_sessions <= args.max_sessions
                                        and args.max_sessions_per_user >= 1):
        parser.error("--admin-sessions must be 0 to --max-sessions, --max-sessions-per-user at least 1")
    logs.setup(getattr(args, "log_level", "INFO"))
    try:
        if args.command == "user":
            return user_command(args)
        if args.command == "lab":
            return lab.run(args)
        if args.command == "init":
            initialise(args.state_dir, args.lab_dir or lab_dir_for(args.state_dir), args.node,
                       args.manufacturer_anchor, args.masa_anchor)
            print(f"trustplane: initialised {args.state_dir}")
            return 0
        return asyncio.run(serve(args))
    except ProfileError as exc:
        print(f"trustplane: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a start that has to record something, on a full or read-only disk
        print(f"trustplane: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
