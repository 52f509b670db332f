"""How ``tests/data/v1/`` was made: stores written by anybind 0.1's own store code (format 1), kept as fixtures
for the migration test. Run from a checkout of the 0.1 store (commit aef7cd7) on the import path:

    python tests/data/make_v1_stores.py tests/data/v1

Vectors are seeded, so the test recomputes them independently (see ``v1_vectors`` in tests/test_migrate.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import anybind
from anybind.testing import build_tiny_clip


def unit_vectors(n: int, seed: int, dim: int = 16) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(out: Path) -> None:
    assert anybind.store.manifest.FORMAT_VERSION == 1, "run this with anybind 0.1's store code"
    clip = build_tiny_clip(Path(tempfile.mkdtemp()) / "tiny-clip")
    space = f"clip:{clip}"
    flat = anybind.Store.open(out / "flat", space=space, device="cpu")
    flat.add_vectors(
        "image",
        unit_vectors(40, seed=1),
        uris=[f"file:///pics/{i}.png" for i in range(40)],
        metadata=[{"n": i, "album": "x" if i % 3 == 0 else "y"} for i in range(40)],
    )
    flat.add_vectors("text", unit_vectors(10, seed=2), texts=[f"caption {i}" for i in range(10)])
    flat.add_vectors(
        "audio", unit_vectors(6, seed=3), uris=["file:///a.wav"] * 6, segments=[(i, i + 1.0) for i in range(6)]
    )
    flat.remove([2, 5])
    flat.add_vectors("image", unit_vectors(5, seed=4), metadata={"late": True})
    flat.close()
    ivf = anybind.Store.open(out / "ivf", space=space, device="cpu", index="IVF16,Flat")
    ivf.add_vectors("image", unit_vectors(1200, seed=5))
    ivf.optimize(target_recall=0.95)
    ivf.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
