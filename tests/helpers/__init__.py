"""Plain helper modules shared by the tests: never test modules themselves."""
