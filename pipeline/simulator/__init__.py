"""A DXLink server with a deterministic market, for tests and for running without an account."""
