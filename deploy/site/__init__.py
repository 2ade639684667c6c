"""`python -m deploy site`: check a hospital's SuperNode configuration, then start it.

* `command`     — the command line (`main`);
* `node_config` — the node config file the site's daemon reads;
* `preflight`   — data, classes, unit of privacy and state-dir checked before anything starts;
* `ledger_check` — the privacy ledger verified, and changed only by a real start (never by `--check`);
* `plan`        — TLS, the site key and the `flower-supernode` command;
* `link_status` — what the SuperLink answered, as an exit status;
* `leftovers`   — Flower processes of this site's previous daemon, ended by PID before it starts again.
"""
