"""Tests of client/: one round at a site, its refusals, its unit of privacy and its overrides."""
