"""Configuration errors stop a process with a message naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.settings import ConfigError, load_chains, load_settings

BRIDGE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
TOKEN = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"

GOOD = f"""
chains:
  - id: 1
    name: one
    rpc_urls: ["http://127.0.0.1:8545"]
    confirmations: 3
    bridges: {{FTT: {{bridge: "{BRIDGE.lower()}", token: "{TOKEN}"}}}}
  - id: 2
    name: two
    rpc_urls: ["${{TWO_RPC:-http://127.0.0.1:8546}}"]
    bridges: {{FTT: {{bridge: "{BRIDGE}", token: "{TOKEN}"}}}}
routes:
  - {{token: FTT, source: 1, target: 2}}
"""


def write(tmp_path: Path, text: str, name: str = "chains.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads_with_checksummed_addresses_and_defaults(tmp_path: Path) -> None:
    config = load_chains(write(tmp_path, GOOD))
    assert config.chains[0].bridges["FTT"].bridge == BRIDGE
    assert config.chains[1].rpc_urls == ["http://127.0.0.1:8546"]
    assert config.chains[1].confirmations == 12
    assert config.routes[0].route_id == "FTT:1-2"


def test_environment_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWO_RPC", "https://node.invalid/v3/abc")
    assert load_chains(write(tmp_path, GOOD)).chains[1].rpc_urls == ["https://node.invalid/v3/abc"]


def test_unset_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        load_chains(write(tmp_path, GOOD.replace("${TWO_RPC:-http://127.0.0.1:8546}", "${NOPE_NOT_SET}")))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("confirmations: 3", "confirmations: 0"), r"chains\.0\.confirmations: .*greater than or equal to 1"),
        ((BRIDGE.lower(), "0x1234"), r"chains\.0\.bridges\.FTT\.bridge: expected a 0x-prefixed 20-byte hex"),
        (("target: 2", "target: 3"), r"routes\[0\]\.target: no chain with id 3"),
        ((TOKEN, TOKEN.replace("e7f", "E7f")), r"wrong EIP-55 checksum"),
        (("token: FTT, source", "token: USDC, source"), r"chain one has no bridge for token 'USDC'"),
        (
            ("    name: two", "    name: two\n    colour: blue"),
            r"chains\.1\.colour: Extra inputs are not permitted",
        ),
        (('"http://127.0.0.1:8545"', '"ftp://x"'), r"rpc_urls entries must start with http"),
        (
            ('["http://127.0.0.1:8545"]', "[]"),
            r"chains\.0\.rpc_urls: .*chain one lists no rpc_urls: give at least one",
        ),
        (("id: 2", "id: 1"), r"chain ids must be unique"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_chains(write(tmp_path, GOOD.replace(*change)))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read chains file"):
        load_chains(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_chains(write(tmp_path, "chains: [unclosed"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_chains(write(tmp_path, "- just a list"))


def test_toml_chains_file(tmp_path: Path) -> None:
    text = f"""
[[chains]]
id = 5
name = "five"
rpc_urls = ["ws://127.0.0.1:8545"]
bridges = {{ FTT = {{ bridge = "{BRIDGE}", token = "{TOKEN}" }} }}
"""
    assert load_chains(write(tmp_path, text, "chains.toml")).chains[0].id == 5


def test_secret_from_file_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://ferry:hunter22@db/ferry\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://ferry:hunter22@db/ferry"
    assert "hunter22" not in repr(settings)
    assert "hunter22" not in str(settings.model_dump())


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_GRAPHQL_PORT", "eighty")
    with pytest.raises(ConfigError, match="graphql_port"):
        load_settings()


def test_bad_signer_key_message_does_not_echo_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_SIGNER_KEYS", "0xnotakey-secretish")
    with pytest.raises(ConfigError, match="FERRY_SIGNER_KEYS must hold 32-byte hex") as error:
        load_settings().signer_private_keys()
    assert "secretish" not in str(error.value)
