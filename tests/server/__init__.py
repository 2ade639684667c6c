"""Tests of server/: strategies, update screening, resuming, finished runs, pretraining."""
