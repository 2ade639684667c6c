"""The empirical privacy audit: canaries, the one-run ε lower bound, membership-inference metrics.

* `canaries` — made-up canary records of the audited simulated site and the coordinator's scores;
* `bound`    — the one-run lower bound on ε (Steinke, Nasr & Jagielski 2023) and its ceiling;
* `mia`      — membership-inference metrics with bootstrap confidence intervals.

Used by the server's report and the simulation harness only. Never imported by the site's training
path or by `client/` at module level: a deployed site never holds canaries.
"""
