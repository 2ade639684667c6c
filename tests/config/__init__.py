"""Tests of common/config: the run config, its rules, and that validating it loads nothing heavy."""
