"""The README's GraphQL examples are valid against the real schema (docs true to code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from graphql import parse, validate

from gateway.schema import schema

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def graphql_examples() -> list[tuple[str, str]]:
    examples = []
    for path in DOCS:
        for index, block in enumerate(re.findall(r"```graphql\n(.*?)```", path.read_text(), re.S)):
            examples.append((f"{path.name}#{index + 1}", block))
    return examples


EXAMPLES = graphql_examples()


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize(("where", "document"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_is_valid_against_the_schema(where: str, document: str) -> None:
    errors = validate(schema._schema, parse(document))
    assert not errors, f"{where}: {[e.message for e in errors]}"


def test_every_setting_is_in_the_configuration_reference() -> None:
    from ferry.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"FERRY_{name.upper()}" not in readme]
    assert not missing, f"README's configuration table lacks: {missing}"
