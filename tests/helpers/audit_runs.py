"""What the audit tests share: the simulated sites' pinned dp-seed and the failure odds every asserted outcome must beat."""

# The simulated sites' dp-seed (256 bits): their DP noise and sampling are the same on every machine.
AUDIT_DP_SEED = "9c4e1f7a2b83d05e6f1a9c3b7d2e8f40a1b6c9d3e7f2a5b8c1d4e9f3a6b2c7d0"
# The failure odds every audit outcome a test asserts must stay below, for any draw of noise, sampling and flips.
FAILURE_ODDS = 1e-6
