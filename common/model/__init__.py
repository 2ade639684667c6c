"""The model every party builds the same way: a torchvision ResNet made trainable by Opacus.

* `network`       — the ResNet, its DP-compatible layers swapped in, trainable-parameter policies,
  trainable state and the frozen-layer fingerprint;
* `dp_layers`     — `FrozenStatsBatchNorm`, `ChannelAffine` and their Opacus per-sample samplers;
* `weights`       — where the starting weights come from (ImageNet, a file, scratch), with checksums;
* `factory`       — the run's starting model from its config;
* `bn_statistics` — frozen BatchNorm statistics re-estimated on public data and packed for the wire;
* `inputs`        — images as tensors (uint8 to normalised float per batch), dihedral augmentation.

Imported by the server, the sites' training and the tools; it imports nothing of training, privacy
or the audit.
"""
