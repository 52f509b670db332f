"""Training a binding the ImageBind way: InfoNCE against the frozen anchor vectors of paired data.

:func:`train_binding` takes paired native vectors (``source[i]`` is paired with ``target[i]``: an audio
clip and a photo of what makes the sound) and learns a head whose normalised output retrieves the
paired target among the others in its batch (symmetric cross-entropy over cosine similarity /
temperature). The targets never change (they *are* the anchor space). A seeded share of the pairs is
held out: its retrieval score decides which epoch's weights are kept and when to stop (``patience``
epochs without a better one), and its R@1/5/10 (source -> target retrieval among the held-out pairs)
is reported.

The linear part starts from the ridge (least-squares) solution, so training only refines the direction
of a map that is already close; an MLP starts as that linear map (its residual starts at zero).
:func:`train_bridge` learns through a modality both encoders share, e.g. CLAP text -> CLIP text from
captions alone, recorded as a binding that applies to another modality of the source encoder (audio).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from anybind.errors import AnybindError

from .learned import KINDS, LearnedBinding, forward, tensor_shapes

MIN_PAIRS = 8
RIDGE = 1e-3  # ridge strength per pair for the linear warm start
RECALL_AT = (1, 5, 10)
EVAL_CHUNK = 1024
MAX_RECALL_PAIRS = 5000  # held-out pairs ranked against each other for recall (all of them up to this many)
SMALL_HEAD = 256 * 256  # weight entries up to which training runs on one CPU thread
Progress = Callable[[int, int, dict[str, float]], None]


class TrainingError(AnybindError, ValueError):
    """Training data or settings a binding cannot be trained from (too few pairs, NaN rows, bad settings)."""


def _vectors(array: Any, name: str) -> np.ndarray:
    try:
        x = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{name} vectors are not a numeric array: {exc}") from None
    if x.ndim != 2 or x.shape[1] == 0:
        raise TrainingError(f"{name} vectors must be a 2-d (pairs, dim) array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        raise TrainingError(f"{name} row {rows[0]} holds NaN or infinite values{more}; drop or fix that pair")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise TrainingError(f"{name} row {int(np.flatnonzero(norms == 0)[0])} is an all-zero vector")
    return (x / norms[:, None]).astype(np.float32)


def check_settings(kind: str, hidden: int | None, **values: float) -> None:
    """:class:`TrainingError` naming the first setting out of range (``values`` by keyword: ``lr=...``)."""
    if kind not in KINDS:
        raise TrainingError(f"unknown binding kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "linear" and hidden is not None:
        raise TrainingError(f"a hidden size ({hidden}) applies to mlp bindings only, not {kind!r}")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise TrainingError(f"hidden size must be a positive integer, got {hidden!r}")
    rules = {
        "temperature": lambda v: v > 0,
        "holdout": lambda v: 0 <= v < 1,
        "epochs": lambda v: v >= 1,
        "lr": lambda v: v > 0,
        "weight_decay": lambda v: v >= 0,
        "batch_size": lambda v: v >= 2,
        "patience": lambda v: v >= 1,
    }
    words = {"holdout": "in [0, 1)", "batch_size": "at least 2", "weight_decay": "at least 0"}
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and rules[name](value)):
            raise TrainingError(f"{name} must be {words.get(name, 'positive')}, got {value!r}")


def split_pairs(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` pair indices: a seeded random share ``holdout`` of the pairs (at least 2) held out."""
    if holdout == 0:
        return np.arange(n), np.arange(0)
    n_held = max(2, round(n * holdout))
    if n - n_held < 2:
        raise TrainingError(f"holdout {holdout} of {n} pairs leaves {n - n_held} to train on; hold out less")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """For each ``queries[i]``: how many gallery vectors score strictly above ``gallery[i]`` by cosine.

    0 means found first. Ties count in the query's favour, so the same photo paired twice (two identical
    gallery vectors) never counts against either pair.
    """
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), EVAL_CHUNK):
        rows = np.arange(start, min(start + EVAL_CHUNK, len(q)))
        scores = q[rows] @ g.T
        right = scores[np.arange(len(rows)), rows][:, None]
        ranks[rows] = (scores > right).sum(axis=1)
    return ranks


