"""Where a site's DP randomness comes from: a 256-bit secret only the site holds, expanded by ChaCha20.

DP-SGD is private only while the noise (and the Poisson sampling) is unpredictable to the party
that sees the updates. fedpath protects against a *malicious* coordinator, which knows or chooses
the run config (its `seed`), the run id, the round number and the site ids: none of these may be
the source of DP randomness, and the source must not be guessable by brute force. So every secret
draw of local training (DP noise, Poisson sampling of patches and patients, the per-patient patch
subsample, stain and dihedral augmentation, non-private shuffling) comes from a `SecretStream`: the
AES-256-CTR keystream (the `cryptography` package, i.e. OpenSSL) under a 256-bit key, turned into
uniforms and Gaussians here. Never from torch's or NumPy's generators (a Mersenne Twister keeps
32 bits of a seed: a seed could be found by 2^32 guesses and the noise subtracted).

Two modes, both decided at the site:

* ``secure`` (the default everywhere): every round draws a fresh 256-bit key from the operating
  system's CSPRNG (`secrets`). Nobody, the site included, can reproduce the round.
* ``site-seed``: the site's operator sets `dp-seed` in its own node config (simulation: the
  launcher may set it for its simulated sites, for reproducible experiments): at least 128 bits
  of key material as hexadecimal (`python -c "import secrets; print(secrets.token_hex(32))"`).
  The round key is HMAC-SHA256 of that secret over the site's id and its own ledger position, so
  a repeated request gets fresh noise while the same site state reproduces the same round.
  Private only as long as the seed stays secret; the report marks such sites as reproducible.

A round key is never logged, stored or sent.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.privacy.dp_seed import dp_seed_problem

SECURE = "secure"
SITE_SEED = "site-seed"
MODES = (SECURE, SITE_SEED)

KEY_BYTES = 32  # a round key: 256 bits


class SecretStream:
    """Uniform and Gaussian draws from the AES-256-CTR keystream of one 256-bit key.

    AES in counter mode is a standard CSPRNG (the core of NIST's CTR_DRBG); OpenSSL runs it with
    the CPU's AES instructions, three times faster than ChaCha20 here, which matters for the noise
    of `full` (11 M values per step). Each draw consumes fresh keystream, so draws never repeat
    within a stream; streams with different keys are independent.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secret stream needs a {KEY_BYTES}-byte key, got {len(key)} bytes")
        self._cipher = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()  # counter from 0: one stream per key
        self._zeros = bytearray()

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return "SecretStream(<secret>)"

    def _keystream(self, nbytes: int) -> np.ndarray:
        if len(self._zeros) < nbytes:
            self._zeros = bytearray(nbytes)
        out = bytearray(nbytes + 16)  # update_into wants room for a block more than it writes
        written = self._cipher.update_into(memoryview(self._zeros)[:nbytes], out)
        return np.frombuffer(out, dtype=np.uint8, count=written)

    def words(self, count: int) -> np.ndarray:
        """`count` uniform 64-bit words."""
        return self._keystream(8 * count).view(np.uint64)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform float64 in [0, 1) with 53 random bits each (like `torch.rand`, in float64)."""
        values = torch.from_numpy((self.words(math.prod(shape)) >> np.uint64(11)).astype(np.float64))
        return values.mul_(2.0**-53).view(*shape)

    def bernoulli(self, count: int, p: float) -> torch.Tensor:
        """`count` independent booleans, each True with probability `p`."""
        return self.rand(count) < p

    def permutation(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of 0..n-1 (int64): the order of n random 64-bit keys."""
        return torch.from_numpy(np.argsort(self.words(n), kind="stable").astype(np.int64))

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
        """Gaussian N(0, std²) of `shape` in float32, hardened against floating-point attacks.

        Box-Muller on 24-bit uniforms, in float32, as torch's own CPU sampler computes it; as Opacus'
        secure mode does (after Holohan et al., arXiv:2107.10138, section 5.1), each value is the sum
        of four such normals scaled by std/2, so the set of representable outputs does not reveal
        the unnoised value.
        """
        count = math.prod(shape)
        if count == 0 or std == 0:
            return torch.zeros(*shape, dtype=torch.float32)
        total = self._standard_normal(4 * count).view(4, count).sum(dim=0)
        return total.mul_(std / 2).view(*shape)

    def _standard_normal(self, count: int) -> torch.Tensor:
        half = (count + 1) // 2
        words = torch.from_numpy((self._keystream(8 * half).view(np.uint32) >> np.uint32(8)).astype(np.float32))
        u = words.mul_(2.0**-24)  # [0, 1) in steps of 2^-24
        radius = torch.log1p(u[:half].neg()).mul_(-2.0).sqrt_()  # 1 - u in (0, 1]: the log is finite
        angle = u[half:].mul_(2.0 * math.pi)
        return torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)))[:count]


@dataclass(frozen=True)
class RoundRandomness:
    """The secret 256-bit key of one round at one site, and which mode produced it."""

    mode: str
    key: bytes = field(repr=False)  # never log or send it

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"randomness mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a round key has {KEY_BYTES} bytes, got {len(self.key)}")

    def stream(self, purpose: str) -> SecretStream:
        """An independent stream for one use ("dp-noise", "dp-sampling", "augmentation", ...)."""
        return SecretStream(hmac.new(self.key, f"fedpath-stream:{purpose}".encode(), hashlib.sha256).digest())


def fresh_randomness() -> RoundRandomness:
    """256 fresh bits from the OS CSPRNG: unpredictable to everyone, reproducible by no one."""
    return RoundRandomness(SECURE, secrets.token_bytes(KEY_BYTES))


def seeded_randomness(dp_seed: str, site_id: str, ledger_position: int) -> RoundRandomness:
    """Reproducible randomness from a site-held secret, the site's id and its own ledger position.

    `ledger_position` (rounds already recorded in the site's ledger) advances with every answered
    request, so answering the same request twice never reuses noise. The site id only separates
    sites that share one seed (simulated sites); the secrecy is the seed's alone.
    """
    if not dp_seed:
        raise ValueError("dp-seed is empty")
    problem = dp_seed_problem(dp_seed)
    if problem:
        raise ValueError(problem)
    message = f"fedpath-round:{site_id}:{ledger_position}".encode()
    return RoundRandomness(SITE_SEED, hmac.new(bytes.fromhex(dp_seed), message, hashlib.sha256).digest())


def round_randomness(dp_seed: str, site_id: str, ledger_position: int) -> RoundRandomness:
    """The site's randomness for its next round: seeded when the site holds a dp-seed, else fresh."""
    return seeded_randomness(dp_seed, site_id, ledger_position) if dp_seed else fresh_randomness()


def public_randomness(label: str = "test") -> RoundRandomness:
    """A fixed, publicly known key for tests and benchmarks that must replay: never for a real site."""
    return RoundRandomness(SITE_SEED, hashlib.sha256(f"fedpath-public-test-key:{label}".encode()).digest())
