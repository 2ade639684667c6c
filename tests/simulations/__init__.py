"""Tests of simulations/: real `flwr run` simulations, Ray, durability, the research harness."""
