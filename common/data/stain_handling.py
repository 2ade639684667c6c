"""Stain handling at a site: Macenko normalisation to a shared reference, and stain augmentation.

Both use torchstain's Macenko implementation (torch backend); nothing here estimates stain
vectors itself.

* **Normalisation** (`normalise_images`): torchstain's `TorchMacenkoNormalizer`, its target
  set to the reference the server distributes in the run config (`stain-reference`: the H&E
  matrix and the 99th-percentile concentrations, 8 numbers; never any site's image). It is
  deterministic per image, so it runs once per image set and is cached by content.
* **Augmentation** (`StainAugmenter`): torchstain's `TorchMacenkoAugmentor` perturbs an image's
  stain concentrations, C' = C * U(1 - s1, 1 + s1) + U(-s2, s2), and recomposes the image with
  its own stain matrix. The library does this one image at a time and re-estimates the stain
  matrix (an eigen-decomposition and percentiles) on every call, which under DP would cost
  several times a training step. So the library's `fit` runs once per image (cached like
  the normalisation), and each step recomposes a whole batch with the fitted matrices in the
  library's own formula (tests check it against `TorchMacenkoAugmentor.augment`).

Everything is per image: an image's output depends on that image (and public constants) only,
so under DP it is a per-record transform and the guarantee is unchanged (docs/PRIVACY.md).
Images Macenko cannot handle (background, almost no stained pixels, eigen failures) keep their
original pixels; the counts stay at the site.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torchstain.torch.augmentors import TorchMacenkoAugmentor
from torchstain.torch.normalizers import TorchMacenkoNormalizer

from common.config.stain_settings import (  # noqa: F401 - the settings' names, re-exported beside the work
    SIGMA_SCALE,
    SIGMA_SHIFT,
    STAIN_SETTINGS,
    StainReference,
    augments,
    default_reference,
    describe_stain,
    normalises,
    parse_reference,
)
from common.privacy.randomness import SecretStream

log = logging.getLogger("fedpath.stain")

# torchstain's defaults: transmitted light, transparency (optical density) threshold.
IO, BETA = 240, 0.15
# Fewer stained pixels (optical density >= BETA in every channel: the pixels torchstain estimates the
# stain matrix from) and an image counts as background: Macenko's eigen-decomposition and percentiles
# are meaningless on a handful of pixels (torchstain raises on none, and often on a few).
MIN_STAINED_PIXELS = 16


# -- per-image work, cached by content -------------------------------------------------------------
class _ContentCache:
    """Small LRU of per-image-set results keyed by the images' bytes (and the reference)."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.entries, self.lock = size, OrderedDict(), threading.Lock()
        self.computed_images = 0  # images actually processed (tests check cache hits by it)

    def get(self, key: tuple, compute: Callable[[], tuple]) -> tuple:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        value = compute()
        with self.lock:
            self.entries[key] = value
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value


NORMALISED = _ContentCache()
BASES = _ContentCache()


def content_key(images: np.ndarray) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=20).hexdigest()
    return (images.shape, digest)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Per-image Macenko is dozens of tiny ops: extra threads only contend (50x slower on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _has_tissue(image: torch.Tensor) -> bool:
    od = -torch.log((image.reshape(3, -1).float() + 1) / IO)
    return int((od >= BETA).all(dim=0).sum()) >= MIN_STAINED_PIXELS


def normalise_images(images: np.ndarray, reference: StainReference) -> tuple[np.ndarray, int]:
    """(normalised copy of uint8 (N, H, W, 3) `images`, images left as they were); cached by content."""
    key = (content_key(images), reference)
    return NORMALISED.get(key, lambda: _normalise(images, reference))


def _normalise(images: np.ndarray, reference: StainReference) -> tuple[np.ndarray, int]:
    normaliser = TorchMacenkoNormalizer()
    normaliser.HERef = torch.tensor(reference.he, dtype=torch.float32).view(3, 2)
    normaliser.maxCRef = torch.tensor(reference.max_c, dtype=torch.float32)
    out, fallbacks = images.copy(), 0
    with _one_thread():
        for i, image in enumerate(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)):
            try:
                if not _has_tissue(image):
                    raise ValueError("background")
                normed, _, _ = normaliser.normalize(image, Io=IO, beta=BETA, stains=False)
                if int(normed.min()) < 0:  # NaN concentrations become INT_MIN in the library's .int()
                    raise ValueError("not finite")
                out[i] = normed.clamp(0, 255).to(torch.uint8).numpy()
            except (RuntimeError, ValueError, IndexError):
                fallbacks += 1
    NORMALISED.computed_images += len(images)
    return out, fallbacks


