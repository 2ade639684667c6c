"""Where a model's starting weights come from, checked before anything trains.

`weights` settings:

* `imagenet`: torchvision's ImageNet-1K weights enum. Loaded from the torch hub cache
  (`$TORCH_HOME/hub/checkpoints/`); downloaded there where there is network; otherwise a
  clear error naming the file, its SHA-256 prefix (torchvision puts the first 8 hex digits
  of the file's SHA-256 in its name) and where to put it.
* a path to a `.pth`/`.pt` torchvision-format state dict (e.g. `server.pretrain` output),
  verified against `weights-sha256` or a `<file>.sha256` sidecar when one is given.
  A run's own `checkpoints/final.pt` (the global model a job ended with, with its sidecar)
  is accepted too, so a consortium's next job can continue from the last one: its
  DP-compatible layer names are mapped back to torchvision's (`torchvision_state`).
* `none`: random initialisation: the from-scratch baseline.
* `auto` (default): ImageNet weights if they are already in the hub cache, otherwise
  `none` with a prominent warning. Never downloads, so the offline demo works; and the
  report's `weights_source` always says what was really used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

from common.config.run_config import resolve_path
from common.paths import CHECKPOINTS_DIR

log = logging.getLogger("fedpath.weights")

IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V2,
}


# The format `server.run_store` writes checkpoints in; kept here so `common` does not import `server`.
FEDPATH_CHECKPOINT_FORMAT = "fedpath-checkpoint/1"
# What `common.model.network.make_dp_compatible` renames in each BatchNorm: its statistics and affine parameters.
_DP_BATCHNORM_NAMES = {"norm.running_mean": "running_mean", "norm.running_var": "running_var",
                       "affine.weight": "weight", "affine.bias": "bias"}


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or do not fit; the message says which file and why."""


