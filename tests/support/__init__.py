"""Helpers shared by tests: GraphQL clients and a running-stack harness."""
