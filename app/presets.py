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


def shared_instruments() -> dict[str, Any]:
    """The instruments shipped in ``config/instruments/shared.json``: what a new portfolio's configuration lists
    unless it gives instruments of its own (six-letter FX pairs need no entry)."""
    path = PRESET_DIR / "instruments" / "shared.json"
    return json.loads(path.read_text()) if path.exists() else {}


def with_shared_instruments(data: dict[str, Any]) -> dict[str, Any]:
    return data if "instruments" in data else {**data, "instruments": shared_instruments()}


def load_preset(name: str, **overrides: Any) -> RPMConfig:
    """The configuration of a preset (with the shared instruments, unless it lists its own), with optional
    overrides (e.g. total_capital)."""
    if name not in preset_names():
        raise ConfigError("preset", f"unknown preset {name!r}; one of {', '.join(preset_names())}")
    data = json.loads((PRESET_DIR / f"{name}.json").read_text())
    return RPMConfig.from_dict(with_shared_instruments({**data, **overrides}))
