"""``schema.graphql`` is the API contract: it must match the Strawberry schema exactly."""

from __future__ import annotations

from pathlib import Path

from ferry.domain import TransferStatus
from gateway.schema import sdl

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"
REGENERATE = ".venv/bin/python -m gateway.schema > schema.graphql"


def test_schema_graphql_matches_the_strawberry_schema() -> None:
    assert SCHEMA_FILE.exists(), f"schema.graphql is missing: create it with `{REGENERATE}`"
    committed = SCHEMA_FILE.read_text()
    assert committed == sdl(), (
        f"schema.graphql is stale: the Strawberry schema in gateway/ changed. Regenerate it with "
        f"`{REGENERATE}`, review the diff (it is the public API) and commit it."
    )


def test_every_transfer_status_is_in_the_schema() -> None:
    enum_block = sdl().split("enum TransferStatus {", 1)[1].split("}", 1)[0]
    assert enum_block.split() == [status.value for status in TransferStatus]
