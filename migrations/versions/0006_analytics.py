"""Analytics: stable views over the transfer tables, and the read-only analyst role.

Analysts and the Grafana PostgreSQL datasource read the ``analytics`` schema only.
Its views are the contract: internal tables may change, the views keep their
columns. The views run with their owner's rights (the migrating role), so the
analyst needs no privilege on any base table, and has none: no
``release_attempts`` (signed raw transactions), no ``operator_requests``, no API
keys, nothing outside ``analytics``.

``ferry_analyst`` is a NOLOGIN group role (roles are cluster-wide, so it is
created idempotently and may already exist from another database). A
deployment logs in through it with ``scripts/analyst_login.py`` (compose does)
or ``CREATE ROLE grafana LOGIN PASSWORD '…' IN ROLE ferry_analyst``.

Amounts are in the token's base units (``amount``); ``amount_tokens`` divides by
10^18, the decimals of every token Ferry deploys (the chains file's ``decimals``
are not stored in the database yet).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ANALYST = "ferry_analyst"

VIEWS = {
    "transfers": """
        SELECT t.id, t.route_id, t.token,
               t.source_chain_id, sc.name AS source_chain,
               t.target_chain_id, tc.name AS target_chain,
               t.sender, t.recipient, t.amount, t.amount / 1e18 AS amount_tokens,
               t.status, t.confirmations_required,
               t.lock_tx_hash, t.lock_block_number, t.lock_block_time AS locked_at,
               t.release_tx_hash, t.release_block_number, t.release_block_time AS released_at,
               EXTRACT(EPOCH FROM t.release_block_time - t.lock_block_time)::double precision
                   AS seconds_to_release,
               t.attempts,
               CASE WHEN t.status IN ('FAILED', 'HELD') THEN t.last_error END AS failure_reason,
               t.created_at, t.updated_at
          FROM public.transfers AS t
          LEFT JOIN public.chains AS sc ON sc.chain_id = t.source_chain_id
          LEFT JOIN public.chains AS tc ON tc.chain_id = t.target_chain_id
    """,
    "daily_volume": """
        SELECT date_trunc('day', t.lock_block_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
               t.route_id, t.token, t.source_chain_id, t.target_chain_id,
               count(*) AS transfers,
               count(*) FILTER (WHERE t.status IN ('RELEASED', 'FINALIZED')) AS released,
               count(*) FILTER (WHERE t.status = 'FAILED') AS failed,
               sum(t.amount) AS volume,
               sum(t.amount) / 1e18 AS volume_tokens
          FROM public.transfers AS t
         WHERE t.status <> 'ORPHANED'
         GROUP BY 1, t.route_id, t.token, t.source_chain_id, t.target_chain_id
    """,
    "status_history": """
        SELECT h.id, h.transfer_id, t.route_id, t.token, t.source_chain_id, t.target_chain_id,
               h.from_status, h.to_status, h.reason, h.tx_hash, h.block_number, h.created_at AS at
          FROM public.transfer_status_history AS h
          JOIN public.transfers AS t ON t.id = h.transfer_id
    """,
    "routes": """
        SELECT r.route_id, r.token, r.source_chain_id, r.target_chain_id, r.paused, r.updated_at
          FROM public.routes AS r
    """,
    "chains": """
        SELECT c.chain_id, c.name, c.indexed_block, c.head_block,
               c.head_block - c.indexed_block AS lag_blocks, c.head_seen_at, c.updated_at
          FROM public.chains AS c
    """,
}

# NOTE: two databases migrating at once can both see the role missing; the loser's
# CREATE raises duplicate_object (or unique_violation on the catalog), which is success.
CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ANALYST}') THEN
        CREATE ROLE {ANALYST} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$
"""

# NOTE: the role may own objects or hold grants in other databases of the cluster;
# then it stays, and only this database's grants go.
DROP_ROLE = f"""
DO $$
BEGIN
    DROP ROLE IF EXISTS {ANALYST};
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;
END
$$
"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA analytics")
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW analytics.{name} AS {query}")
    op.execute(CREATE_ROLE)
    op.execute(f"GRANT CONNECT ON DATABASE {_current_database()} TO {ANALYST}")
    op.execute(f"GRANT USAGE ON SCHEMA analytics TO {ANALYST}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {ANALYST}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA analytics FROM {ANALYST}")
    op.execute(f"REVOKE ALL ON SCHEMA analytics FROM {ANALYST}")
    op.execute(f"REVOKE CONNECT ON DATABASE {_current_database()} FROM {ANALYST}")
    op.execute("DROP SCHEMA analytics CASCADE")
    op.execute(DROP_ROLE)


def _current_database() -> str:
    name = op.get_bind().exec_driver_sql("SELECT quote_ident(current_database())").scalar_one()
    return str(name)
