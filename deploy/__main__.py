"""`python -m deploy <command>`: the deployment tools (docs/DEPLOYMENT.md)."""

from __future__ import annotations

import sys

COMMANDS = {
    "test-pki": ("deploy.pki", "main_test_pki", "make a test CA and SuperLink certificate (not for production)"),
    "site-keys": ("deploy.pki", "main_site_keys", "make a site's SuperNode authentication key pair"),
    "connection": ("deploy.register", "main_connection", "write the flwr CLI's connection to the SuperLink"),
    "register": ("deploy.register", "main_register", "register a site's public key with the SuperLink"),
    "sites": ("deploy.register", "main_sites", "which node is which site: id, registered name, status, key fingerprint"),
    "superlink": ("deploy.superlink", "main", "start the SuperLink (TLS + SuperNode authentication)"),
    "site": ("deploy.site.command", "main", "check a site's configuration and start its SuperNode"),
    "run": ("deploy.run", "main", "check a job's run config (naming any key the SuperLink would refuse), flwr run it"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m deploy <command> [--help]\n\ncommands:", file=sys.stderr)
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<11} {text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, function, _ = COMMANDS[argv[0]]
    import importlib

    return int(getattr(importlib.import_module(module_name), function)(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
