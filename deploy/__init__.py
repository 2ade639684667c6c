"""Running fedpath across real hospitals: certificates, keys, the SuperLink and per-site SuperNodes.

`python -m deploy --help` lists the commands; docs/DEPLOYMENT.md is the operator's guide.

* `deploy.pki`: a local test CA and SuperLink certificate; a site's SuperNode key pair.
* `deploy.flower`: the Flower executables, their environment, the `flwr` connection config.
* `deploy.superlink`: start the coordinator's SuperLink (TLS and SuperNode authentication on).
* `deploy.register`: register a site's public key with the SuperLink; list which node is which site.
* `deploy.site`: start a hospital's SuperNode after checking its node config, data, TLS and key.
  Its pieces: `deploy.site.node_config`, `deploy.site.preflight` (+ `deploy.site.ledger_check`),
  `deploy.site.plan`, `deploy.site.link_status`, `deploy.site.leftovers`.
* `deploy.link_check`: ask the SuperLink whether a site's key is registered and its node free.
* `deploy.run`: check a job's run config as fedpath reads it (naming each key the SuperLink would refuse
  without naming it), then `flwr run` it.
"""
