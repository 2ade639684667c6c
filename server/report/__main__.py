"""`python -m server.report RUN_DIR`: rebuild a run's report."""

from server.report.writer import main

raise SystemExit(main())