def stain_bases(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-image H&E matrices (N, 3, 2) float32, usable mask (N,)) from torchstain's augmentor `fit`."""
    return BASES.get((content_key(images),), lambda: _fit_bases(images))


def _fit_bases(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    augmentor = TorchMacenkoAugmentor(sigma1=SIGMA_SCALE, sigma2=SIGMA_SHIFT)
    bases = np.zeros((len(images), 3, 2), dtype=np.float32)
    usable = np.zeros(len(images), dtype=bool)
    with _one_thread():
        for i, image in enumerate(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)):
            try:
                if not _has_tissue(image):
                    continue
                augmentor.fit(image, Io=IO, beta=BETA)
                he = augmentor.HERef.detach().float()
                if torch.isfinite(he).all() and torch.linalg.matrix_rank(he) == 2:
                    bases[i], usable[i] = he.numpy(), True
            except (RuntimeError, ValueError, IndexError):
                continue
    BASES.computed_images += len(images)
    return bases, usable


# -- augmentation during training ----------------------------------------------------------------------
def recompose(images: torch.Tensor, he: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TorchMacenkoAugmentor.augment's formula for a batch: uint8 (B, 3, H, W) -> uint8, stain matrices
    `he` (B, 3, 2), concentration factors `scale` and offsets `shift` (B, 2)."""
    b, c, h, w = images.shape
    od = images.reshape(b, c, h * w).float().add_(1).div_(IO).log_().neg_()
    # The library's least squares lstsq(HE, OD^T); with HE of rank 2 (checked at fit) that is the
    # pseudo-inverse, which is batched cheaply (torch's batched lstsq is 10x slower on CPU).
    conc = torch.bmm(torch.linalg.pinv(he), od)  # (B, 2, HW)
    conc.mul_(scale.unsqueeze(-1)).add_(shift.unsqueeze(-1))
    out = torch.bmm(he, conc).neg_().exp_().mul_(IO).clamp_(0, 255)  # the library's .int() truncates: so does uint8
    return out.to(torch.uint8).reshape(b, c, h, w)


class StainAugmenter:
    """Random stain-concentration perturbation per sample and step, over one training set.

    `stream` must be the site's own (one of its round's secret streams): the draws need no
    secrecy for DP, but must not be predictable from anything the coordinator knows either.
    """

    def __init__(self, images: np.ndarray, stream: SecretStream) -> None:
        bases, usable = stain_bases(images)
        self.bases, self.usable = torch.from_numpy(bases), torch.from_numpy(usable)
        self.stream = stream
        self.unusable = int((~usable).sum())

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images of dataset rows `rows`, perturbed (unusable ones unchanged)."""
        if len(rows) == 0:
            return images
        u = self.stream.rand(len(rows), 2, 2).float()  # per image: (scale, shift) x (H, E)
        scale, shift = 1 + SIGMA_SCALE * (2 * u[:, 0] - 1), SIGMA_SHIFT * (2 * u[:, 1] - 1)
        ok = self.usable[rows]
        if not bool(ok.any()):
            return images
        if bool(ok.all()):
            return recompose(images, self.bases[rows], scale, shift)
        out = images.clone()
        out[ok] = recompose(images[ok], self.bases[rows][ok], scale[ok], shift[ok])
        return out



def fit_reference(images: np.ndarray, max_images: int = 500) -> StainReference:
    """A reference fitted with torchstain on public images (the centre's, never a site's).

    torchstain fits a reference on one target image; here that image is a mosaic of up to
    `max_images` evenly spaced patches side by side, so the reference is the stain of the set.
    """
    chosen = images[np.linspace(0, len(images) - 1, min(len(images), max_images)).astype(int)]
    mosaic = torch.from_numpy(np.ascontiguousarray(np.concatenate(list(chosen), axis=1))).permute(2, 0, 1)
    fitted = TorchMacenkoNormalizer()
    with _one_thread():
        fitted.fit(mosaic.contiguous(), Io=IO, beta=BETA)
    he, max_c = fitted.HERef.reshape(-1).tolist(), fitted.maxCRef.reshape(-1).tolist()
    return parse_reference(StainReference(tuple(he), tuple(max_c)).as_text())  # the run config's checks apply
