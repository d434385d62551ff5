"""Typed configuration for every Ferry process.

Two layers, both validated at start-up so a bad value stops the process with a
sentence that names the field and what was expected:

- ``Settings``: process settings from environment variables (``FERRY_*``; the
  database and Redis URLs also accept the conventional ``DATABASE_URL``,
  ``DATABASE_READ_URL`` and ``REDIS_URL``). Any variable can instead be given
  as ``<NAME>_FILE`` pointing at a file that holds the value (Docker/Kubernetes
  secrets). Secret values are ``SecretStr`` so they never print.
- ``ChainsConfig``: the chains file (YAML or TOML) listing chains, their RPC
  endpoints, confirmations and bridge deployments per token, and the routes
  between them. ``${VAR}`` and ``${VAR:-default}`` are substituted from the
  environment before parsing, so RPC API keys need not live in the file.

Invariant: nothing in this module logs or formats a secret.
"""

from __future__ import annotations

import os
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from eth_utils.address import is_address, is_checksum_address, to_checksum_address
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A configuration problem a user can fix; the message says what and where."""


def _checksum(value: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"expected a 0x-prefixed 20-byte hex address, got {value!r}")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise ValueError(f"{value} has mixed case but a wrong EIP-55 checksum (a typo?)")
    return to_checksum_address(value)


Address = Annotated[str, AfterValidator(_checksum)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BridgeDeployment(_Strict):
    """One FerryBridge contract: the bridge for one token on one chain."""

    bridge: Address
    token: Address
    decimals: int = Field(default=18, ge=0, le=36)
    start_block: int = Field(default=0, ge=0, description="block the bridge was deployed in")


class ChainConfig(_Strict):
    id: int = Field(gt=0, description="EVM chain id")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    rpc_urls: list[str] = Field(description="http(s):// and/or ws(s):// endpoints, tried in order")
    confirmations: int = Field(default=12, ge=1, le=10_000)
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    log_range: int = Field(default=2_000, ge=1, le=1_000_000, description="blocks per eth_getLogs call")
    finality: Literal["confirmations", "finalized"] = Field(
        default="confirmations", description="confirm locks by `confirmations` or by the node's finalized tag"
    )
    reorg_policy: Literal["halt", "rollback"] = Field(
        default="halt", description="what a reorg deeper than `confirmations` does (docs/indexer.md)"
    )
    bridges: dict[str, BridgeDeployment] = Field(description="token symbol -> bridge deployment")

    # NOTE: a field validator, not a model one: its errors are located at rpc_urls, which the
    # error message never echoes (a model error would echo the whole chain, API keys included).
    @field_validator("rpc_urls")
    @classmethod
    def _urls_are_rpc(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        if not urls:
            raise ValueError(
                f"chain {info.data.get('name', '?')} lists no rpc_urls: give at least one http(s):// "
                "or ws(s):// endpoint"
            )
        for url in urls:
            if not re.match(r"^(https?|wss?)://", url):
                raise ValueError("rpc_urls entries must start with http://, https://, ws:// or wss://")
        return urls


class RouteConfig(_Strict):
    token: str
    source: int = Field(description="source chain id")
    target: int = Field(description="target chain id")
    # Relayer limits (token base units); a transfer over one is HELD for an operator.
    max_amount: int | None = Field(default=None, gt=0, description="largest amount one transfer may release")
    daily_cap: int | None = Field(default=None, gt=0, description="most volume per UTC day of lock time")
    sender_hourly_limit: int = Field(default=10, ge=1, description="transfers per sender per hour")
    adapter: Literal["ferry", "legacy"] = Field(default="ferry", description="target bridge interface")
    legacy_signer: Address | None = Field(default=None, description="the legacy bridge's one signer")

    @property
    def route_id(self) -> str:
        return route_id(self.token, self.source, self.target)


def route_id(token: str, source_chain_id: int, target_chain_id: int) -> str:
    """The stable name of a route, used in the database, metrics and GraphQL."""
    return f"{token}:{source_chain_id}-{target_chain_id}"


class ChainsConfig(_Strict):
    chains: list[ChainConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ChainsConfig:
        ids = [c.id for c in self.chains]
        if len(set(ids)) != len(ids):
            raise ValueError(f"chain ids must be unique, got {ids}")
        by_id = {c.id: c for c in self.chains}
        for index, route in enumerate(self.routes):
            where = f"routes[{index}]"
            if route.source == route.target:
                raise ValueError(f"{where}: source and target must differ")
            for side in ("source", "target"):
                chain = by_id.get(getattr(route, side))
                if chain is None:
                    raise ValueError(f"{where}.{side}: no chain with id {getattr(route, side)} in chains")
                if route.token not in chain.bridges:
                    raise ValueError(
                        f"{where}: chain {chain.name} has no bridge for token {route.token!r} "
                        f"(it has {sorted(chain.bridges)})"
                    )
        return self

    @cached_property
    def chain_by_id(self) -> dict[int, ChainConfig]:
        return {c.id: c for c in self.chains}

    def route(self, token: str, source: int, target: int) -> RouteConfig | None:
        for candidate in self.routes:
            if (candidate.token, candidate.source, candidate.target) == (token, source, target):
                return candidate
        return None

    def bridge_owner(self, chain_id: int, bridge: str) -> tuple[str, BridgeDeployment] | None:
        """The (token symbol, deployment) of a bridge address on a chain, if configured."""
        chain = self.chain_by_id.get(chain_id)
        if chain is None:
            return None
        for token, deployment in chain.bridges.items():
            if deployment.bridge.lower() == bridge.lower():
                return token, deployment
        return None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an unset variable without default is an error."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is referenced in the chains file but not set")

    return _ENV_REF.sub(replace, text)


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        # NOTE: never echo the input for secret-looking fields; echo it otherwise, it helps.
        shown = "" if _looks_secret(loc) else f" (got {item.get('input')!r})"
        if item["type"] in {"missing", "extra_forbidden"}:
            shown = ""
        lines.append(f"  {loc}: {message}{shown}")
    return "\n".join(lines)


def _looks_secret(location: str) -> bool:
    return any(word in location.lower() for word in ("key", "password", "secret", "url", "token"))


def load_chains(path: Path) -> ChainsConfig:
    """Read and validate the chains file; raise ConfigError with a readable message."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read chains file {path}: {exc.strerror}") from None
    text = substitute_env(text)
    try:
        raw: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"chains file {path} is not valid {path.suffix.lstrip('.')}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"chains file {path} must be a mapping with 'chains' and 'routes'")
    try:
        return ChainsConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(path), exc)) from None


