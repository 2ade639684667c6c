"""Tests of common/privacy and the site's privacy path: ledger, accounting, jobs, units, and the coordinator's attacks."""
