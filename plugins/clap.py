"""Encoder ``clap:``: the audio and text towers of HF ``ClapModel`` (LAION CLAP).

Audio is preprocessed by the checkpoint's own ``ClapFeatureExtractor`` (log-mel spectrogram; a clip shorter
than the model's window is repeated and padded to it), text by its own tokenizer (truncated to the model's
context). Embedding is deterministic, whatever the batch: the extractor's random choices are pinned down
(see :meth:`ClapEncoder.audio_features`). CLAP's space is not an image space, so a ``clap:`` route into an
image-anchored space needs a learned binding.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from anybind import EncoderOptions, hookimpl
from anybind.errors import ModelLoadError
from anybind.segments import AudioClip

from .audio_chunks import clip_samples
from .hf_loading import describe_ref, from_pretrained, load_model, weights_id

_NUMPY_RNG = threading.Lock()


@contextmanager
def _seeded_numpy(seed: int = 0) -> Iterator[None]:
    """numpy's global RNG seeded for the duration (the feature extractor draws from it), then restored."""
    with _NUMPY_RNG:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


class ClapEncoder:
    """Audio + text towers of a CLAP checkpoint (hub id or local directory), batched, under ``inference_mode``.

    ``inputs["audio"]`` tells the space the rate and window the audio tower wants (48 kHz and 10 s for the
    LAION checkpoints), so segments are cut to match.
    """

    towers = frozenset({"audio", "text"})

    def __init__(self, ref: str, options: EncoderOptions) -> None:
        import transformers

        loaded = load_model(ref, options, "ClapModel", "clap", ("clap",))
        self.torch, self.device, self.dtype, self.model = loaded.torch, loaded.device, loaded.dtype, loaded.model
        config, safe = loaded.config, loaded.safe
        self.tokenizer = from_pretrained(transformers.AutoTokenizer, ref, "tokenizer", **safe)
        extractor = from_pretrained(transformers.AutoFeatureExtractor, ref, "feature extractor", **safe)
        self.feature_extractor = self._check_extractor(ref, extractor, config.audio_config)
        # Unfused checkpoints were trained on one crop with librosa (slaney) mel filters: "rand_trunc";
        # fused ones on a global view plus three crops: "fusion". Whatever the saved extractor says.
        self.fused = bool(config.audio_config.enable_fusion)
        self.truncation = "fusion" if self.fused else "rand_trunc"
        self.sample_rate = int(extractor.sampling_rate)
        self.max_samples = int(extractor.nb_max_samples)
        self.inputs = {"audio": {"sample_rate": self.sample_rate, "window": self.max_samples / self.sample_rate}}
        self.max_text_tokens = self._text_limit(config.text_config)
        self.dim = int(config.projection_dim)
        self.id = weights_id("clap", ref)

    @staticmethod
    def _check_extractor(ref: str, extractor: Any, audio_config: Any) -> Any:
        from transformers import ClapFeatureExtractor

        if not isinstance(extractor, ClapFeatureExtractor):
            raise ModelLoadError(
                f"{describe_ref(ref)} has a {type(extractor).__name__}, not a ClapFeatureExtractor; "
                "its preprocessor_config.json does not belong to this clap model"
            )
        if extractor.feature_size != audio_config.num_mel_bins:
            raise ModelLoadError(
                f"{describe_ref(ref)}: the feature extractor makes {extractor.feature_size} mel bins but the "
                f"audio model takes {audio_config.num_mel_bins}; its preprocessor_config.json does not match"
            )
        return extractor

    def _text_limit(self, text_config: Any) -> int:
        """Tokens per text: RoBERTa-style positions start after the pad id, so two fewer than the table holds."""
        pad = text_config.pad_token_id
        limit = int(text_config.max_position_embeddings) - (pad + 1 if pad is not None else 0)
        declared = getattr(self.tokenizer, "model_max_length", None)
        return min(limit, int(declared)) if isinstance(declared, int) and declared > 0 else limit

    # -- audio ---------------------------------------------------------------------------------------------------

    def _samples(self, clip: Any) -> np.ndarray:
        """A clip's samples at the model's rate."""
        return clip_samples(clip, self.sample_rate, "clap")

    def audio_features(self, clips: Sequence[AudioClip]) -> tuple[Any, Any]:
        """``(input_features, is_longer)`` tensors for a batch of clips, the same for a clip in any batch.

        The extractor repeats and pads a clip shorter than the window (``repeatpad``, as trained). Its random
        parts are pinned: ``is_longer`` is the truth (the extractor marks a random short clip as long when
        none is, which sends it through the fusion branch); a longer clip is centre-cropped for an unfused
        model, or fused from crops drawn with a fixed seed.
        """
        torch = self.torch
        features, longer = [], []
        for clip in clips:
            samples = self._samples(clip)
            is_longer = len(samples) > self.max_samples
            if is_longer and not self.fused:
                first = (len(samples) - self.max_samples) // 2
                samples, is_longer = samples[first : first + self.max_samples], False
            with _seeded_numpy():
                out = self.feature_extractor(
                    samples, sampling_rate=self.sample_rate, truncation=self.truncation, return_tensors="np"
                )
            features.append(out["input_features"][0])
            longer.append(is_longer and bool(out["is_longer"][0][0]))
        return torch.from_numpy(np.stack(features)), torch.tensor(longer)[:, None]

    # -- both towers ---------------------------------------------------------------------------------------------

    def embed(self, tower: str, batch: Sequence[Any]) -> np.ndarray:
        """``(len(batch), dim)`` float32 native vectors (unit length) for AudioClips or strings."""
        with self.torch.inference_mode():
            if tower == "audio":
                features, is_longer = self.audio_features(batch)
                output = self.model.get_audio_features(
                    input_features=features.to(self.device, self.dtype), is_longer=is_longer.to(self.device)
                )
            elif tower == "text":
                tokens = self.tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
                ).to(self.device)
                output = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
                )
            else:
                raise ValueError(f"clap has no {tower!r} tower; it embeds {sorted(self.towers)}")
        features = getattr(output, "pooler_output", output)  # transformers 5 returns an output object
        return features.float().cpu().numpy()


@hookimpl
def anybind_encoders(register: Any) -> None:
    register(
        "clap",
        ClapEncoder,
        description="HF ClapModel audio+text towers (hub id or local directory); audio cut to its window and rate",
    )
