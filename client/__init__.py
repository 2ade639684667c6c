"""A hospital site: the Flower ClientApp that trains locally under DP and keeps its ledger.

Imports `common` (never `server`, `deploy` or `simulations`): it meets the server only on the wire
(`common.wire`). Not `common.audit` at module level: a deployed site never holds canaries.
"""