def recall_at(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """``{"r@1": ..., "r@5": ..., "r@10": ...}``: the share of queries whose right answer ranks within k."""
    return {f"r@{k}": float(np.mean(ranks < k)) for k in ks}


def retrieval_recall(queries: np.ndarray, gallery: np.ndarray, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """R@k of ``queries[i]`` finding ``gallery[i]`` by cosine among all of ``gallery``."""
    return recall_at(retrieval_ranks(queries, gallery), ks)


def _ridge_init(x: np.ndarray, y: np.ndarray, rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The linear warm start: ridge least squares ``s_i y_i ≈ x_i Wᵀ + b``, alternating with per-pair scales ``s_i``.

    Targets are unit vectors but a linear map's outputs are not; fitting the scales too (a few rounds of
    alternating least squares) recovers the map's direction where plain least squares would bend it.
    The normal equations are built from ``x`` in place (no copy with a column of ones: pairs may be many).
    """
    n, d = x.shape
    gram = np.empty((d + 1, d + 1))
    gram[:d, :d] = x.T @ x + RIDGE * n * np.eye(d)  # no ridge on the bias
    gram[:d, d] = gram[d, :d] = x.sum(axis=0)
    gram[d, d] = n
    scale = np.ones(n, dtype=np.float32)
    for _ in range(rounds):
        scaled = y * scale[:, None]
        solution = np.linalg.solve(gram, np.vstack([x.T @ scaled, scaled.sum(axis=0)]).astype(np.float64))
        weight, bias = solution[:d].T.astype(np.float32), solution[d].astype(np.float32)
        fitted = np.einsum("ij,ij->i", x @ weight.T + bias, y)
        if fitted.mean() <= 0:
            break
        scale = np.clip(fitted / fitted.mean(), 0.05, None).astype(np.float32)
    return weight, bias


def _init_params(kind: str, hidden: int | None, x: np.ndarray, y: np.ndarray, generator: Any) -> dict[str, Any]:
    import torch

    weight, bias = _ridge_init(x, y)
    params = {"linear.weight": torch.tensor(weight), "linear.bias": torch.tensor(bias)}
    if kind == "mlp":
        shapes = tensor_shapes(kind, x.shape[1], y.shape[1], hidden)
        scale = 1.0 / math.sqrt(x.shape[1])
        params["hidden.weight"] = torch.randn(shapes["hidden.weight"], generator=generator) * scale
        params["hidden.bias"] = torch.zeros(shapes["hidden.bias"])
        params["out.weight"] = torch.zeros(shapes["out.weight"])  # the residual starts at zero
        params["out.bias"] = torch.zeros(shapes["out.bias"])
    return {name: value.float().requires_grad_(True) for name, value in params.items()}


def info_nce(bound: Any, target: Any, temperature: float) -> Any:
    """Symmetric InfoNCE of a batch: row ``i`` of ``bound`` should pick row ``i`` of ``target`` and vice versa."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(bound, dim=1) @ target.T / temperature
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _batches(perm: Any, batch_size: int) -> list[Any]:
    chunks = list(perm.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < 2:  # a one-pair batch has no negatives: fold it into the previous
        chunks[-2:] = [perm[-(len(chunks[-2]) + len(chunks[-1])) :]]
    return chunks


def _mean_loss(kind: str, params: Mapping[str, Any], x: Any, y: Any, temperature: float, batch_size: int) -> float:
    import torch

    with torch.no_grad():
        losses = [
            float(info_nce(forward(kind, params, x[b]), y[b], temperature)) * len(b)
            for b in _batches(torch.arange(len(x)), batch_size)
        ]
    return sum(losses) / len(x)


def _bound(kind: str, params: Mapping[str, Any], x: Any) -> np.ndarray:
    import torch

    with torch.no_grad():
        return forward(kind, params, x).numpy()


class _Run:
    """One training run: the data split, the head's parameters, and the best epoch seen so far."""

    def __init__(
        self,
        kind: str,
        hidden: int | None,
        x_all: np.ndarray,
        y_all: np.ndarray,
        train_idx: np.ndarray,
        held_idx: np.ndarray,
        temperature: float,
        batch_size: int,
        seed: int,
    ) -> None:
        import torch

        self.kind, self.temperature, self.batch_size = kind, temperature, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.from_numpy(x_all[train_idx]), torch.from_numpy(y_all[train_idx])
        self.xh, self.yh = torch.from_numpy(x_all[held_idx]), torch.from_numpy(y_all[held_idx])
        ranked = np.random.default_rng(seed).permutation(len(held_idx))[:MAX_RECALL_PAIRS]
        self.ranked = torch.from_numpy(np.sort(ranked))
        self.params = _init_params(kind, hidden, x_all[train_idx], y_all[train_idx], self.generator)
        self.epoch = self.best_epoch = 0
        self.best = self._snapshot()
        self.best_metrics = self._evaluate()
        self.recall = self._recall(self.best_metrics)

    def _snapshot(self) -> dict[str, np.ndarray]:
        return {name: value.detach().numpy().copy() for name, value in self.params.items()}

    def _evaluate(self) -> dict[str, float]:
        if not len(self.xh):
            return {"train_loss": _mean_loss(self.kind, self.params, self.x, self.y, self.temperature, self.batch_size)}
        ranks = retrieval_ranks(_bound(self.kind, self.params, self.xh[self.ranked]), self.yh[self.ranked].numpy())
        return {
            "held_out_loss": _mean_loss(self.kind, self.params, self.xh, self.yh, self.temperature, self.batch_size),
            "mrr": float(np.mean(1.0 / (ranks + 1))),
            **recall_at(ranks),
        }

    @staticmethod
    def _recall(metrics: Mapping[str, float]) -> dict[str, float] | None:
        return {f"r@{k}": metrics[f"r@{k}"] for k in RECALL_AT} if "mrr" in metrics else None

    def _train_epoch(self, optimizer: Any) -> float:
        import torch

        total = 0.0
        for batch in _batches(torch.randperm(len(self.x), generator=self.generator), self.batch_size):
            loss = info_nce(forward(self.kind, self.params, self.x[batch]), self.y[batch], self.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total / len(self.x)

    def fit(self, epochs: int, lr: float, weight_decay: float, patience: int, progress: Progress | None) -> None:
        """Train up to ``epochs`` epochs, keeping the best held-out epoch; stop after ``patience`` without one."""
        import torch

        optimizer = torch.optim.AdamW(self.params.values(), lr=lr, weight_decay=weight_decay)
        stale = 0
        for epoch in range(1, epochs + 1):
            self.epoch = epoch
            metrics = {"loss": self._train_epoch(optimizer), **self._evaluate()}
            if "mrr" not in metrics or metrics["mrr"] > self.best_metrics["mrr"] + 1e-9:
                self.best, self.best_epoch, self.best_metrics, stale = self._snapshot(), epoch, metrics, 0
                self.recall = self._recall(metrics)
            else:
                stale += 1
            if progress is not None:
                progress(epoch, epochs, metrics)
            if stale >= patience:
                break


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (small heads are overhead-bound: one thread is fastest)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_binding(
    source: np.ndarray,
    target: np.ndarray,
    *,
    kind: str = "linear",
    hidden: int | None = None,
    temperature: float = 0.05,
    holdout: float = 0.2,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    patience: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
    info: Mapping[str, Any] | None = None,
) -> tuple[LearnedBinding, dict[str, Any]]:
    """Train a binding from ``source[i]`` (native vectors) to ``target[i]`` (frozen anchor-space vectors).

    Each epoch is one shuffled pass of InfoNCE steps (AdamW) over the training pairs. The epoch kept is
    the one with the best held-out retrieval (mean reciprocal rank of the right target, i.e. R@1 refined
    by how far below first the misses rank; ties keep the earlier epoch): InfoNCE keeps lowering its loss
    by pushing bound vectors away from near negatives after retrieval stops improving, which bends the
    map away from the targets. ``patience`` epochs without a better held-out score stop training. With
    ``holdout=0`` every epoch runs and the last one is kept.

    Returns the binding (best held-out epoch) and a report: ``pairs``, ``train``, ``held_out``,
    ``epochs_run``, ``best_epoch`` (0 = the ridge warm start was best), ``stopped_early``,
    ``held_out_loss``, ``held_out_mrr``, ``recall`` (``{"r@1", "r@5", "r@10"}`` of held-out sources
    retrieving their targets among ``recall_among`` held-out pairs — all of them, up to
    :data:`MAX_RECALL_PAIRS`; ``None`` with ``holdout=0``) and the settings. An MLP's hidden width
    defaults to the wider of the two dimensions. ``info`` (source and anchor ids, modality, ...) goes into the
    binding's ``info`` with the report merged under ``training`` and ``held_out_recall``.
    ``progress(epoch, epochs, metrics)`` is called after every epoch. Deterministic for a ``seed`` on CPU.
    """
    x_all, y_all = _vectors(source, "source"), _vectors(target, "target")
    if len(x_all) != len(y_all):
        raise TrainingError(f"{len(x_all)} source vectors but {len(y_all)} target vectors; pairs must line up")
    if len(x_all) < MIN_PAIRS:
        raise TrainingError(f"{len(x_all)} pairs are too few to train a binding; at least {MIN_PAIRS} are needed")
    check_settings(
        kind,
        hidden,
        temperature=temperature,
        holdout=holdout,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        patience=patience,
    )
    if kind == "mlp" and hidden is None:
        hidden = max(x_all.shape[1], y_all.shape[1])
    train_idx, held_idx = split_pairs(len(x_all), holdout, seed)
    largest = max(x_all.shape[1], hidden or 0) * max(y_all.shape[1], hidden or 0)
    with _torch_threads(1 if largest <= SMALL_HEAD else None):
        run = _Run(kind, hidden, x_all, y_all, train_idx, held_idx, temperature, batch_size, seed)
        run.fit(epochs, lr, weight_decay, patience, progress)
    report: dict[str, Any] = {
        "pairs": len(x_all),
        "train": len(train_idx),
        "held_out": len(held_idx),
        "epochs": epochs,
        "epochs_run": run.epoch,
        "best_epoch": run.best_epoch,
        "stopped_early": run.epoch < epochs,
        "held_out_loss": run.best_metrics.get("held_out_loss"),
        "held_out_mrr": run.best_metrics.get("mrr"),
        "recall": run.recall,
        "recall_among": len(run.ranked),
        "temperature": temperature,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "patience": patience,
        "holdout": holdout,
        "seed": seed,
        "init": "ridge",
    }
    merged = dict(info or {})
    merged["training"] = {**dict(merged.get("training") or {}), **{k: v for k, v in report.items() if k != "recall"}}
    merged["held_out_recall"] = run.recall
    merged.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return LearnedBinding(kind, run.best, merged), report


def train_bridge(
    source_text: np.ndarray,
    target_text: np.ndarray,
    *,
    applies_to: str,
    bridge: str = "text",
    info: Mapping[str, Any] | None = None,
    **settings: Any,
) -> tuple[LearnedBinding, dict[str, Any]]:
    """A binding learned through a modality both encoders embed (``bridge``, e.g. captions as text).

    ``source_text[i]`` is the source encoder's vector of caption ``i`` (CLAP text), ``target_text[i]``
    the anchor's (CLIP text). The map is meant for the source encoder's ``applies_to`` modality (audio),
    which its own training aligned with its text; ``info`` records ``bridge`` and ``applies_to``.
    Settings and return value as :func:`train_binding`.
    """
    merged = {**dict(info or {}), "bridge": bridge, "applies_to": applies_to}
    merged.setdefault("source_modality", bridge)
    merged.setdefault("source_tower", bridge)
    return train_binding(source_text, target_text, info=merged, **settings)
