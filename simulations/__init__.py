"""Launchers, experiments and benchmarks that drive fedpath through Flower."""
