"""`python -m simulations.harness.bench NAME [--quick]`."""

import sys

from simulations.harness.bench import main

sys.exit(main())
