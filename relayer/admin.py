"""``ferry transfers ...``: operator actions and the dead-letter list from the command line.

An action (approve, reject, retry, cancel) is written as an ``operator_requests`` row
(actor ``cli:<os user>``, role ``admin``) exactly like the gateway's admin
mutations write it, announced on ``ferry_operator_requests``, and applied by a
running relayer (``relayer.operator``). The command waits for the outcome and
prints it. Without a running relayer the request stays queued and is applied
when one starts: the exit code says which happened.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from ferry.db import create_pool
from ferry.settings import Settings
from relayer.operator import OPERATOR_CHANNEL

#: Exit codes of ``ferry transfers <action>``.
APPLIED, REFUSED, QUEUED = 0, 1, 3
POLL_SECONDS = 0.2


def run_transfers_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.transfers_command == "dead-letters":
        return asyncio.run(_print_dead_letters(settings, args.route, args.limit))
    return asyncio.run(_request_and_wait(settings, args))


async def request_action(
    pool: asyncpg.Pool, action: str, transfer_id: str, *, reason: str | None = None, actor: str | None = None
) -> int:
    """Insert an operator request (and NOTIFY the relayer); returns its id."""
    async with pool.acquire() as conn, conn.transaction():
        request_id: int = await conn.fetchval(
            """
            INSERT INTO operator_requests (action, transfer_id, actor, actor_role, origin, reason)
            VALUES ($1, $2, $3, 'admin', $4, $5) RETURNING id
            """,
            action,
            transfer_id,
            actor or f"cli:{getpass.getuser()}",
            socket.gethostname(),
            reason,
        )
        await conn.execute("SELECT pg_notify($1, $2)", OPERATOR_CHANNEL, str(request_id))
    return request_id


async def wait_for_outcome(pool: asyncpg.Pool, request_id: int, wait: float) -> str | None:
    """The request's outcome once a relayer processed it, or None after ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        outcome: str | None = await pool.fetchval(
            "SELECT outcome FROM operator_requests WHERE id = $1 AND processed_at IS NOT NULL", request_id
        )
        if outcome is not None or loop.time() >= deadline:
            return outcome
        await asyncio.sleep(POLL_SECONDS)


async def _request_and_wait(settings: Settings, args: argparse.Namespace) -> int:
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=2)
    try:
        exists = await pool.fetchval("SELECT true FROM transfers WHERE id = $1", args.transfer_id)
        if not exists:
            print(
                f"there is no transfer {args.transfer_id}: check the id "
                "(ferry transfers dead-letters lists failed ones)"
            )
            return REFUSED
        action = str(args.transfers_command).upper()
        request_id = await request_action(pool, action, args.transfer_id, reason=args.reason)
        outcome = await wait_for_outcome(pool, request_id, args.wait)
    finally:
        await pool.close()
    if outcome is None:
        print(
            f"request {request_id} ({action}) is queued: no relayer applied it within {args.wait:g} s; "
            "a running relayer applies it"
        )
        return QUEUED
    print(f"request {request_id} ({action}) {outcome}")
    return REFUSED if outcome.startswith("refused") else APPLIED


@dataclass(frozen=True)
class DeadLetter:
    transfer_id: str
    route_id: str
    amount: Decimal
    attempts: int
    reason: str | None
    failed_at: datetime


async def dead_letters(pool: asyncpg.Pool, route_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """FAILED transfers, newest first, with the reason they failed."""
    rows = await pool.fetch(
        """
        SELECT id AS transfer_id, route_id, amount, attempts, last_error AS reason, updated_at AS failed_at
          FROM transfers
         WHERE status = 'FAILED' AND ($1::text IS NULL OR route_id = $1)
         ORDER BY updated_at DESC, id LIMIT $2
        """,
        route_id,
        limit,
    )
    return [DeadLetter(**dict(row)) for row in rows]


async def _print_dead_letters(settings: Settings, route_id: str | None, limit: int) -> int:
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=2)
    try:
        letters = await dead_letters(pool, route_id, limit)
    finally:
        await pool.close()
    if not letters:
        print("no dead letters")
    for letter in letters:
        print(
            f"{letter.transfer_id}  {letter.route_id}  amount={letter.amount}  tries={letter.attempts}  "
            f"failed={letter.failed_at.isoformat(timespec='seconds')}  reason: {letter.reason}"
        )
    return 0
