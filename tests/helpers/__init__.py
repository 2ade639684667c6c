"""Helpers shared by several test modules (no tests here).

Test modules import shared helpers from this package or from tests/conftest.py, never from
another test module: a test module's private helpers can then change without breaking others.
"""
