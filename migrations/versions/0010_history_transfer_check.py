"""History rows checked in bulk, not by a foreign key per row (faster backfill).

The foreign key ``transfer_status_history.transfer_id -> transfers.id`` cost one
check per history row: a lookup in ``transfers_pkey`` and a ``FOR KEY SHARE`` lock
on the transfer's row (a write to its heap page and a WAL record, even for a row
the same transaction has just inserted). A backfill writes one history row per
lock: measured on 20,000 rows, the check took 348 ms of an 850 ms insert (40%);
over the 100,000-lock benchmark about 0.6 s of 4 s of PostgreSQL CPU.

What the key promised is kept another way:

- a history row always names an existing transfer: ``ferry.transitions`` is the
  one writer of history, and every one of its inserts already joins the rows it
  wrote to ``transfers`` (for the metrics) in the same transaction; it now raises
  (and the transaction rolls back) when a row found no transfer;
- a transfer with history is never deleted or renamed: the trigger below refuses
  it, as the key's ``NO ACTION`` did (the application never deletes transfers:
  a reorg leaves them ORPHANED). ``TRUNCATE`` bypasses row triggers: only tests
  truncate, and they empty every table at once.

Downgrade drops the trigger and adds the key back (validating every row).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KEY = "transfer_status_history_transfer_id_fkey"


def upgrade() -> None:
    op.drop_constraint(_KEY, "transfer_status_history", type_="foreignkey")
    op.execute(
        """
        CREATE FUNCTION transfers_keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
                RETURN NEW;
            END IF;
            IF EXISTS (SELECT 1 FROM transfer_status_history WHERE transfer_id = OLD.id) THEN
                RAISE EXCEPTION 'transfer % has status history: it cannot be deleted or renamed', OLD.id
                      USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$
        """
    )
    # NOTE: row-level, but only on DELETE and on UPDATE OF id, which the application never runs:
    # nothing on the insert path
    op.execute(
        """
        CREATE TRIGGER transfers_keep_history BEFORE DELETE OR UPDATE OF id ON transfers
        FOR EACH ROW EXECUTE FUNCTION transfers_keep_history()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER transfers_keep_history ON transfers")
    op.execute("DROP FUNCTION transfers_keep_history()")
    op.create_foreign_key(_KEY, "transfer_status_history", "transfers", ["transfer_id"], ["id"])
