"""Several indexers, one leader per chain; the watchdog restarts a stuck follower.

- Two ``ferry indexer`` processes back-fill the same database; the leader of
  chain A is killed with SIGKILL mid-backfill; the standby takes the chain's
  advisory lock and finishes; the data equals a clean single-process run's.
- A follower whose commits block (another session holds the chain's row) while
  the node's head advances is declared stalled by the watchdog: ``/ready`` fails,
  the restart metric counts it, and a new follower carries on once unblocked.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from prometheus_client import REGISTRY

from ferry.deploy import lock_tokens
from ferry.devchain import free_port
from ferry.devstack import DevChain, DevNetwork, ProcessGroup
from ferry.rpc import RpcClient
from ferry.settings import ChainsConfig, load_chains
from indexer import service
from indexer.backfill import backfill
from indexer.follower import Follower
from indexer.health import HealthServer
from indexer.supervisor import ChainSupervisor

WAIT = 120.0
ONE = 10**18


def small_ranges(network: DevNetwork, path: Path) -> Path:
    """The network's chains file with 2-block log ranges on chain A, so a backfill takes many steps."""
    document: dict[str, Any] = yaml.safe_load(network.chains_file.read_text())
    document["chains"][0]["log_range"] = 2
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def rpc(chain: DevChain, method: str, *params: Any) -> Any:
    client = RpcClient(chain.url)
    try:
        return await client.call(method, *params)
    finally:
        await client.close()


async def snapshot(pool: asyncpg.Pool) -> dict[str, Any]:
    transfers = await pool.fetch(
        """
        SELECT id, status, amount, sender, recipient, lock_tx_hash, lock_log_index, lock_block_number,
               lock_block_hash, release_tx_hash, release_block_number
          FROM transfers ORDER BY id
        """
    )
    history = await pool.fetch(
        "SELECT transfer_id, from_status, to_status FROM transfer_status_history ORDER BY transfer_id, id"
    )
    releases = await pool.fetch("SELECT * FROM releases_seen ORDER BY chain_id, tx_hash, log_index")
    chains = await pool.fetch(
        "SELECT chain_id, indexed_block, indexed_block_hash FROM chains ORDER BY chain_id"
    )
    return {
        "transfers": [tuple(r) for r in transfers],
        "history": [tuple(r) for r in history],
        "releases": [tuple(r) for r in releases],
        "chains": [tuple(r) for r in chains],
    }


