"""Ferry relayer."""