def _file_values(prefixes: tuple[str, ...] = ("FERRY_", "DATABASE_", "REDIS_")) -> dict[str, str]:
    """Values of ``NAME_FILE`` variables, keyed by NAME (read from the named file)."""
    values: dict[str, str] = {}
    for name, path in os.environ.items():
        if name.endswith("_FILE") and name.startswith(prefixes) and name != "FERRY_CHAINS_FILE":
            try:
                values[name.removesuffix("_FILE")] = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{name} names {path}, which cannot be read: {exc.strerror}") from None
    return values


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Process settings from the environment. Field names map to ``FERRY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/ferry"),
        validation_alias=_alias("FERRY_DATABASE_URL", "DATABASE_URL"),
    )
    database_read_url: SecretStr | None = Field(
        default=None, validation_alias=_alias("FERRY_DATABASE_READ_URL", "DATABASE_READ_URL")
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=_alias("FERRY_REDIS_URL", "REDIS_URL"),
    )
    chains_file: Path = Path("chains.yaml")
    signer_keys: SecretStr | None = Field(
        default=None, description="comma-separated hex private keys of release signers (dev and tests)"
    )
    submitter_key: SecretStr | None = Field(
        default=None, description="hex private key of the account that pays gas for releases"
    )
    queue_name: str = Field(default="ferry:relay", min_length=1)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    graphql_host: str = "127.0.0.1"
    graphql_port: int = Field(default=8080, ge=0, le=65535)
    health_port: int = Field(default=8081, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    max_page_size: int = Field(default=100, ge=1, le=10_000)
    sweep_interval: float = Field(default=5.0, gt=0, le=3600)
    # Indexer (see docs/indexer.md): its own health port (the gateway's is health_port), watchdog.
    indexer_health_port: int = Field(default=8082, ge=0, le=65535, description="0 disables")
    indexer_watchdog: float = Field(default=120.0, gt=0, description="seconds without progress => restart")
    # Gateway (see docs/graphql.md): admin auth, protection limits, CORS, developer tools.
    gateway_jwt_secret: SecretStr | None = Field(default=None, description="HS256 key for admin JWTs")
    gateway_jwt_public_key: str | None = Field(default=None, description="RS256 PEM public key (admin JWTs)")
    gateway_jwt_max_lifetime: int = Field(default=900, ge=1, description="longest accepted JWT life, seconds")
    gateway_max_depth: int = Field(default=10, ge=1, le=100)
    gateway_max_cost: int = Field(default=10_000, ge=1)
    gateway_max_aliases: int = Field(default=15, ge=1)
    gateway_max_batch: int = Field(default=10, ge=1, description="operations per HTTP batch request")
    gateway_rate_limit: float = Field(default=50.0, gt=0, description="requests/s per client (burst: 2 s)")
    gateway_max_request_bytes: int = Field(default=65_536, ge=1_024)
    gateway_request_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds")
    gateway_introspection: bool = True
    gateway_graphiql: bool = True
    gateway_cors_origins: str = Field(default="*", description="comma-separated origins, or *")
    gateway_subscriber_queue: int = Field(default=256, ge=1, le=100_000)
    gateway_keepalive_interval: float = Field(
        default=15.0, gt=0, le=3600, description="seconds between subscription keep-alive messages"
    )
    gateway_database_roles: bool = Field(
        default=False, description="read as ferry_gateway_reader, write as ferry_gateway_admin (0005)"
    )
    liquidity_wait: float = Field(
        default=3600.0, ge=0, description="seconds a release may wait for target liquidity before FAILED"
    )
    batch_size: int = Field(default=50, ge=1, le=500, description="most transfers in one releaseBatch")
    batch_linger: float = Field(default=0.2, ge=0, le=60, description="seconds a lone transfer may wait")
    replace_after: float = Field(default=30.0, gt=0, description="seconds before re-pricing a stuck release")
    fee_bump_percent: float = Field(default=12.5, ge=12.5, le=1000, description="fee rise per replacement")
    max_fee_per_gas: int = Field(default=500 * 10**9, gt=0, description="cap on fee per gas (wei)")
    max_in_flight: int = Field(default=64, ge=1, description="unmined release transactions per account")
    min_submitter_balance: int = Field(default=10**17, ge=0, description="alert below this gas balance (wei)")
    signer_keystores: str | None = Field(default=None, description="comma-separated signer keystore files")
    submitter_keystore: Path | None = Field(default=None, description="keystore of the gas-paying account")
    keystore_password: SecretStr | None = Field(default=None, description="passphrase of the keystores")
    owner_key: SecretStr | None = Field(default=None, description="bridge owner key for `ferry keys rotate`")

    @property
    def read_url(self) -> str:
        url = self.database_read_url or self.database_url
        return url.get_secret_value()

    def signer_private_keys(self) -> list[bytes]:
        if self.signer_keys is None:
            return []
        return [
            _hex_key(part, "FERRY_SIGNER_KEYS")
            for part in self.signer_keys.get_secret_value().split(",")
            if part
        ]

    def submitter_private_key(self) -> bytes | None:
        if self.submitter_key is None:
            return None
        return _hex_key(self.submitter_key.get_secret_value(), "FERRY_SUBMITTER_KEY")

    def chains(self) -> ChainsConfig:
        return load_chains(self.chains_file)


def _hex_key(text: str, variable: str) -> bytes:
    cleaned = text.strip().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", cleaned):
        raise ConfigError(f"{variable} must hold 32-byte hex private keys (64 hex digits, optional 0x)")
    return bytes.fromhex(cleaned)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (plus ``*_FILE`` secrets); ConfigError on bad values."""
    file_values = _file_values()
    try:
        init: dict[str, Any] = {}
        for name, value in file_values.items():
            field = name.removeprefix("FERRY_").lower()
            if field in Settings.model_fields:
                init[field] = value
        init.update(overrides)
        return Settings(**init)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error("environment (FERRY_* variables)", exc)) from None
