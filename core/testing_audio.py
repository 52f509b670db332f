"""Helpers for audio tests: a tiny CLAP checkpoint built from configs, and small deterministic sound files.

The model is randomly initialised (its vectors mean nothing) and hears 1-second windows at 16 kHz, so
multi-window files stay a few seconds long::

    from anybind.testing_audio import build_tiny_clap, write_tone
    build_tiny_clap("tiny-clap")                      # then: clap:tiny-clap
    write_tone("a440.wav", 440, seconds=3.5)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

from .testing import BOS, EOS, MAX_TOKENS, PAD, train_tokenizer

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 1
PROJECTION_DIM = 24  # not the tiny CLIP's 16: a CLAP -> CLIP route needs a learned binding


def build_tiny_clap(directory: str | Path, seed: int = 0, fused: bool = False) -> Path:
    """Save a randomly initialised tiny CLAP (24-d projections) with its feature extractor and tokenizer.

    The feature extractor takes 16 kHz audio in 1 s windows. ``fused=True`` builds a feature-fusion
    model (like ``laion/clap-htsat-fused``: 64 mel bins, ``truncation="fusion"``); the default is unfused
    (like ``laion/clap-htsat-unfused``: 16 mel bins here, ``truncation="rand_trunc"``).
    """
    tokenizer = train_tokenizer()
    mel_bins = 64 if fused else 16  # the extractor's fusion code assumes 64 mel bins
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS + 2,  # RoBERTa-style positions start after the pad id
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    audio = dict(
        spec_size=128 if fused else 64,  # spec_size * (spec_size // mel_bins) must hold the 101 frames of 1 s
        num_mel_bins=mel_bins,
        window_size=4,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        patch_embeds_hidden_size=16,
        hidden_size=32,  # = patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        enable_fusion=fused,
        fusion_type="aff_2d" if fused else None,
    )
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=PROJECTION_DIM))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ClapFeatureExtractor(
        feature_size=mel_bins,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        max_length_s=WINDOW_SECONDS,
        fft_window_size=512,
        frequency_min=50,
        frequency_max=SAMPLE_RATE // 2,
        truncation="fusion" if fused else "rand_trunc",
        padding="repeatpad",
    ).save_pretrained(directory)
    return directory


# -- sounds ------------------------------------------------------------------------------------------------


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A sine wave: float32 samples ``amplitude * sin(2 pi freq t)``, ``round(seconds * rate)`` of them."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(f0: float, f1: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A linear sweep from ``f0`` to ``f1`` Hz over ``seconds``: float32 samples."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def noise_burst(
    seconds: float, rate: int = SAMPLE_RATE, burst: tuple[float, float] = (0.0, 0.5), seed: int = 0
) -> np.ndarray:
    """Silence with uniform white noise (amplitude 0.5) in ``[burst[0], burst[1])`` seconds; seeded, float32."""
    samples = np.zeros(round(seconds * rate), dtype=np.float32)
    lo, hi = round(burst[0] * rate), round(burst[1] * rate)
    samples[lo:hi] = np.random.default_rng(seed).uniform(-0.5, 0.5, max(0, hi - lo)).astype(np.float32)
    return samples


def write_audio(
    path: str | Path,
    samples: np.ndarray,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    subtype: str | None = None,
    format: str | None = None,
) -> Path:
    """Write mono ``samples`` (copied into every channel when ``channels > 1``, or pass ``(n, channels)``).

    ``format``/``subtype`` are soundfile's (``"FLAC"``, ``"PCM_16"``, ``"MPEG_LAYER_III"``); by default the
    file's extension picks the format and soundfile its usual subtype.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    sf.write(path, data, rate, subtype=subtype, format=format)
    return Path(path)


def write_tone(
    path: str | Path,
    freq: float,
    seconds: float,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    subtype: str | None = None,
    format: str | None = None,
) -> Path:
    """Write a sine tone (amplitude 0.5) to ``path``; see :func:`write_audio` for the options."""
    return write_audio(path, tone(freq, seconds, rate), rate, channels, subtype, format)


def write_chirp(
    path: str | Path, f0: float, f1: float, seconds: float, rate: int = SAMPLE_RATE, subtype: str | None = None
) -> Path:
    """Write a linear sweep from ``f0`` to ``f1`` Hz to ``path``."""
    return write_audio(path, chirp(f0, f1, seconds, rate), rate, subtype=subtype)


def write_noise_burst(
    path: str | Path,
    seconds: float,
    rate: int = SAMPLE_RATE,
    burst: tuple[float, float] = (0.0, 0.5),
    seed: int = 0,
    subtype: str | None = None,
) -> Path:
    """Write silence with a seeded white-noise burst in ``[burst[0], burst[1])`` seconds to ``path``."""
    return write_audio(path, noise_burst(seconds, rate, burst, seed), rate, subtype=subtype)
