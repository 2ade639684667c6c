"""The coordinating centre: Flower ServerApp, FedAvg, central evaluation and the report."""
