"""What every relay job needs, built once per worker process: pool, RPC clients, keys.

``open_context`` is the worker's start-up (``relayer.worker`` calls it from arq's
``on_startup``; tests call it too, so jobs run with exactly what production gives
them). Keys are registered with the log redaction filter as soon as they are read
and are never formatted anywhere: ``RelayerContext`` has no key in its repr.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ferry.db import create_pool
from ferry.rpc import RpcClient, RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainsConfig, ConfigError, Settings
from relayer.eip712 import signer_address
from relayer.keys import relay_keys
from relayer.submitter import TxSigner

log = logging.getLogger(__name__)

#: Where the context lives in arq's ``ctx`` dict.
CONTEXT_KEY = "relayer"


@dataclass
class RelayerContext:
    settings: Settings
    chains: ChainsConfig
    pool: asyncpg.Pool
    rpc: dict[int, RpcClient]
    submitter: TxSigner
    #: Release signer keys by signer address (checksum).
    signers: dict[str, bytes] = field(repr=False)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.rpc.values()))
        await self.pool.close()


async def open_context(settings: Settings) -> RelayerContext:
    """Read keys and chains, connect to PostgreSQL and every chain's first RPC endpoint."""
    keys = relay_keys(settings)
    signer_keys, submitter_key = keys.signer_keys, keys.submitter_key
    chains = settings.chains()
    rpc = {chain.id: RpcClient(chain.rpc_urls[0]) for chain in chains.chains}
    try:
        await asyncio.gather(*(_check_chain_id(chain_id, client) for chain_id, client in rpc.items()))
        pool = await create_pool(settings.database_url.get_secret_value(), max_size=20)
    except BaseException:
        await asyncio.gather(*(client.close() for client in rpc.values()))
        raise
    submitter = TxSigner(submitter_key)
    log.info(
        "relayer ready: submitting from %s with %d signer key(s) on chains %s",
        submitter.address,
        len(signer_keys),
        sorted(rpc),
    )
    signers = {signer_address(key): key for key in signer_keys}
    return RelayerContext(settings, chains, pool, rpc, submitter, signers)


async def _check_chain_id(chain_id: int, client: RpcClient) -> None:
    """Refuse an endpoint that serves another chain; tolerate one that is down for now."""
    try:
        actual = await client.chain_id()
    except (RpcUnavailable, RpcGarbage, RpcError) as exc:
        log.warning("cannot check the chain id of %s yet: %s", client.name, exc, extra={"chain_id": chain_id})
        return
    if actual != chain_id:
        raise ConfigError(
            f"the RPC endpoint {client.name} serves chain {actual}, but the chains file says {chain_id}: "
            "fix rpc_urls or the chain id"
        )


def relayer_context(ctx: dict[str, Any]) -> RelayerContext:
    context = ctx.get(CONTEXT_KEY)
    if not isinstance(context, RelayerContext):
        raise RuntimeError("relay jobs need the worker's context: build it with relayer.context.open_context")
    return context
