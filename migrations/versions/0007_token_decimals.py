"""Token decimals in the database; the analytics views apply them instead of assuming 18.

``tokens`` holds each bridge deployment of the chains file (chain, token symbol,
token and bridge addresses, decimals). Its one writer is the indexer, which
registers it with its chains at start (``indexer.store.register_chains``), so a
changed ``decimals`` in the chains file reaches the database on the next start.

A transfer's amount is in base units of its *source* token, so
``analytics.transfers.amount_tokens`` (and ``daily_volume.volume_tokens``) divide
by ``10^decimals`` of (source chain, token), exactly (numeric with 36 decimal
places, trailing zeros trimmed). A transfer whose token is not registered has
NULL ``amount_tokens`` rather than a guess. ``analytics.transfers`` gains a
``decimals`` column (appended: the view's existing columns keep their order and
types) and ``analytics.tokens`` is new; the analyst reads both.

The unused ``release_attempts`` table stays: ``relayer/limits.py`` still names it
in a query, so dropping it here would break the relayer. A later revision drops
it once that query no longer reads it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ANALYST = "ferry_analyst"


# NOTE: base units to token units, exactly: numeric(120, 36) holds any uint256 (and sums
# of them) with 36 decimal places, the most a chains file allows.
TRANSFERS = """
    SELECT t.id, t.route_id, t.token,
           t.source_chain_id, sc.name AS source_chain,
           t.target_chain_id, tc.name AS target_chain,
           t.sender, t.recipient, t.amount,
           trim_scale(t.amount::numeric(120, 36) / power(10::numeric, k.decimals)) AS amount_tokens,
           t.status, t.confirmations_required,
           t.lock_tx_hash, t.lock_block_number, t.lock_block_time AS locked_at,
           t.release_tx_hash, t.release_block_number, t.release_block_time AS released_at,
           EXTRACT(EPOCH FROM t.release_block_time - t.lock_block_time)::double precision
               AS seconds_to_release,
           t.attempts,
           CASE WHEN t.status IN ('FAILED', 'HELD') THEN t.last_error END AS failure_reason,
           t.created_at, t.updated_at,
           k.decimals
      FROM public.transfers AS t
      LEFT JOIN public.chains AS sc ON sc.chain_id = t.source_chain_id
      LEFT JOIN public.chains AS tc ON tc.chain_id = t.target_chain_id
      LEFT JOIN public.tokens AS k ON k.chain_id = t.source_chain_id AND k.symbol = t.token
"""

# NOTE: a group is one (route, token, source chain), so one token and one decimals.
DAILY_VOLUME = """
    SELECT date_trunc('day', t.lock_block_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           t.route_id, t.token, t.source_chain_id, t.target_chain_id,
           count(*) AS transfers,
           count(*) FILTER (WHERE t.status IN ('RELEASED', 'FINALIZED')) AS released,
           count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
           sum(t.amount) AS volume,
           trim_scale(sum(t.amount)::numeric(120, 36) / power(10::numeric, max(k.decimals)))
               AS volume_tokens
      FROM public.transfers AS t
      LEFT JOIN public.tokens AS k ON k.chain_id = t.source_chain_id AND k.symbol = t.token
     WHERE t.status <> 'ORPHANED'
     GROUP BY 1, t.route_id, t.token, t.source_chain_id, t.target_chain_id
"""

TOKENS = """
    SELECT k.chain_id, c.name AS chain, k.symbol, k.token_address, k.bridge, k.decimals, k.updated_at
      FROM public.tokens AS k
      JOIN public.chains AS c ON c.chain_id = k.chain_id
"""


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("token_address", sa.String(), nullable=False),
        sa.Column("bridge", sa.String(), nullable=False),
        sa.Column("decimals", sa.SmallInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["chains.chain_id"]),
        sa.PrimaryKeyConstraint("chain_id", "symbol"),
    )
    op.execute(f"CREATE OR REPLACE VIEW analytics.transfers AS {TRANSFERS}")
    op.execute(f"CREATE OR REPLACE VIEW analytics.daily_volume AS {DAILY_VOLUME}")
    op.execute(f"CREATE VIEW analytics.tokens AS {TOKENS}")
    op.execute(f"GRANT SELECT ON analytics.tokens TO {ANALYST}")


def downgrade() -> None:
    views = _revision_0006().VIEWS
    op.execute("DROP VIEW analytics.tokens")
    # NOTE: the added decimals column cannot be dropped by CREATE OR REPLACE: recreate.
    op.execute("DROP VIEW analytics.transfers")
    op.execute(f"CREATE VIEW analytics.transfers AS {views['transfers']}")
    op.execute(f"GRANT SELECT ON analytics.transfers TO {ANALYST}")
    op.execute(f"CREATE OR REPLACE VIEW analytics.daily_volume AS {views['daily_volume']}")
    op.drop_table("tokens")


def _revision_0006() -> ModuleType:
    """The views as revision 0006 made them (migration files are not importable by name)."""
    path = Path(__file__).with_name("0006_analytics.py")
    spec = importlib.util.spec_from_file_location("ferry_migration_0006", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
