"""Batched, per-sample random augmentation on tensors (no per-image Python loop)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def pictures(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``(n, 3, h, w)`` -> float in [-1, 1], each picture randomly scaled, rotated, shifted, mirrored (white
    fills the border), with brightness, contrast and saturation jitter and an occasional grey version."""
    n = batch.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    x = batch.float() / 255.0
    scale, angle = uniform(0.8, 1.15), uniform(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, uniform(-0.1, 0.1)], 1),
            torch.stack([sin * flip, cos, uniform(-0.1, 0.1)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1.0, grid, align_corners=False, padding_mode="zeros") + 1.0  # white outside
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    saturation = torch.where(torch.rand(n, generator=generator) < 0.1, 0.0, uniform(0.6, 1.4))[:, None, None, None]
    x = grey + saturation * (x - grey)
    contrast = uniform(0.7, 1.3)[:, None, None, None]
    x = x.mean(dim=(1, 2, 3), keepdim=True) + contrast * (x - x.mean(dim=(1, 2, 3), keepdim=True))
    x = x * uniform(0.8, 1.2)[:, None, None, None]
    return x.clamp(0, 1) * 2 - 1


def plain_pictures(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 3, h, w)`` -> float in [-1, 1], as the encoder feeds them."""
    return batch.float() / 127.5 - 1.0


def spec_mask(logmel: torch.Tensor, generator: torch.Generator, bands: int = 8, frames: int = 10) -> torch.Tensor:
    """SpecAugment: one random band of up to ``bands`` mel bins and one of up to ``frames`` frames set to 0."""
    n, _, mels, steps = logmel.shape
    out = logmel.clone()
    f0 = torch.randint(0, mels, (n,), generator=generator)
    fw = torch.randint(0, bands + 1, (n,), generator=generator)
    t0 = torch.randint(0, steps, (n,), generator=generator)
    tw = torch.randint(0, frames + 1, (n,), generator=generator)
    mel_index = torch.arange(mels)[None, :]
    step_index = torch.arange(steps)[None, :]
    mel_hit = (mel_index >= f0[:, None]) & (mel_index < (f0 + fw)[:, None])
    step_hit = (step_index >= t0[:, None]) & (step_index < (t0 + tw)[:, None])
    out[mel_hit[:, None, :, None].expand_as(out)] = 0.0
    out[step_hit[:, None, None, :].expand_as(out)] = 0.0
    return out


def warp(logmel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-clip random stretch in time (0.8-1.25x), shift along the mel axis (about +-3 bands: another pitch or
    voice) and mild scaling of it (0.9-1.1x: another vocal tract length), edges repeated."""
    n = logmel.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    zero = torch.zeros(n)
    theta = torch.stack(
        [
            torch.stack([uniform(0.8, 1.25), zero, uniform(-0.15, 0.15)], 1),
            torch.stack([zero, uniform(0.9, 1.1), uniform(-0.12, 0.12)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(logmel.shape), align_corners=False)
    return F.grid_sample(logmel, grid, align_corners=False, padding_mode="border")
