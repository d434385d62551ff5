"""``schema.graphql`` is the API contract: it must match the Strawberry schema exactly."""

from __future__ import annotations

from pathlib import Path

from graphql import build_schema, parse, validate

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


def _readme_graphql_examples() -> list[str]:
    readme = (SCHEMA_FILE.parent / "README.md").read_text()
    section = readme.split("\n## GraphQL\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```graphql\n")[1:]]


def test_every_readme_graphql_example_is_valid_against_the_schema() -> None:
    examples = _readme_graphql_examples()
    assert len(examples) >= 8  # queries, subscriptions and admin operations
    built = build_schema(SCHEMA_FILE.read_text())
    for example in examples:
        errors = validate(built, parse(example))
        assert not errors, f"README example does not match schema.graphql: {errors}\n{example}"
