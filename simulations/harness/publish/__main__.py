"""`python -m simulations.harness.publish`: rewrite docs/BENCHMARKS.md."""

from simulations.harness.publish import main

raise SystemExit(main())
