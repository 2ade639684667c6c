"""Code shared by the fedpath server and sites: model, data, privacy ledger, metrics."""

__version__ = "0.1.0"
