"""Tests of common/data: formats, splits, messy exports, stain handling, test-image copies."""
