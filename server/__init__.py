"""The coordinating centre: Flower ServerApp, the strategies, central evaluation and the report.

Imports `common` (never `client`, `deploy` or `simulations`): it meets the sites only on the wire
(`common.wire`).
"""
