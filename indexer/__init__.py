"""Ferry indexer."""
