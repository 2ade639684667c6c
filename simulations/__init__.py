"""The local launcher (`simulations.run`) and, in `simulations.harness`, the research harness."""
