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
from .segment_embedding import SegmentBatcher, SegmentedItem, lazy_segments
from .segments import SegmentPlan
from .space_config import RouteConfig, SpaceConfig, split_spec

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
        self.anchor = self.load_encoder(config.anchor)
        if "image" not in self.anchor.towers:
            raise SpaceError(f"anchor {config.anchor!r} has no image tower (it embeds {sorted(self.anchor.towers)})")
        self.dim = int(self.anchor.dim)
        identity = load_binding("identity")
        self.routes: dict[str, Route] = {tower: Route(self.anchor, tower, identity) for tower in self.anchor.towers}
        for key, spec in config.modalities.items():
            encoder = self.anchor if spec.encoder == "anchor" else self.load_encoder(spec.encoder)
            tower = host.modalities.get(key).tower if key in host.modalities else key
            if tower not in encoder.towers:
                raise SpaceError(f"modality {key!r}: encoder {spec.encoder!r} has no {tower!r} tower")
            binding = load_binding(spec.binding)
            self._check_binding(key, spec, encoder, binding, tower)
            if encoder is self.anchor and binding.id == "identity" and tower in self.routes and key != tower:
                continue  # only segment settings ([modalities.video] fps = 2): the tower's route, same fingerprint
            self.routes[key] = Route(encoder, tower, binding)
        for key in config.modalities:  # bad window/overlap/fps: an error now, not half-way through an index run
            if (
                key in host.modalities
                and host.modalities.get(key).temporal
                and self._route_key(host.modalities.get(key))
            ):
                self.segment_plan(key)

    def _check_binding(self, key: str, spec: RouteConfig, encoder: Encoder, binding: Binding, tower: str) -> None:
        """A binding must map this encoder's vectors into this anchor's space: dims and recorded encoder ids."""
        where = f"modality {key!r}: binding {spec.binding!r}"
        if binding.id == "identity" and encoder is not self.anchor and "binding" not in spec.model_fields_set:
            raise SpaceError(
                f"modality {key!r}: encoder {spec.encoder!r} is not the anchor, so its vectors are not in the anchor's "
                "space even when the widths match; give a learned binding (anybind bind train), or write "
                'binding = "identity" if the two encoders really share one space'
            )
        if binding.id == "identity":
            if encoder.dim != self.dim:
                raise SpaceError(
                    f"modality {key!r}: encoder {spec.encoder!r} gives {encoder.dim}-d vectors but the anchor space "
                    f"is {self.dim}-d; an identity binding cannot map them (train one: anybind bind train)"
                )
            return
        source_dim, target_dim = getattr(binding, "source_dim", None), getattr(binding, "target_dim", None)
        if source_dim is not None and source_dim != encoder.dim:
            raise SpaceError(f"{where} maps {source_dim}-d vectors, but encoder {spec.encoder!r} gives {encoder.dim}-d")
        if target_dim is not None and target_dim != self.dim:
            raise SpaceError(f"{where} maps into {target_dim}-d, but the anchor space is {self.dim}-d")
        info = getattr(binding, "info", None) or {}
        trained_for = info.get("applies_to") or info.get("source_modality")
        if trained_for and trained_for not in (key, tower):
            raise SpaceError(f"{where} was trained for {trained_for} vectors, not for {key}")
        for role, expected in (("anchor", self.anchor.id), ("source", encoder.id)):
            recorded = info.get(role)
            if recorded and recorded != expected:
                raise SpaceError(
                    f"{where} was trained with {role} encoder {recorded}, but this space's is {expected}; "
                    "a binding only fits the exact weights it was trained on (retrain it: anybind bind train)"
                )

    def load_encoder(self, spec: str) -> Encoder:
        """The encoder for ``NAME:REF`` (loaded once per space and cached)."""
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
        """Embed what can be embedded; every item that fails is reported, named, and skipped.

        An item of a time-based modality (audio, video) becomes one vector: the normalised mean of its segment
        vectors (use :meth:`try_embed_segments` for one vector per segment).
        """
        mod, route = self.route(modality)
        return self._try_embed(mod, route, _as_items(items), bind=True)

    def try_native(self, modality: str, items: Iterable[Any], *, encoder: str) -> EmbedResult:
        """Unit vectors of ``items`` in ``encoder``'s own (native) space, before any binding.

        For training bindings: ``encoder`` is a spec (``clap:DIR``) whose tower for ``modality`` embeds the
        items; audio and video are pooled over their segments (cut to that encoder's window).
        """
        mod = self.host.modalities.get(modality)
        source = self.load_encoder(encoder)
        if mod.tower not in source.towers:
            towers = sorted(source.towers)
            raise SpaceError(f"encoder {encoder!r} has no {mod.tower!r} tower for {modality!r} (it has {towers})")
        return self._try_embed(mod, Route(source, mod.tower, load_binding("identity")), _as_items(items), bind=False)

    def _try_embed(self, mod: Modality, route: Route, seq: Sequence[Any], bind: bool) -> EmbedResult:
        dim = self.dim if bind else route.encoder.dim
        result = EmbedResult(np.empty((0, dim), dtype=np.float32))
        if mod.temporal:
            vectors: list[np.ndarray] = []
            for item in self._segmented(mod, route, seq, bind):
                if item.error is not None:
                    result.add_error(item.key, item.error)
                else:
                    vectors.append(item.pooled())
                    result.indices.append(item.key)
            order = np.argsort(result.indices, kind="stable")
            result.indices = [result.indices[i] for i in order]
            return _sorted(result, [np.stack([vectors[i] for i in order])] if vectors else [])
        batch_size = max(1, self.options.batch_size)
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
                vectors_, kept = self._encode(route, decoded, positions, seq, result, bind)
                blocks.append(vectors_)
                result.indices.extend(kept)
        return _sorted(result, blocks)

    # -- time segments -----------------------------------------------------------------------------------

    def segment_plan(self, modality: str, encoder: Encoder | None = None) -> SegmentPlan | None:
        """How ``modality``'s inputs are cut into segments (``None`` for modalities embedded whole).

        Window, overlap and fps come from the space file's ``[modalities.NAME]`` if set there, else from the
        encoder (CLAP's 10 s input), else from the modality plugin's defaults.
        """
        mod = self.host.modalities.get(modality)
        if not mod.temporal:
            return None
        if encoder is None:
            encoder = self.route(modality)[1].encoder
        settings: dict[str, Any] = dict(mod.segment_defaults)
        model = dict((getattr(encoder, "inputs", None) or {}).get(mod.tower, {}))
        settings.update(model)
        chosen = self.config.modalities.get(mod.name) or self.config.modalities.get(mod.tower)
        if chosen is not None:
            settings.update({k: v for k in ("window", "overlap", "fps") if (v := getattr(chosen, k)) is not None})
        window = settings.get("window")
        if window is None:
            raise SpaceError(f"modality {modality!r} has no segment window: set window in [modalities.{modality}]")
        limit = model.get("window")
        if limit is not None and window > limit + 1e-9:
            raise SpaceError(
                f"[modalities.{modality}] window = {window} s is longer than encoder {encoder.id}'s {limit} s input"
            )
        overlap = float(settings.get("overlap", 0.0))
        if overlap >= window:
            raise SpaceError(f"[modalities.{modality}] overlap {overlap} s is not shorter than the window ({window} s)")
        rate = settings.get("sample_rate")
        fps = settings.get("fps")
        return SegmentPlan(
            float(window),
            float(window) - overlap,
            sample_rate=int(rate) if rate else None,
            fps=float(fps) if fps else None,
            timeout=float(settings.get("timeout", 30.0)),
        )

    def segment_batcher(self, modality: str) -> tuple[SegmentPlan, SegmentBatcher]:
        """The plan and a :class:`SegmentBatcher` that embeds segments of ``modality`` into this space."""
        _, route = self.route(modality)
        plan = self.segment_plan(modality)
        if plan is None:
            raise SpaceError(f"modality {modality!r} is not cut into time segments")
        return plan, self._batcher(route, bind=True)

    def _batcher(self, route: Route, bind: bool) -> SegmentBatcher:
        dim = self.dim if bind else route.encoder.dim

        def encode(values: list[Any], labels: list[str]) -> EmbedResult:
            return self._encode_batch(route, values, labels, bind)

        return SegmentBatcher(encode, self.options.batch_size, dim)

    def _segmented(self, mod: Modality, route: Route, seq: Sequence[Any], bind: bool) -> list[SegmentedItem]:
        plan = self.segment_plan(mod.name, route.encoder)
        assert plan is not None and mod.segment is not None
        batcher = self._batcher(route, bind)
        done: list[SegmentedItem] = []
        for index, item in enumerate(seq):
            done += batcher.feed(index, describe_item(item, index), lazy_segments(mod.segment, item, plan))
        return done + batcher.flush()

    def try_embed_segments(self, modality: str, items: Iterable[Any]) -> list[SegmentedItem]:
        """One :class:`SegmentedItem` per input, in input order: its segments' times and vectors, or its error."""
        mod, route = self.route(modality)
        if not mod.temporal:
            raise SpaceError(f"modality {modality!r} is not cut into time segments; use embed()")
        return sorted(self._segmented(mod, route, _as_items(items), bind=True), key=lambda item: item.key)

    def embed_segments(self, modality: str, item: Any) -> SegmentedItem:
        """The segments of one audio/video input: ``starts``, ``ends`` (seconds) and unit ``vectors``."""
        (result,) = self.try_embed_segments(modality, [item])
        if result.error is not None:
            raise result.error
        return result

    def try_encode(self, modality: str, decoded: Sequence[Any], labels: Sequence[Any]) -> EmbedResult:
        """Encode values already decoded by the modality's plugin (one batch); ``labels`` name them in errors.

        This is the second half of :meth:`try_embed`, for pipelines that decode in worker threads.
        """
        _, route = self.route(modality)
        if not decoded:
            return EmbedResult(np.empty((0, self.dim), dtype=np.float32))
        return self._encode_batch(route, list(decoded), labels, bind=True)

    def _encode_batch(self, route: Route, values: list[Any], labels: Sequence[Any], bind: bool) -> EmbedResult:
        """One batch of decoded values -> an EmbedResult (positions within the batch; failures named by labels)."""
        result = EmbedResult(np.empty((0, self.dim if bind else route.encoder.dim), dtype=np.float32))
        vectors, kept = self._encode(route, values, list(range(len(values))), labels, result, bind)
        result.indices.extend(kept)
        return _sorted(result, [vectors])

    def _encode(
        self,
        route: Route,
        decoded: list[Any],
        positions: list[int],
        seq: Sequence[Any],
        result: EmbedResult,
        bind: bool = True,
    ) -> tuple[np.ndarray, list[int]]:
        """Encode one batch; if the batch fails, retry item by item so that only the culprit is lost."""
        try:
            return self._finish(route, route.encoder.embed(route.tower, decoded), len(decoded), bind), positions
        except Exception as exc:
            if len(decoded) == 1:
                label = describe_item(seq[positions[0]], positions[0])
                result.add_error(positions[0], ItemError(label, f"cannot be embedded: {exc}"))
                return np.empty((0, self.dim if bind else route.encoder.dim), dtype=np.float32), []
        blocks, kept = [], []
        for value, position in zip(decoded, positions, strict=True):
            vectors, ok = self._encode(route, [value], [position], seq, result, bind)
            blocks.append(vectors)
            kept.extend(ok)
        return np.concatenate(blocks), kept

    def _finish(self, route: Route, native: Any, n: int, bind: bool = True) -> np.ndarray:
        native = np.asarray(native, dtype=np.float32)
        if native.shape != (n, route.encoder.dim):
            raise EmbeddingError(
                f"encoder {route.encoder.id!r} returned shape {native.shape}, expected {(n, route.encoder.dim)}"
            )
        bound = np.asarray(route.binding.apply(native), dtype=np.float32) if bind else native
        if bind and bound.shape != (n, self.dim):
            raise EmbeddingError(f"binding {route.binding.id!r} returned shape {bound.shape}, expected {(n, self.dim)}")
        if not np.isfinite(bound).all():
            raise EmbeddingError(f"encoder {route.encoder.id!r} produced NaN or infinite values")
        norms = np.linalg.norm(bound.astype(np.float64), axis=1, keepdims=True)
        if (norms == 0).any():
            raise EmbeddingError(f"encoder {route.encoder.id!r} produced an all-zero vector")
        return np.ascontiguousarray(bound / norms, dtype=np.float32)
