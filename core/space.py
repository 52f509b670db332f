"""Spaces: one image-anchored embedding space and the routes of every modality into it.

``space.embed(modality, items)`` decodes items with the modality's plugin, encodes them with the routed
encoder tower, applies the binding and L2-normalises: the result is always a C-contiguous float32
``(n, dim)`` array in the anchor space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anybind.bindings import Binding, load_binding

from .encoder import Encoder, EncoderOptions
from .errors import AnybindError, EmbeddingError, ItemError, ModelLoadError, SpaceError
from .modality import Modality, describe_item
from .plugin_host import PluginHost
from .space_config import SpaceConfig, split_spec

FINGERPRINT_FORMAT = 1


@dataclass(frozen=True)
class Route:
    """How one modality (or tower) reaches the anchor space: encoder tower, then binding."""

    encoder: Encoder
    tower: str
    binding: Binding

    @property
    def id(self) -> str:
        return f"{self.encoder.id}#{self.tower}+{self.binding.id}"


@dataclass
class EmbedResult:
    """Vectors for the items that could be embedded, and one error for each that could not.

    ``indices[i]`` is the position in the input of the item whose vector is ``vectors[i]``;
    ``failed[j]`` is the position of the item that ``errors[j]`` is about. Both are in input order.
    """

    vectors: np.ndarray
    indices: list[int] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def add_error(self, position: int, error: ItemError) -> None:
        self.failed.append(position)
        self.errors.append(error)


def decode_item(modality: Modality, item: Any, index: int) -> Any:
    """Decode one input with the modality's plugin; any failure becomes an :class:`ItemError` naming it."""
    try:
        return modality.decode(item)
    except ItemError:
        raise
    except Exception as exc:  # a plugin's decoder failing in its own way
        raise ItemError(describe_item(item, index), f"{type(exc).__name__}: {exc}") from exc


def _sorted(result: EmbedResult, blocks: list[np.ndarray]) -> EmbedResult:
    order = np.argsort(result.failed, kind="stable")
    result.failed = [result.failed[i] for i in order]
    result.errors = [result.errors[i] for i in order]
    if blocks:
        result.vectors = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
    return result


def _as_items(items: Any) -> Sequence[Any]:
    if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)):
        return [items]
    return items if isinstance(items, Sequence) else list(items)


