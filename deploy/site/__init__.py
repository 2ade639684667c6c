"""`python -m deploy site`: check a hospital's SuperNode configuration, then start it.

* `command`     — the command line (`main`);
* `node_config` — the node config file the site's daemon reads;
* `preflight`   — data, state-dir and ledger checked before anything starts;
* `plan`        — TLS, the site key and the `flower-supernode` command;
* `link_status` — what the SuperLink answered, as an exit status.
"""