async def truncate(pool: asyncpg.Pool) -> None:
    tables = await pool.fetch(
        "SELECT quote_ident(tablename) FROM pg_tables"
        " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    )
    await pool.execute(f"TRUNCATE {', '.join(t[0] for t in tables)} RESTART IDENTITY CASCADE")


async def leader_pid(pool: asyncpg.Pool, chain_id: int) -> int | None:
    name: str | None = await pool.fetchval(
        """
        SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)
        """,
        f"ferry:indexer:{chain_id}",
    )
    return int(name.rsplit(":", 1)[1]) if name else None


async def until(probe: Any, what: str) -> Any:
    for _ in range(int(WAIT * 10)):
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


async def test_a_standby_finishes_the_backfill_after_the_leader_is_killed(
    dev_chains: DevNetwork, pool: asyncpg.Pool, clean_db: str, tmp_path: Path
) -> None:
    chain_a, chain_b = dev_chains.chains
    for i in range(5):
        lock_tokens(
            chain_a.w3, dev_chains.user_key, chain_a.token, chain_a.bridge, (40 + i) * ONE,
            dev_chains.recipient_address, chain_b.chain_id,
        )  # fmt: skip
    await rpc(chain_a, "anvil_mine", hex(400))
    chains_file = small_ranges(dev_chains, tmp_path / "chains.yaml")
    config: ChainsConfig = load_chains(chains_file)
    head_a = int(await rpc(chain_a, "eth_blockNumber"), 16)

    await service.prepare_database(pool, config)
    # The clean run: in-process followers, chain after chain, twice (a release is finalized
    # by its own chain's follower, which may have run before the lock was indexed).
    for chain in [*config.chains, *config.chains]:
        follower = Follower(chain, config, pool)
        try:
            await backfill(follower)
            while not (await follower.step()).caught_up:
                pass
        finally:
            await follower.close()
    clean = await snapshot(pool)
    await truncate(pool)

    env = {
        **dev_chains.env(),
        "FERRY_CHAINS_FILE": str(chains_file),
        "FERRY_DATABASE_URL": clean_db,
        "FERRY_METRICS_PORT": "0",
        "FERRY_LOG_FORMAT": "text",
    }
    group = ProcessGroup(env, logdir=tmp_path / "logs")
    try:
        for name in ("indexer-1", "indexer-2"):
            group.start(name, "indexer", {"FERRY_INDEXER_HEALTH_PORT": str(free_port())})
        first = await until(lambda: leader_pid(pool, chain_a.chain_id), "a leader for chain A")
        start = chain_a.deploy_block

        async def backfilling() -> bool:
            cursor = await pool.fetchval(
                "SELECT indexed_block FROM chains WHERE chain_id = $1", chain_a.chain_id
            )
            return cursor is not None and cursor > start + 20

        await until(backfilling, "the backfill to start")
        cursor_at_kill = await pool.fetchval(
            "SELECT indexed_block FROM chains WHERE chain_id = $1", chain_a.chain_id
        )
        os.kill(first, signal.SIGKILL)
        second = await until(
            lambda: _other_leader(pool, chain_a.chain_id, first), "the standby to take chain A over"
        )

        async def finished() -> bool:
            rows = await pool.fetch("SELECT chain_id, indexed_block FROM chains")
            return {r["chain_id"]: r["indexed_block"] for r in rows}.get(chain_a.chain_id) == head_a

        await until(finished, "the standby to finish the backfill")

        async def settled() -> dict[str, Any] | None:
            # NOTE: both chains keep polling; a release is finalized by its own chain's next step.
            now = await snapshot(pool)
            same = all(set(now[t]) == set(clean[t]) for t in ("transfers", "releases", "chains"))
            return now if same else None

        for _ in range(100):
            if (result := await settled()) is not None:
                break
            await asyncio.sleep(0.5)
        else:
            result = await snapshot(pool)
    finally:
        group.stop()

    assert cursor_at_kill < head_a, "the leader must be killed during the backfill"
    assert second != first
    assert {p.pid for p in group.processes.values()} >= {first, second}
    # NOTE: chains are indexed concurrently by the processes and one after the other in the
    # clean run, so a transfer's history may take another (legal) path; its outcome may not.
    clean_history, history = clean.pop("history"), result.pop("history")
    for table, rows in clean.items():
        differing = set(rows) ^ set(result[table])
        assert not differing, f"{table} differ from a clean run's: {sorted(differing, key=str)}"
    for rows in (clean_history, history):
        assert_history_is_a_chain_ending_in_the_status(rows, result["transfers"])


def assert_history_is_a_chain_ending_in_the_status(rows: list[tuple[Any, ...]], transfers: list[Any]) -> None:
    paths: dict[str, list[tuple[Any, ...]]] = {}
    for transfer_id, from_status, to_status in rows:
        paths.setdefault(transfer_id, []).append((from_status, to_status))
    for transfer in transfers:
        path = paths[transfer[0]]
        assert path[0][0] is None, f"{transfer[0]}: history must start with its creation"
        for (_, before), (after, _) in itertools.pairwise(path):
            assert before == after, f"{transfer[0]}: history jumps from {before} to {after}"
        assert path[-1][1] == transfer[1], f"{transfer[0]}: history ends in {path[-1][1]}, not {transfer[1]}"


async def _other_leader(pool: asyncpg.Pool, chain_id: int, dead: int) -> int | None:
    pid = await leader_pid(pool, chain_id)
    return pid if pid not in (None, dead) else None


async def test_the_watchdog_restarts_a_stuck_follower_and_ready_fails_meanwhile(
    dev_chains: DevNetwork, pool: asyncpg.Pool, clean_db: str
) -> None:
    chain_a = dev_chains.chains[0]
    config = dev_chains.config
    chain = config.chain_by_id[chain_a.chain_id]
    await service.prepare_database(pool, config)
    supervisor = ChainSupervisor(chain, config, pool, clean_db, watchdog=2.0)
    port = free_port()
    health = HealthServer("127.0.0.1", port, lambda: [chain.name] if supervisor.stalled else [])
    await health.start()
    restarts = REGISTRY.get_sample_value("ferry_indexer_watchdog_restarts_total", {"chain": chain.name}) or 0
    running = asyncio.create_task(supervisor.run())
    blocker = await asyncpg.connect(clean_db)
    try:
        head = int(await rpc(chain_a, "eth_blockNumber"), 16)
        await until(
            lambda: pool.fetchval(
                "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", head, chain.id
            ),
            "the follower to catch up",
        )
        assert (await ready(port)) == 200
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT * FROM chains WHERE chain_id = $1 FOR UPDATE", chain.id)
        await rpc(chain_a, "anvil_mine", hex(3))

        async def restarted() -> bool:
            value = REGISTRY.get_sample_value("ferry_indexer_watchdog_restarts_total", {"chain": chain.name})
            return (value or 0) > restarts

        await until(restarted, "the watchdog to restart the follower")
        assert (await ready(port)) == 503
        await transaction.rollback()
        head = int(await rpc(chain_a, "eth_blockNumber"), 16)
        await until(
            lambda: pool.fetchval(
                "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", head, chain.id
            ),
            "the new follower to catch up",
        )
        await until(lambda: _is(ready(port), 200), "/ready to recover")
    finally:
        await blocker.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await health.stop()


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def ready(port: int) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code
