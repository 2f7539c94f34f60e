"""The weights identity a run records, read the same way by every stage: the model's checks
(model/backend.py hashes weights against it) and the readers that say it (results/provenance.py,
which imports nothing that runs a model)."""
from __future__ import annotations

from typing import Any

LEGACY_ATTR = "weights_sha256"
"""Where runs mined before the `weights_hash` attribute recorded a bare sha256 hex digest."""


def recorded_weights(attrs: dict[str, Any]) -> str | None:
    """The weights identity a run with root `attrs` recorded, "<algorithm>:<hex digest>" as
    `weights_hash` writes it (older runs' `weights_sha256` as "sha256:<hex>"); None without one."""
    if isinstance(attrs.get("weights_hash"), str):
        return str(attrs["weights_hash"])
    legacy = attrs.get(LEGACY_ATTR)
    return f"sha256:{legacy}" if isinstance(legacy, str) else None
