"""Where generated artefacts (converted models, generated games) are cached."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MISE_CACHE", Path.home() / ".cache" / "mise-rl"))
