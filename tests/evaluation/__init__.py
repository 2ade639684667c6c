"""Tests of common/evaluation: metrics per patch and per patient."""
