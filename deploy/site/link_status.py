"""What the site launcher tells its operator about the SuperLink's answer, and the exit status it returns.

Flower's SuperNode says `Failed to activate SuperNode` both for an unregistered key and for a
restart within a minute of a crash, which need opposite actions; these messages say which it
is and what to do, and the exit statuses let systemd stop retrying the first (77) and retry
the second (75).
"""

from __future__ import annotations

import sys

from deploy import link_check
from deploy.site.plan import SitePlan


def link_status(plan: SitePlan, wait: float, checking: bool) -> int:
    """Ask the SuperLink about this site's key; 0 to go on, else the exit status, having said what to do.

    Before starting (`checking=False`) only an unregistered key (77) and a node that stays online
    (75) stop the start: a SuperLink that cannot be reached now is left to the SuperNode, which
    retries until it answers, as it always did.
    """
    if plan.link is None:
        return 0
    say = lambda text: print(f"  {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = link_check.check_link(plan.link.address, plan.link.root_certificates, plan.link.key, wait, say)
    except link_check.LinkConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.outcome == link_check.READY:
        released = f"; released after {result.waited:.0f} s (it was still online from a stop without SIGTERM)" \
            if result.waited >= 1 else ""
        say(f"SuperLink {plan.link.address}: key {plan.link.fingerprint} {result.detail}{released}")
        return 0
    if result.outcome == link_check.UNREGISTERED:
        print(unregistered_message(plan), file=sys.stderr)
        return link_check.EXIT_UNREGISTERED
    if result.outcome == link_check.STILL_ONLINE:
        print(still_online_message(plan, result.waited), file=sys.stderr)
        return link_check.EXIT_STILL_ONLINE
    if checking:
        print(f"error: {result.detail}", file=sys.stderr)
        return 69 if result.outcome == link_check.UNREACHABLE else 1  # sysexits EX_UNAVAILABLE
    retrying = " (it keeps retrying until the SuperLink answers)" if result.outcome == link_check.UNREACHABLE else ""
    say(f"{result.detail}; starting the SuperNode anyway{retrying}")
    return 0



def unregistered_message(plan: SitePlan) -> str:
    """Say that only the coordinator can fix this, and what each side checks."""
    assert plan.link is not None
    link, pub = plan.link, plan.link.key_path.with_suffix(".pub")
    shown = f"ssh-keygen -lf {pub}" if pub.exists() else f"ssh-keygen -y -f {link.key_path} | ssh-keygen -lf -"
    return (
        f"error: the SuperLink at {link.address} has no registration for this site's key {link.key_path} "
        f"(fingerprint {link.fingerprint}).\n"
        "  flower-supernode would only say `Failed to activate SuperNode` (Exit Code: 305), as it does for a restart "
        "too soon after a crash; but this is not that (which clears by itself within a minute): restarting will not "
        f"help, so the launcher exits {link_check.EXIT_UNREGISTERED}, which the systemd unit's "
        "RestartPreventExitStatus= stops retrying.\n"
        "  What to do:\n"
        f"  1. check that --private-key is the key whose .pub was sent to the coordinator: `{shown}` prints "
        f"{link.fingerprint};\n"
        f"  2. ask the coordinator to run `python -m deploy sites`, which lists every registered site with its key's "
        f"fingerprint; if {link.fingerprint} is not there, they register {pub.name} "
        f"(`python -m deploy register --public-key {pub.name} --site-id {plan.site_id}`), comparing the fingerprint "
        "with you over the phone;\n"
        "  3. then start the site again (systemctl restart fedpath-site)."
    )



def still_online_message(plan: SitePlan, waited: float) -> str:
    """A crash leftover clears within a minute; a node that stays online is another SuperNode with this key."""
    assert plan.link is not None
    release = link_check.RELEASE_SECONDS
    if waited >= release:
        cause = (f"That is not a crash leftover (Flower releases those within {release:g} s): another SuperNode with "
                 f"this key is running and sending heartbeats: here (`pgrep -af flower-supernode`) or on another "
                 f"machine with a copy of {plan.link.key_path.name}. Stop it first.")
    else:
        cause = (f"Most likely this site was stopped without SIGTERM (crash, kill -9, power loss) less than "
                 f"{release:g} s ago and the SuperLink has not yet missed its heartbeats: start it again in a minute "
                 f"(or give --activation-wait {link_check.DEFAULT_ACTIVATION_WAIT:g}). If it persists, another "
                 "SuperNode with this key is running (`pgrep -af flower-supernode`): stop it first.")
    return (
        f"error: the SuperLink at {plan.link.address} has this site's key {plan.link.fingerprint} registered, but "
        f"still counts its node online after {waited:.0f} s of waiting (flower-supernode would say `Failed to "
        f"activate SuperNode`). {cause}\n"
        f"  Exit {link_check.EXIT_STILL_ONLINE}: systemd restarts the site after RestartSec (Restart=on-failure)."
    )
