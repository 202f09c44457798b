"""The test suite's shared helpers (importable as ``testkit``: pytest puts tests/ on sys.path)."""
