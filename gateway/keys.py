"""Create and revoke gateway API keys from the command line.

``python -m gateway.keys create <name> [--role operator|admin]`` prints the new key
once (only its hash is stored); ``python -m gateway.keys revoke <name>`` revokes it.
The database is the one ``FERRY_DATABASE_URL`` / ``DATABASE_URL`` names.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from ferry.settings import load_settings
from gateway.auth import ROLES, create_api_key, revoke_api_key


async def _run(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(load_settings().database_url.get_secret_value())
    try:
        if args.command == "create":
            try:
                key = await create_api_key(conn, args.name, args.role)
            except asyncpg.UniqueViolationError:
                print(f"an API key named {args.name!r} already exists: revoke it or pick another name")
                return 1
            print(key)
            return 0
        if await revoke_api_key(conn, args.name):
            print(f"revoked {args.name}")
            return 0
        print(f"no active API key named {args.name!r}")
        return 1
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description="gateway API keys")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name", help="who the key is for; the audit log shows key:<name>")
    create.add_argument("--role", choices=ROLES, default="operator")
    revoke = sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
