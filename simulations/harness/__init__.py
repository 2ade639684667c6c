"""The research harness: experiments, benchmarks and the BENCHMARKS.md publisher.

Kept apart from the shipped launcher (`simulations.run`) because nothing a deployment runs
imports it: it drives fedpath on real data to produce the numbers in docs/BENCHMARKS.md.
"""
