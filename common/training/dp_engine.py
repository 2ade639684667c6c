"""The pieces of DP-SGD that fedpath supplies to Opacus: the accountant, CSPRNG noise, finite records.

Opacus clips, sums and accounts; three things are the site's own:

* **the accountant** starts from the site's ledger history (`site_accountant`), so ε is
  cumulative over every round the site ever ran, and is read back as plain numbers afterwards;
* **the noise** comes from the site's ChaCha20 stream (`common.privacy.randomness.SecretStream`), not
  from a torch generator: `SecretNoise.add_noise` replaces Opacus' Gaussian draw (Opacus' secure
  mode needs `torchcsprng`, which has no build for the pinned torch; a torch generator keeps 32 bits
  of its seed);
* **non-finite records contribute nothing**: a coordinator that crafts weights so that one
  patient's logits overflow must not see NaN in the update only when that patient is present.
  `finite_rows` gives every record whose logits are not finite a zero gradient (a per-record rule
  that does not look at other records, so the sensitivity bound holds), `zero_nonfinite_records`
  zeroes any per-record gradient row that is still not finite before clipping (hooks mode), and
  ghost clipping gives such records a clipping factor of 0 (`common.training.patient_dp.clipping`). How many
  records were zeroed is a local diagnostic only; it never crosses the wire.
"""

from __future__ import annotations

import torch
from opacus.accountants import RDPAccountant
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

import common.model.dp_layers  # noqa: F401 - registers the Opacus grad/norm samplers the DP modules use
from common.privacy.randomness import SecretStream

AccountantHistory = list[tuple[float, float, int]]  # Opacus RDP history: (noise multiplier, sample rate, steps)


def site_accountant(history: AccountantHistory | None) -> RDPAccountant:
    """Opacus' RDP accountant holding the site's whole history: the round's steps are added to it.

    It only records (σ, q, steps); no ε is read from it. Every ε is `common.privacy.accounting.epsilon_of`
    of the history (the smaller of the RDP and PRV bounds)."""
    accountant = RDPAccountant()
    accountant.load_state_dict({"history": list(history or []), "mechanism": "rdp"})
    return accountant


def accountant_history(accountant: RDPAccountant) -> AccountantHistory:
    """The accountant's history after training, as plain numbers for the site's ledger."""
    return [(float(s), float(q), int(n)) for s, q, n in accountant.state_dict()["history"]]


class SecretNoise:
    """Mixin for Opacus' DP optimizers: the Gaussian noise comes from the site's secret stream.

    Set `noise_stream` before the first step. Same noise law as Opacus (N(0, (σC)²) per
    coordinate of the clipped sum), drawn as Opacus' secure mode does (a sum of four Gaussians).
    """

    noise_stream: SecretStream | None = None
    params: list[torch.nn.Parameter]
    noise_multiplier: float
    max_grad_norm: float

    def add_noise(self) -> None:
        stream = self.noise_stream
        if stream is None:
            raise RuntimeError("DP step without the site's secret noise stream")
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)  # type: ignore[attr-defined]
        # One draw for all parameters (dozens of small tensors for norm-head): the per-call cost of the
        # cipher and of torch's ops is paid once per step, not once per tensor.
        noise = stream.normal((sum(p.summed_grad.numel() for p in self.params),), std)  # type: ignore[attr-defined]
        offset = 0
        for p in self.params:
            summed: torch.Tensor = p.summed_grad  # type: ignore[attr-defined]
            part = noise[offset:offset + summed.numel()].view(summed.shape)
            offset += summed.numel()
            p.grad = (summed + part.to(dtype=summed.dtype, device=summed.device)).view_as(p)
            _mark_as_processed(p.summed_grad)  # type: ignore[attr-defined]


def finite_rows(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(logits with every non-finite row replaced by zeros, how many rows were replaced).

    `torch.where` passes an exact zero gradient to the replaced rows, so a record whose forward
    pass overflowed gets no gradient from the loss at all, whatever the coordinator's weights.
    """
    ok = torch.isfinite(logits).all(dim=1, keepdim=True)
    return torch.where(ok, logits, torch.zeros_like(logits)), int((~ok).sum())


def zero_nonfinite_records(rows: list[torch.Tensor]) -> int:
    """Zero, in place, every record (row index) whose gradient is not finite in any parameter.

    `rows` holds one (records, ...) tensor per parameter, as Opacus' `grad_sample`. Returns how
    many records were zeroed. A zero row clips to zero: the record contributes nothing.
    """
    if not rows or rows[0].shape[0] == 0:
        return 0
    bad = torch.zeros(rows[0].shape[0], dtype=torch.bool, device=rows[0].device)
    for r in rows:
        bad |= ~torch.isfinite(r.reshape(r.shape[0], -1)).all(dim=1)
    count = int(bad.sum())
    if count:
        for r in rows:
            r[bad] = 0
    return count
