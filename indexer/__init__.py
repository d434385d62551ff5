"""Ferry indexer: follows every configured chain and writes what its bridges emit.

The only writer of chain data (``chains``, ``blocks``, ``releases_seen`` and the
source-side columns of ``transfers``). Modules, from the chain inwards:

- ``decode``: pure, fast decoding of ``TokensLocked`` / ``TransferReleased`` logs;
- ``chain``: RPC endpoints (rotation on failure) and ``ChainReader``, which reads
  one range of blocks into a consistent ``ChainRange``;
- ``store`` / ``lifecycle``: the SQL, and which transfers move (PENDING ->
  CONFIRMED, -> RELEASED, RELEASED -> FINALIZED);
- ``follower``: one chain's loop, one database transaction per range;
- ``service``: ``ferry indexer``, one follower per chain until SIGTERM/SIGINT.
"""