class Space:
    """An anchor encoder (its image tower defines the space) plus a route for each modality it embeds."""

    def __init__(self, config: SpaceConfig, host: PluginHost, options: EncoderOptions) -> None:
        self.config = config
        self.host = host
        self.options = options
        self._encoders: dict[str, Encoder] = {}
        self.anchor = self._load_encoder(config.anchor)
        if "image" not in self.anchor.towers:
            raise SpaceError(f"anchor {config.anchor!r} has no image tower (it embeds {sorted(self.anchor.towers)})")
        self.dim = int(self.anchor.dim)
        identity = load_binding("identity")
        self.routes: dict[str, Route] = {tower: Route(self.anchor, tower, identity) for tower in self.anchor.towers}
        for key, spec in config.modalities.items():
            encoder = self.anchor if spec.encoder == "anchor" else self._load_encoder(spec.encoder)
            tower = host.modalities.get(key).tower if key in host.modalities else key
            if tower not in encoder.towers:
                raise SpaceError(f"modality {key!r}: encoder {spec.encoder!r} has no {tower!r} tower")
            binding = load_binding(spec.binding)
            if binding.id == "identity" and encoder.dim != self.dim:
                raise SpaceError(
                    f"modality {key!r}: encoder {spec.encoder!r} gives {encoder.dim}-d vectors but the anchor space "
                    f"is {self.dim}-d; an identity binding cannot map them (train a binding)"
                )
            self.routes[key] = Route(encoder, tower, binding)

    def _load_encoder(self, spec: str) -> Encoder:
        if spec not in self._encoders:
            name, ref = split_spec(spec)
            entry = self.host.encoders.entry(name)
            try:
                encoder = entry.value(ref, self.options)
            except AnybindError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"encoder {spec!r} failed to load: {type(exc).__name__}: {exc}") from exc
            if not isinstance(encoder, Encoder) or not isinstance(encoder.dim, int) or encoder.dim < 1:
                raise ModelLoadError(
                    f"encoder {name!r} (plugin {entry.plugin!r}) returned {encoder!r} for {spec!r}, not an "
                    "anybind.Encoder (id, dim > 0, towers, embed)"
                )
            self._encoders[spec] = encoder
        return self._encoders[spec]

    # -- identity ----------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the fingerprint is computed from: anchor weights, dimension, and every route."""
        return {
            "format": FINGERPRINT_FORMAT,
            "anchor": self.anchor.id,
            "dim": self.dim,
            "routes": {key: route.id for key, route in sorted(self.routes.items())},
        }

    @property
    def fingerprint(self) -> str:
        """A stable short string that changes when any encoder's weights, binding or route changes."""
        canonical = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return "anybind1:" + hashlib.sha256(canonical.encode()).hexdigest()[:24]

    @property
    def name(self) -> str:
        return self.config.name or self.config.anchor

    @property
    def modalities(self) -> list[str]:
        """Registered modalities this space can embed, sorted."""
        return sorted(e.name for e in self.host.modalities.entries() if self._route_key(e.value) is not None)

    def _route_key(self, modality: Modality) -> str | None:
        for key in (modality.name, modality.tower):
            if key in self.routes:
                return key
        return None

    def route(self, modality: str) -> tuple[Modality, Route]:
        """The modality's plugin and its route; errors name the modality and list what exists."""
        mod = self.host.modalities.get(modality)
        key = self._route_key(mod)
        if key is None:
            raise SpaceError(
                f"space {self.name!r} cannot embed modality {modality!r} (it goes through the {mod.tower!r} tower, and "
                f"this space has routes for {sorted(self.routes)}); add [modalities.{modality}] to a space file"
            )
        return mod, self.routes[key]

    # -- embedding ---------------------------------------------------------------------------------------

    def embed(self, modality: str, items: Iterable[Any]) -> np.ndarray:
        """L2-normalised float32 ``(n, dim)`` anchor-space vectors, one per item, in input order.

        Raises the first item's :class:`~anybind.errors.ItemError` if any item cannot be embedded; use
        :meth:`try_embed` to keep the rest of a batch.
        """
        result = self.try_embed(modality, items)
        if result.errors:
            raise result.errors[0]
        return result.vectors

    def try_embed(self, modality: str, items: Iterable[Any]) -> EmbedResult:
        """Embed what can be embedded; every item that fails is reported, named, and skipped."""
        mod, route = self.route(modality)
        seq = _as_items(items)
        batch_size = max(1, self.options.batch_size)
        result = EmbedResult(np.empty((0, self.dim), dtype=np.float32))
        blocks: list[np.ndarray] = []
        for start in range(0, len(seq), batch_size):
            decoded, positions = [], []
            for index in range(start, min(start + batch_size, len(seq))):
                try:
                    decoded.append(decode_item(mod, seq[index], index))
                    positions.append(index)
                except ItemError as exc:
                    result.add_error(index, exc)
            if decoded:
                vectors, kept = self._encode(route, decoded, positions, seq, result)
                blocks.append(vectors)
                result.indices.extend(kept)
        return _sorted(result, blocks)

    def try_encode(self, modality: str, decoded: Sequence[Any], labels: Sequence[Any]) -> EmbedResult:
        """Encode values already decoded by the modality's plugin (one batch); ``labels`` name them in errors.

        This is the second half of :meth:`try_embed`, for pipelines that decode in worker threads.
        """
        _, route = self.route(modality)
        result = EmbedResult(np.empty((0, self.dim), dtype=np.float32))
        if not decoded:
            return result
        vectors, kept = self._encode(route, list(decoded), list(range(len(decoded))), labels, result)
        result.indices.extend(kept)
        return _sorted(result, [vectors])

    def _encode(
        self, route: Route, decoded: list[Any], positions: list[int], seq: Sequence[Any], result: EmbedResult
    ) -> tuple[np.ndarray, list[int]]:
        """Encode one batch; if the batch fails, retry item by item so that only the culprit is lost."""
        try:
            return self._finish(route, route.encoder.embed(route.tower, decoded), len(decoded)), positions
        except Exception as exc:
            if len(decoded) == 1:
                label = describe_item(seq[positions[0]], positions[0])
                result.add_error(positions[0], ItemError(label, f"cannot be embedded: {exc}"))
                return np.empty((0, self.dim), dtype=np.float32), []
        blocks, kept = [], []
        for value, position in zip(decoded, positions, strict=True):
            vectors, ok = self._encode(route, [value], [position], seq, result)
            blocks.append(vectors)
            kept.extend(ok)
        return np.concatenate(blocks), kept

    def _finish(self, route: Route, native: Any, n: int) -> np.ndarray:
        native = np.asarray(native, dtype=np.float32)
        if native.shape != (n, route.encoder.dim):
            raise EmbeddingError(
                f"encoder {route.encoder.id!r} returned shape {native.shape}, expected {(n, route.encoder.dim)}"
            )
        bound = np.asarray(route.binding.apply(native), dtype=np.float32)
        if bound.shape != (n, self.dim):
            raise EmbeddingError(f"binding {route.binding.id!r} returned shape {bound.shape}, expected {(n, self.dim)}")
        if not np.isfinite(bound).all():
            raise EmbeddingError(f"encoder {route.encoder.id!r} produced NaN or infinite values")
        norms = np.linalg.norm(bound, axis=1, keepdims=True)
        if (norms == 0).any():
            raise EmbeddingError(f"encoder {route.encoder.id!r} produced an all-zero vector")
        return np.ascontiguousarray(bound / norms, dtype=np.float32)
