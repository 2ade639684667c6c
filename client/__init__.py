"""A hospital site: the Flower ClientApp that trains locally under DP and keeps its ledger."""
