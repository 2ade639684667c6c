"""Tests of common/model: the DP-compatible ResNet, weight sources, BatchNorm statistics."""
