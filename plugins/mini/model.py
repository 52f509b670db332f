"""The towers of anybind-mini: a small image CNN (the anchor), a head over frozen MiniLM, and an audio CNN.

All three end in the same ``dim``-wide space. The image tower is trained contrastively against the text side
(MiniLM through the text head; the shipped head is the identity, kept frozen, LiT-style); the image tower is
then frozen as the anchor and the audio tower is trained against it on (audio, image) pairs only. See
``docs/mini-model.md``.

Inputs:

- image: RGB, transparency over white, padded to a square with white and resized to ``image_size``;
- audio: mono at ``sample_rate``, peak-normalised, zero-padded (or centre-cropped) to ``window`` seconds,
  log-mel (torchaudio) standardised with the training set's mean and standard deviation;
- text: the sentence embedding of all-MiniLM-L6-v2 (mean pooling, unit length), frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TEXT_WIDTH = 384  # all-MiniLM-L6-v2


@dataclass
class AudioFeatures:
    """How a clip becomes the audio tower's input."""

    sample_rate: int = 16000
    window: float = 2.0
    n_fft: int = 512
    hop: int = 400
    n_mels: int = 48
    mean: float = 0.0  # of the log-mel values over the training clips
    std: float = 1.0

    @property
    def samples(self) -> int:
        return round(self.window * self.sample_rate)


@dataclass
class MiniConfig:
    """Shapes of the three towers (saved next to the weights as ``mini.json``)."""

    dim: int = 384
    image_size: int = 64
    image_channels: tuple[int, ...] = (32, 64, 128, 256)
    audio_channels: tuple[int, ...] = (24, 48, 96, 192)
    text_hidden: int = 0
    audio: AudioFeatures = field(default_factory=AudioFeatures)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MiniConfig:
        data = dict(data)
        audio = AudioFeatures(**data.pop("audio", {}))
        for key in ("image_channels", "audio_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(audio=audio, **data)


class Block(nn.Module):
    """Residual block: two 3x3 convolutions with batch norm; strided 1x1 shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ConvTower(nn.Module):
    """Strided stem, one strided residual block per stage, global average pooling, linear projection to ``dim``."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], dim: int, stem_stride: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        stages, cin = [], channels[0]
        for cout in channels:
            stages.append(Block(cin, cout, 2))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.proj(x.mean(dim=(2, 3)))


class TextHead(nn.Module):
    """MiniLM sentence vector -> ``dim``: a linear map, plus a GELU MLP on the side when ``hidden`` > 0."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(TEXT_WIDTH, dim)
        self.mlp = nn.Sequential(nn.Linear(TEXT_WIDTH, hidden), nn.GELU(), nn.Linear(hidden, dim)) if hidden else None
        if dim == TEXT_WIDTH:  # start as MiniLM's own space (the locked-text-tower set-up of LiT)
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(dim))
                self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.mlp is None else self.linear(x) + self.mlp(x)


class LogMel(nn.Module):
    """Waveforms ``(n, samples)`` -> standardised log-mel ``(n, 1, n_mels, frames)`` (torchaudio filterbank)."""

    def __init__(self, features: AudioFeatures) -> None:
        super().__init__()
        import torchaudio

        self.features = features
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=features.sample_rate, n_fft=features.n_fft, hop_length=features.hop, n_mels=features.n_mels
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        logmel = torch.log(self.mel(waves) + 1e-6)
        return ((logmel - self.features.mean) / self.features.std).unsqueeze(1)


class MiniModel(nn.Module):
    """The three trainable parts; ``embed_*`` return unit vectors."""

    def __init__(self, config: MiniConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ConvTower(3, config.image_channels, config.dim)
        self.text_head = TextHead(config.dim, config.text_hidden)
        self.audio = ConvTower(1, config.audio_channels, config.dim)
        self.logmel = LogMel(config.audio)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixels), dim=-1)

    def embed_text(self, sentence_vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(sentence_vectors), dim=-1)

    def embed_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio(logmel), dim=-1)

    def embed_waves(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed_logmel(self.logmel(waves))


# -- preprocessing shared by training and the encoder ------------------------------------------------------------


def image_array(image, size: int) -> np.ndarray:
    """RGB PIL image -> ``(3, size, size)`` float32 in [-1, 1]: padded to a square with white, then resized."""
    from PIL import Image

    width, height = image.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC if side < size else Image.Resampling.BOX)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def fit_window(samples: np.ndarray, length: int, offset: int | None = None) -> np.ndarray:
    """Peak-normalised float32 of exactly ``length`` samples: a longer clip is cut (centred unless ``offset``),
    a shorter one placed at ``offset`` (default: the start) in silence."""
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak > 0:
        samples = samples / peak
    if len(samples) >= length:
        first = (len(samples) - length) // 2 if offset is None else min(offset, len(samples) - length)
        return np.ascontiguousarray(samples[first : first + length])
    out = np.zeros(length, dtype=np.float32)
    first = 0 if offset is None else min(offset, length - len(samples))
    out[first : first + len(samples)] = samples
    return out
