"""Shared fixtures: see pipeline_fixtures.py (a tiny real pipeline and a served export of it)."""
pytest_plugins = ["pipeline_fixtures"]
