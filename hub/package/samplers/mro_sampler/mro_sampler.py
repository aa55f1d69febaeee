"""OptunaHub's face of ``MROSampler``: the sampler itself lives in mro-search
(``search_service/sampler/``) and is re-exported here, not copied, so the hub package and the
service run the same code."""

from __future__ import annotations

try:
    from search_service.sampler import MROSampler
except ImportError as exc:  # the hub package without mro-search installed
    raise ImportError(
        f"samplers/mro_sampler needs the mro-search package ({exc}); install it from a checkout "
        "of mro-search with: pip install -e /path/to/mro-search (see this package's README.md)"
    ) from exc


__all__ = ["MROSampler"]
