"""Tests of common/training: per-record (patient and patch) DP-SGD, exact norms, the fast paths."""
