"""Shared set-up for the indexer benchmarks: a fresh anvil full of locks, a scratch database.

- ``emitter_chain(events)``: a fresh anvil (``--prune-history``, via AnvilProcess)
  with a ``TestEmitter`` that emitted ``events`` FerryBridge-shaped locks, 1,000 per
  transaction, and a chains file whose source bridge is the emitter.
- ``scratch_database()``: a new database on the configured PostgreSQL
  (``FERRY_DATABASE_URL``'s server, default 127.0.0.1:5432, embedded when nothing
  answers), migrated; dropped at the end, whether the benchmark succeeded or not.

Benchmarks are scripts, never tests: run ``.venv/bin/python bench/backfill.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml
from web3 import HTTPProvider, Web3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferry.contracts import load_artifact
from ferry.deploy import deploy_contract, send_transaction
from ferry.devchain import DEV_ACCOUNTS, AnvilProcess, free_port
from ferry.migrate import upgrade
from ferry.services import ensure_postgres
from ferry.settings import ChainsConfig, load_chains

SOURCE, TARGET = 31_901, 31_902
PER_TX = 1_000
KEY = DEV_ACCOUNTS[0][1]
RECIPIENT = DEV_ACCOUNTS[6][0]
#: Any address: the target chain is configured (so the route exists) but never followed.
TARGET_BRIDGE = "0x000000000000000000000000000000000000bEEF"


@dataclass
class EmitterChain:
    anvil: AnvilProcess
    emitter: str
    start_block: int
    config: ChainsConfig
    chains_file: Path


@contextlib.contextmanager
def emitter_chain(
    events: int, *, log_range: int = 2_000, workdir: Path | None = None
) -> Iterator[EmitterChain]:
    folder = Path(workdir or tempfile.mkdtemp(prefix="ferry-bench-"))
    with contextlib.ExitStack() as cleanup:
        if workdir is None:  # NOTE: a folder made here goes when the chain does
            cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        with _emitting(folder, events, log_range) as chain:
            yield chain


@contextlib.contextmanager
def _emitting(folder: Path, events: int, log_range: int) -> Iterator[EmitterChain]:
    with AnvilProcess.start(SOURCE, free_port(), extra_args=["--gas-limit", "100000000"]) as anvil:
        w3 = Web3(HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        emitter = deploy_contract(w3, KEY, "TestEmitter")
        start = int(w3.eth.block_number)
        contract = w3.eth.contract(address=emitter, abi=load_artifact("TestEmitter").abi)
        emitted = 0
        while emitted < events:
            count = min(PER_TX, events - emitted)
            call = contract.functions.emitLocks(count, 10**18, RECIPIENT, TARGET)
            send_transaction(w3, KEY, call, "emitting locks")
            emitted += count
        chains_file = folder / "chains.yaml"
        chains_file.write_text(yaml.safe_dump(_chains_document(anvil.url, emitter, start, log_range)))
        yield EmitterChain(anvil, emitter, start, load_chains(chains_file), chains_file)


def _chains_document(url: str, emitter: str, start: int, log_range: int) -> dict[str, object]:
    return {
        "chains": [
            {"id": SOURCE, "name": "bench-source", "rpc_urls": [url], "confirmations": 2,
             "log_range": log_range,
             "bridges": {"FTT": {"bridge": emitter, "token": emitter, "start_block": start}}},
            {"id": TARGET, "name": "bench-target", "rpc_urls": ["http://127.0.0.1:9"], "confirmations": 2,
             "bridges": {"FTT": {"bridge": TARGET_BRIDGE, "token": TARGET_BRIDGE}}},
        ],
        "routes": [{"token": "FTT", "source": SOURCE, "target": TARGET}],
    }  # fmt: skip


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    admin = os.environ.get("FERRY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin = urlunsplit(urlsplit(admin)._replace(path="/postgres"))
    folder = Path(tempfile.mkdtemp(prefix="ferry-bench-pg-"))
    server = ensure_postgres(admin, folder)
    name = f"ferry_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = urlunsplit(urlsplit(server.url)._replace(path=f"/{name}"))
            upgrade(url)
            yield url
        finally:  # NOTE: also when the benchmark (or the migration) fails: no database left behind
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