@dataclass(frozen=True)
class WeightsSource:
    """What the backbone was initialised from, as the report states it."""

    kind: str  # "imagenet" | "file" | "none"
    description: str
    path: str | None = None
    sha256: str | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "path": self.path, "sha256": self.sha256}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def imagenet_file(arch: str) -> tuple[Path, str, str]:
    """(expected path in the hub cache, SHA-256 prefix, download URL) for `arch`."""
    weights = IMAGENET_WEIGHTS[arch]
    filename = weights.url.rsplit("/", 1)[-1]
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, prefix, weights.url


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return _read_weights(path)[0]


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(torchvision-format state dict, description if the file says what it is)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for bad files
        raise WeightsError(f"cannot read weights file {path} as a PyTorch state dict: {err}") from err
    if isinstance(state, dict) and state.get("format") == FEDPATH_CHECKPOINT_FORMAT:
        return _from_fedpath_checkpoint(state, path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state, None


def _from_fedpath_checkpoint(payload: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A run's final global model as torchvision weights, and what it is (run, round, how it began)."""
    if payload.get("kind") != "full" or not isinstance(payload.get("state_dict"), dict):
        raise WeightsError(
            f"{path} is a per-round checkpoint: it holds only the tensors that trained, not a whole model. To "
            "continue from a job, give weights= its checkpoints/final.pt; to continue a crashed job, resume-from="
        )
    meta = payload.get("meta") or {}
    run = path.parent.parent.name if path.parent.name == CHECKPOINTS_DIR else path.parent.name
    began = (meta.get("weights") or {}).get("description", "unknown")
    description = (f"fedpath global model {run}/{path.name} after round {payload.get('round')} "
                   f"({meta.get('arch')}, policy {meta.get('policy')}; that job started from: {began})")
    return torchvision_state(payload["state_dict"]), description


def torchvision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DP-compatible fedpath model's state dict under torchvision's names.

    `make_dp_compatible` splits each BatchNorm `bnX` into `bnX.norm` (statistics) and
    `bnX.affine` (scale, shift); torchvision, and `build_resnet`, expect `bnX.running_mean`
    and so on, plus a `num_batches_tracked` counter (unused in eval mode; 0 here).
    """
    batchnorms = {name[: -len(".norm.running_mean")] for name in state if name.endswith(".norm.running_mean")}
    out = {_torchvision_name(name, batchnorms): tensor for name, tensor in state.items()}
    for prefix in batchnorms:
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _torchvision_name(name: str, batchnorms: set[str]) -> str:
    """`layer1.0.bn1.affine.weight` -> `layer1.0.bn1.weight`; names outside a converted BatchNorm unchanged."""
    for dp_name, tv_name in _DP_BATCHNORM_NAMES.items():
        prefix = name[: -len(dp_name) - 1]
        if name.endswith("." + dp_name) and prefix in batchnorms:
            return f"{prefix}.{tv_name}"
    return name


def _imagenet(arch: str, download: bool) -> tuple[WeightsSource, dict[str, torch.Tensor]]:
    path, prefix, url = imagenet_file(arch)
    if not path.exists():
        if not download:
            raise WeightsError(_missing_imagenet_message(arch, path, prefix, url, "downloads are off"))
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=True)
        except Exception as err:  # noqa: BLE001 - URLError, timeouts, hash mismatch
            raise WeightsError(_missing_imagenet_message(arch, path, prefix, url, f"download failed: {err}")) from err
    digest = sha256_of(path)
    if not digest.startswith(prefix):
        raise WeightsError(
            f"{path} has SHA-256 {digest}, but torchvision's {IMAGENET_WEIGHTS[arch]} must begin with {prefix}: "
            "the file is corrupt or not the ImageNet weights; delete it and download it again"
        )
    source = WeightsSource("imagenet", f"ImageNet-1K, torchvision {IMAGENET_WEIGHTS[arch]}", str(path), digest)
    return source, _load_state(path)


def _missing_imagenet_message(arch: str, path: Path, prefix: str, url: str, why: str) -> str:
    return (
        f"ImageNet weights for {arch} are not available ({why}). Expected file: {path.name} "
        f"(SHA-256 beginning {prefix}) in the torch hub cache {path.parent} (set TORCH_HOME to move it). "
        f"Download it from {url} on a machine with network and copy it there, or pass "
        f"weights=/path/to/{path.name}. To train from scratch instead, set weights=none."
    )


def _file(spec: str, sha256: str) -> tuple[WeightsSource, dict[str, torch.Tensor]]:
    path = resolve_path(spec)
    if not path.exists():
        raise WeightsError(
            f"weights file {path} does not exist; give the path of a torchvision-format state dict "
            "(.pth), e.g. the output of `python -m server.pretrain`, or set weights=auto/none/imagenet"
        )
    expected = sha256.lower() or _sidecar_sha256(path)
    digest = sha256_of(path)
    if expected and digest != expected:
        raise WeightsError(f"weights file {path} has SHA-256 {digest}, but {expected} was expected: refusing to use it")
    state, description = _read_weights(path)
    return WeightsSource("file", description or _provenance(path), str(path), digest), state


def _provenance(path: Path) -> str:
    """What a weights file is, from the `<file>.json` that `server.pretrain` writes."""

    sidecar = path.with_name(path.name + ".json")
    try:
        return f"local file {path.name}: " + str(json.loads(sidecar.read_text())["description"])
    except (OSError, ValueError, KeyError):
        return f"local file {path.name} (provenance unknown)"


def _sidecar_sha256(path: Path) -> str:
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        return ""
    return sidecar.read_text().split()[0].strip().lower()


def resolve_weights(
    spec: str, arch: str, sha256: str = "", download: bool = True
) -> tuple[WeightsSource, dict[str, torch.Tensor] | None]:
    """(source, torchvision-format state dict or None) for a `weights` setting."""
    if arch not in IMAGENET_WEIGHTS:
        raise WeightsError(f"unknown arch {arch!r}; valid values: {', '.join(IMAGENET_WEIGHTS)}")
    if spec == "none":
        return WeightsSource("none", "none: random initialisation (from scratch, not pretrained)"), None
    if spec == "imagenet":
        return _imagenet(arch, download)
    if spec == "auto":
        path, _, _ = imagenet_file(arch)
        if path.exists():
            return _imagenet(arch, download=False)
        log.warning(
            "\n%s\n!! weights=auto: no ImageNet weights for %s in %s.\n!! Training FROM SCRATCH, "
            "NOT pretrained. The report says so (weights_source=none).\n!! Put %s there or set "
            "weights=/path/to/file.pth for a pretrained run.\n%s",
            "!" * 78, arch, path.parent, path.name, "!" * 78,
        )
        source = WeightsSource(
            "none", "none: random initialisation (weights=auto found no ImageNet weights; from scratch)"
        )
        return source, None
    return _file(spec, sha256)
