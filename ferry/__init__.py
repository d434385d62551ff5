"""Ferry's shared core: settings, tables, domain types, database, RPC, logging, metrics, CLI.

Never imports ``indexer``, ``relayer`` or ``gateway`` (the CLI loads them lazily).
"""
