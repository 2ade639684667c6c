"""Tests of common/audit and the harness's audit: the bound, canaries through clipping, the report's audit section."""
