"""Indexer memory benchmark: peak RSS of a backfill at 10,000 and at 100,000 locks.

    .venv/bin/python bench/indexer_memory.py [small] [large]   (default 10000 100000)

For each size, a fresh anvil gets the locks (``TestEmitter``) and a scratch
database; then a *child process* runs the indexer's follower (backfill, then steps
to the head) and reports its peak RSS: ``VmHWM`` from ``/proc/self/status``, the
high-water mark of the child's own memory. Not ``ru_maxrss``: on Linux a child's
``ru_maxrss`` also counts the parent's peak RSS at the spawn (the exec records
the old address space's high-water mark), so it reported this script's own
memory (web3, the emitter run) whenever that was larger. Baseline: the peak RSS
of a child that imports the same modules and connects, but indexes nothing.
Flat memory means the figure barely grows from small to large.

Prints one JSON object: {figure (MiB at the large size), baseline, ratio, ...}.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
from pathlib import Path

from _indexer_setup import SOURCE, emitter_chain, scratch_database

HERE = Path(__file__).resolve()


async def child(chains_file: str, url: str, index: bool) -> None:
    import asyncpg

    from ferry.settings import load_chains
    from indexer import service
    from indexer.backfill import backfill
    from indexer.follower import Follower

    config = load_chains(Path(chains_file))
    pool = await asyncpg.create_pool(url, min_size=1, max_size=6)
    await service.prepare_database(pool, config)
    follower = Follower(config.chain_by_id[SOURCE], config, pool)
    try:
        if index:
            await backfill(follower)
            while not (await follower.step()).caught_up:
                pass
    finally:
        await follower.close()
        await pool.close()


def peak_rss_mib(chains_file: Path, url: str, index: bool) -> float:
    flag = "index" if index else "idle"
    child = subprocess.run(
        [sys.executable, str(HERE), "--child", flag, str(chains_file), url],
        check=False,
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"the {flag} child failed:\n{child.stderr}")
    return float(child.stdout.strip().splitlines()[-1])


def measure(events: int) -> dict[str, float]:
    with emitter_chain(events) as chain, scratch_database() as url:
        idle = peak_rss_mib(chain.chains_file, url, index=False)
        indexing = peak_rss_mib(chain.chains_file, url, index=True)
    return {"events": events, "peak_rss_mib": round(indexing, 1), "idle_rss_mib": round(idle, 1)}


def main(small: int, large: int) -> dict[str, object]:
    low, high = measure(small), measure(large)
    return {
        "benchmark": "indexer_memory",
        "figure": high["peak_rss_mib"],
        "unit": f"MiB peak RSS at {large} locks",
        "baseline": high["idle_rss_mib"],
        "ratio": round(high["peak_rss_mib"] / high["idle_rss_mib"], 2),
        "small": low,
        "large": high,
        "growth_small_to_large": round(high["peak_rss_mib"] / low["peak_rss_mib"], 2),
    }


def own_peak_rss_mib() -> float:
    """This process's own peak RSS (``VmHWM``); ``ru_maxrss`` where there is no /proc (it may
    include the parent's, see the module docstring)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[3], sys.argv[4], sys.argv[2] == "index"))
        print(own_peak_rss_mib())
    else:
        sizes = [int(a) for a in sys.argv[1:3]] or [10_000, 100_000]
        print(json.dumps(main(sizes[0], sizes[-1])))
