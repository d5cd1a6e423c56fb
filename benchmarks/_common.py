"""What every benchmark records about the machine it ran on."""
from __future__ import annotations

from spikefm.train.runinfo import machine_info

__all__ = ["machine_info"]
