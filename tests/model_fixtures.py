"""Fixtures that provide small trained models to the tests (filled in with the deployment tests)."""
