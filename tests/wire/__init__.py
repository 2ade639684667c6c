"""Tests of common/wire: the declared train instruction (the reply's schema is tested with the site and the report)."""
