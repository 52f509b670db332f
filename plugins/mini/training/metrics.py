"""Retrieval metrics: recall@k of queries against keys with known correct keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at(queries: np.ndarray, keys: np.ndarray, truth: Sequence, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Fraction of queries with a correct key in the top k.

    ``truth[i]`` is the index of query i's correct key, or a sequence of indices when several keys are correct
    (a concept's many recordings): the best-scoring of them counts. Ties count against the query (a wrong key
    scoring equal to the correct one ranks ahead of it).
    """
    scores = np.asarray(queries, np.float32) @ np.asarray(keys, np.float32).T
    correct = np.zeros(scores.shape, dtype=bool)
    for row, keys_of_row in enumerate(truth):
        correct[row, np.atleast_1d(np.asarray(keys_of_row, dtype=np.int64))] = True
    best = np.where(correct, scores, -np.inf).max(axis=1)
    rank = 1 + (np.where(correct, -np.inf, scores) >= best[:, None]).sum(axis=1)
    out: dict = {f"R@{k}": float(np.mean(rank <= k)) for k in ks}
    out["n_queries"], out["n_keys"] = len(truth), len(keys)
    return out
