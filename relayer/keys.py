"""Signing keys: encrypted keystore files, their passphrase from the environment, never plain config.

Production keys come from Web3 Secret Storage JSON files (what ``geth account
new``, ``cast wallet new`` and ``eth_account.Account.encrypt`` write):

- ``FERRY_SIGNER_KEYSTORES``: comma-separated keystore paths of release signers;
- ``FERRY_SUBMITTER_KEYSTORE``: the keystore of the account that pays gas;
- ``FERRY_KEYSTORE_PASSWORD`` (or ``FERRY_KEYSTORE_PASSWORD_FILE``, a mounted
  secret): the passphrase that decrypts them.

``FERRY_SIGNER_KEYS`` and ``FERRY_SUBMITTER_KEY`` (plain hex) remain for local
development only (``ferry dev`` and the tests use anvil's public keys); a
relayer started with them says so in its log.

Every key and passphrase is registered with the log redaction filter as soon as
it is read, and no error message ever contains one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from ferry import logs
from ferry.settings import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayKeys:
    """Release signer keys and the submitting account's key (never printed)."""

    signer_keys: list[bytes] = field(repr=False)
    submitter_key: bytes = field(repr=False)


def load_keystore(path: Path, passphrase: str) -> bytes:
    """Decrypt one keystore file; ConfigError (without secrets) when that is impossible."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read keystore {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"keystore {path} is not JSON (expected a Web3 Secret Storage file)") from None
    try:
        key = bytes(Account.decrypt(document, passphrase))
    except ValueError:
        raise ConfigError(
            f"keystore {path} cannot be decrypted: check FERRY_KEYSTORE_PASSWORD (or its _FILE)"
        ) from None
    except (KeyError, TypeError):
        raise ConfigError(f"keystore {path} is not a Web3 Secret Storage file") from None
    _register(key)
    return key


def _register(key: bytes) -> None:
    logs.register_secret(key.hex())
    logs.register_secret("0x" + key.hex())


def _passphrase(settings: Settings) -> str:
    if settings.keystore_password is None:
        raise ConfigError(
            "keystores are configured but FERRY_KEYSTORE_PASSWORD "
            "(or FERRY_KEYSTORE_PASSWORD_FILE) is not set"
        )
    value = settings.keystore_password.get_secret_value()
    logs.register_secret(value)
    return value


def relay_keys(settings: Settings) -> RelayKeys:
    """The keys the relayer signs with; ConfigError when the submitting account has none."""
    signer_keys: list[bytes] = []
    if settings.signer_keystores:
        passphrase = _passphrase(settings)
        paths = [Path(p.strip()) for p in settings.signer_keystores.split(",") if p.strip()]
        signer_keys += [load_keystore(path, passphrase) for path in paths]
    plain = settings.signer_private_keys()
    if plain:
        log.warning("signer keys from FERRY_SIGNER_KEYS (plain hex): for local development only")
    signer_keys += plain
    if settings.submitter_keystore is not None:
        submitter_key = load_keystore(settings.submitter_keystore, _passphrase(settings))
    else:
        plain_submitter = settings.submitter_private_key()
        if plain_submitter is None:
            raise ConfigError(
                "the relayer needs FERRY_SUBMITTER_KEYSTORE (a keystore file, with FERRY_KEYSTORE_PASSWORD) "
                "or, for development, FERRY_SUBMITTER_KEY: the account that pays gas for releases"
            )
        log.warning("submitter key from FERRY_SUBMITTER_KEY (plain hex): for local development only")
        submitter_key = plain_submitter
    for key in [*signer_keys, submitter_key]:
        _register(key)
    return RelayKeys(signer_keys, submitter_key)
