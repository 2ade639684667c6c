"""Patient-level DP-SGD: the unit of privacy is a patient (a group of patches), not a patch.

One DP step:

1. **Poisson-samples patients**: each patient is in the step independently with probability q
   (as Opacus' `UniformWithReplacementSampler` does, drawn from the site's secret stream);
2. each sampled patient brings its patches, at most `max_patches_per_patient` of them, chosen
   uniformly at random without replacement (same secret stream) where it has more;
3. the gradient **summed over that patient's patches** is clipped to L2 norm C;
4. the clipped patient gradients are summed and Gaussian noise N(0, sigma^2 C^2) is added
   (Opacus' DPOptimizer), and the result is divided by the expected number of patients per
   step, q * patients (pure post-processing: it does not affect privacy);
5. the accountant records (sigma, q, 1) for the step: Opacus' RDP accountant, unchanged (its history is
   the ledger's; the ε is `common.privacy.accounting.epsilon_of` of it).

Adding or removing one patient changes the sum in step 4 by at most C whatever the number of
its patches, and patients enter steps by Poisson sampling with rate q, so this is exactly the
sampled Gaussian mechanism that the accountants analyse, with patients as records: the
(epsilon, delta) it reports is per patient. The patch cap is not needed for that bound (the
clipping is); it bounds the work of a step and keeps the expected number of patches per step
near the configured batch size.

How clipping happens per patient, using Opacus' own classes:

* `hooks` mode (policies `norm-head`, `head`): Opacus' GradSampleModule computes per-patch
  gradients; `PatientDPOptimizer` (a DPOptimizer) first sums each parameter's `grad_sample`
  rows per patient, so the DPOptimizer clips, sums and noises one row per patient.
* `ghost` mode (`full`, `last-block`): `PatientGhostClippingModule` (Opacus'
  GradSampleModuleFastGradientClipping) computes each patient's norm ||sum_i g_i|| exactly from
  activations and output gradients (`common.training.patient_dp.group_norms.GROUP_NORM_SAMPLERS`), and gives every
  patch its patient's clipping factor, so Opacus' second backward pass yields
  sum_patients clip(sum_i g_i) and DPOptimizerFastGradientClipping adds the noise.

All randomness of a step (patient sampling, the per-patient patch subsampling and the noise)
comes from the round's secret ChaCha20 streams (`common.privacy.randomness`), keyed with 256 secret
bits of the site; no torch or NumPy generator is used. A patient whose summed gradient is not
finite contributes nothing (`common.training.dp_engine`). Patch-level DP is the same machinery with every
patch its own patient (cap 1).

The package, by job: `planning` (units of privacy, patient counts: what a site decides before
training; the steps and rate q are `common.training.steps`), `sampling` (which patients and patches make each step),
`clipping` (Opacus' optimizer and ghost-clipping module made per patient, and
`make_private_per_patient`). The names below are the package's interface.
"""

from common.config.choices import DEFAULT_MAX_PATCHES_PER_PATIENT
from common.training.patient_dp.clipping import (
    PatientDPOptimizer,
    PatientGhostClippingModule,
    PatientPrivateTraining,
    make_private_per_patient,
)
from common.training.patient_dp.planning import (
    PATCH,
    PATIENT,
    PRIVACY_UNITS,
    patient_counts,
    patient_index,
)
from common.training.patient_dp.sampling import PatientPoissonSampler, PatientStep

__all__ = [
    "DEFAULT_MAX_PATCHES_PER_PATIENT", "PATCH", "PATIENT", "PRIVACY_UNITS", "PatientDPOptimizer",
    "PatientGhostClippingModule", "PatientPoissonSampler", "PatientPrivateTraining", "PatientStep",
    "make_private_per_patient", "patient_counts", "patient_index",
]
