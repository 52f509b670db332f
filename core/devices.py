"""Device choice: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

Models run in float16 on CUDA and float32 on the CPU; vectors always leave encoders as float32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import AnybindError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Device:
    """A resolved device: the torch device string and the model dtype name (``float16``/``float32``)."""

    name: str
    dtype: str

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")


def resolve_device(requested: str = "auto") -> Device:
    """Resolve ``auto|cpu|cuda|cuda:N``; asking for CUDA where there is none is an error, not a fallback."""
    if not DEVICE_PATTERN.match(requested):
        raise AnybindError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")
    if requested == "cpu":
        return Device("cpu", "float32")
    import torch

    available = torch.cuda.is_available()
    if requested == "auto":
        return Device("cuda", "float16") if available else Device("cpu", "float32")
    if not available:
        raise AnybindError(f"device {requested!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if index >= torch.cuda.device_count():
        raise AnybindError(f"device {requested!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return Device(requested, "float16")
