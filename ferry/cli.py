"""The ``ferry`` command: the one composition root.

``ferry indexer|relayer|gateway`` run one process each; ``ferry migrate`` applies
the schema; ``ferry deploy`` puts token and bridge contracts on a chain;
``ferry dev`` runs the whole stack on two local chains with demo transfers.
Process modules are imported lazily here and nowhere else in ``ferry/``.

Configuration errors end the process with exit code 2 and one readable message.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from ferry import logs, observability
from ferry.settings import ConfigError, Settings, load_settings

_SERVICES = {
    "indexer": "indexer.service",
    "relayer": "relayer.worker",
    "gateway": "gateway.server",
}


def _run_service(name: str, settings: Settings) -> None:
    settings.chains()  # validate the chains file before anything starts
    module = importlib.import_module(_SERVICES[name])
    run: Callable[[Settings], Coroutine[Any, Any, None]] = module.run
    observability.prepare(name, settings.chains())
    # NOTE: every service spends its time on sockets (PostgreSQL, Redis, JSON-RPC, HTTP and
    # WebSocket clients); uvloop's transports cost a fraction of asyncio's per read and write
    # (a profile of the gateway under load: a quarter of its CPU in asyncio's socket write).
    # uvicorn picks uvloop by default for the same reason.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(observability.with_event_loop_watch(run(settings)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Ferry cross-chain bridge backend")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("indexer", "follow the configured chains and write bridge events and transfers"),
        ("relayer", "run the arq worker that signs and submits releases"),
        ("gateway", "serve the GraphQL API, health and metrics"),
    ):
        sub.add_parser(name, help=text)
    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    deploy = sub.add_parser("deploy", help="deploy a test token and a FerryBridge to a chain")
    deploy.add_argument("--rpc-url", required=True)
    deploy.add_argument("--signers", required=True, help="comma-separated signer addresses")
    deploy.add_argument("--threshold", type=int, default=1)
    deploy.add_argument("--token-symbol", default="FTT")
    deploy.add_argument(
        "--deployer-key-env",
        default="FERRY_DEPLOYER_KEY",
        help="environment variable holding the deployer's private key",
    )
    dev = sub.add_parser("dev", help="run the whole stack on two local anvil chains with demo transfers")
    dev.add_argument(
        "--workdir", default=".ferry", help="folder for the dev chains file and embedded services"
    )
    dev.add_argument("--demo-transfers", type=int, default=3, help="demo transfers per direction")
    dev.add_argument("--database", default="ferry_dev", help="database to (re)create for the dev stack")
    dev.add_argument(
        "--exit-after-demo", action="store_true", help="stop once the demo transfers are released"
    )
    _add_transfers_commands(sub)
    keys = sub.add_parser("keys", help="release signer keys")
    key_actions = keys.add_subparsers(dest="keys_command", required=True)
    rotate = key_actions.add_parser(
        "rotate", help="add a new signer on every target bridge, let relayers switch, remove the old one"
    )
    rotate.add_argument("--old", required=True, help="address of the signer to retire")
    rotate.add_argument("--new", required=True, help="address of the new signer (relayers hold its keystore)")
    rotate.add_argument("--settle", type=float, default=60.0, help="seconds between adding and removing")
    return parser


def _add_transfers_commands(sub: Any) -> None:
    """``ferry transfers approve|reject|retry|cancel ID`` and ``dead-letters`` (relayer.admin)."""
    transfers = sub.add_parser("transfers", help="operator actions on transfers and the dead-letter list")
    actions = transfers.add_subparsers(dest="transfers_command", required=True)
    for name, text in (
        ("approve", "release a HELD transfer despite the limit that held it"),
        ("reject", "fail a HELD transfer for good ('rejected by operator')"),
        ("retry", "send a FAILED transfer (a dead letter) back to be released"),
        ("cancel", "close a HELD or FAILED transfer for good; it is never released"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("transfer_id", help="<sourceChainId>:<sourceBridge>:<nonce>")
        action.add_argument("--reason", help="why, kept in the audit record")
        action.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the outcome")
    dead = actions.add_parser("dead-letters", help="list FAILED transfers with their reasons")
    dead.add_argument("--route", help="only this route, e.g. FTT:31337-31338")
    dead.add_argument("--limit", type=int, default=100)


def _rotate_keys(args: argparse.Namespace, settings: Settings) -> None:
    if settings.owner_key is None:
        raise ConfigError(
            "ferry keys rotate needs the bridge owner's key in FERRY_OWNER_KEY (or FERRY_OWNER_KEY_FILE)"
        )
    owner_key = settings.owner_key.get_secret_value()
    logs.register_secret(owner_key)
    rotation = importlib.import_module("relayer.rotation")
    rotation.rotate_signer(settings.chains(), owner_key, args.old, args.new, settle=args.settle)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        fmt = settings.log_format
        if args.command == "dev" and "FERRY_LOG_FORMAT" not in os.environ:
            fmt = "text"  # a person is watching
        logs.configure(args.command, fmt=fmt, level=settings.log_level)
        logs.register_secret(settings.database_url.get_secret_value())
        logs.register_secret(settings.redis_url.get_secret_value())
        if args.command in _SERVICES:
            _run_service(args.command, settings)
        elif args.command == "migrate":
            from ferry.migrate import upgrade

            upgrade(settings.database_url.get_secret_value())
        elif args.command == "deploy":
            from ferry.deploy import deploy_from_cli

            deploy_from_cli(args)
        elif args.command == "transfers":
            admin = importlib.import_module("relayer.admin")
            sys.exit(admin.run_transfers_command(args, settings))
        elif args.command == "keys":
            _rotate_keys(args, settings)
        elif args.command == "dev":
            from ferry.dev import run_dev

            sys.exit(run_dev(args))
    except ConfigError as exc:
        print(f"ferry {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
