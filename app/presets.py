"""Risk presets: the JSON files in ``config/`` (balanced = the defaults), loadable by name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .risk.config import ConfigError, RPMConfig

PRESET_DIR = Path(os.environ.get("RPM_PRESET_DIR", Path(__file__).resolve().parent.parent / "config"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str, **overrides: Any) -> RPMConfig:
    """The configuration of a preset, with optional overrides (e.g. total_capital)."""
    if name not in preset_names():
        raise ConfigError("preset", f"unknown preset {name!r}; one of {', '.join(preset_names())}")
    data = json.loads((PRESET_DIR / f"{name}.json").read_text())
    return RPMConfig.from_dict({**data, **overrides})
