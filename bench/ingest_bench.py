"""Ingest benchmark: ``anybind`` indexing vs the one-at-a-time tutorial pattern, with the same encoder.

``python bench/ingest_bench.py [--quick]`` prints the section; ``bench/run.py`` calls :func:`run`.

The encoder is a real-size, randomly initialised CLIP ViT-B/32 (vision: 768 wide, 12 layers, 12 heads, 32 px
patches, 224 px input; text: 512 wide, 12 layers, 8 heads, with the tiny test tokenizer's vocabulary; 512-d
projections), saved with ``save_pretrained`` next to a ``CLIPImageProcessor`` with the real ViT-B/32 settings, so
the FLOPs per image are those of the real model. The photos are generated: 640x480 or 480x640 gradients with
random shapes and sensor-like noise, 3 in 4 JPEG and 1 in 4 PNG, seeded. Each system runs in its own child
process (``common.run_in_child``) on the same files, one after the other, with torch's default thread count:

- **one at a time**: for each file, ``PIL.Image.open``, the HF processor on that image, ``get_image_features``
  under ``torch.no_grad``, L2 normalisation, ``collection.add`` of that one vector into a persistent chromadb
  collection — the pattern of most tutorials;
- **anybind**: ``Store.open(db, space="clip:MODEL", device="cpu", batch_size=B).add_files([dir])``, the function
  ``anybind index`` calls: hashing and decoding in worker threads, batched preprocessing and encoding, FAISS +
  SQLite commit;
- **raw forward**: every image preprocessed first (not timed), then only ``get_image_features`` on batches of 32.

The same three run again with **anybind-mini**, the space that ships with anybind (its 64 px CNN image tower,
1.3 M parameters): one at a time = PIL, the tower's own preprocessing (``image_array``: pad to a square, resize
to 64 px), a batch-1 forward and one ``collection.add`` per file; anybind = ``add_files`` into a store with
``space="anybind-mini"``; raw = the tower alone on pre-processed batches of 32.

Every timed region excludes model loading and starts after an untimed warm-up forward (one or two images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    FIG_DIR,
    Section,
    figure_link,
    log,
    machine_info,
    md_table,
    run_in_child,
    save_figure,
    utc_now,
    versions,
)

IMAGES_FULL, IMAGES_QUICK = 2000, 96  # quick: 3 batches (200 images took ~7 min on the shared 2-core VM)
BATCH = 32
SEED = 6
CHECK = 4  # images whose vectors are compared across the systems (same encoder, same preprocessing)
TARGET_RATIO, TARGET_OVERHEAD = 10.0, 0.30
VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224
)
TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
PROJECTION = 512
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
Target = tuple[str, bool | None, str]  # (target, met? None = not measured, why)

# -- inputs --------------------------------------------------------------------------------------------------


def _photo(index: int) -> Any:
    """One photo-like RGB image: a two-colour gradient at a random angle, 3-11 shapes, Gaussian noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([SEED, index])
    width, height = (640, 480) if rng.random() < 0.8 else (480, 640)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x / width * np.cos(angle) + y / height * np.sin(angle)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) or 1.0)
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = Image.fromarray((low + (high - low) * ramp[..., None]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        xs, ys = np.sort(rng.integers(0, width, 2)), np.sort(rng.integers(0, height, 2))
        box = [int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(2, 12)))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_photo(directory: Path, index: int) -> Path:
    image = _photo(index)
    if index % 4 == 3:
        path = directory / f"photo_{index:05d}.png"
        image.save(path, "PNG")
    else:
        path = directory / f"photo_{index:05d}.jpg"
        image.save(path, "JPEG", quality=90)
    return path


def generate_images(directory: Path, count: int) -> list[Path]:
    """``count`` seeded photo-like JPEG/PNG files in ``directory`` (reused when already generated).

    The record of what was generated lies next to the folder, not in it: anything in it would be indexed.
    """
    stamp = directory.with_suffix(".json")
    wanted = {"count": count, "seed": SEED, "version": 1}
    if stamp.exists() and directory.is_dir() and json.loads(stamp.read_text()) == wanted:
        return _listing(str(directory))
    stamp.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        paths = list(pool.map(lambda i: _write_photo(directory, i), range(count)))
    stamp.write_text(json.dumps(wanted))
    return sorted(paths)


def build_vit_b32(directory: Path) -> Path:
    """Save a randomly initialised real-size CLIP ViT-B/32 + tokenizer + real image processor (reused if there)."""
    return build_clip(directory, VISION, TEXT, PROJECTION)


def build_clip(directory: Path, vision: dict[str, int], text_config: dict[str, int], projection: int) -> Path:
    """Save a randomly initialised CLIP of this architecture + the test tokenizer + an image processor with the
    real CLIP settings (bicubic resize of the short side, centre crop, CLIP mean/std), reused when already there."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from anybind.testing import BOS, EOS, PAD, train_tokenizer

    stamp = directory / "bench-built.json"
    wanted = {"vision": vision, "text": text_config, "projection": projection, "seed": SEED}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    tokenizer = train_tokenizer()
    text = dict(text_config, vocab_size=len(tokenizer), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(SEED)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    size = vision["image_size"]
    CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    ).save_pretrained(directory)
    stamp.write_text(json.dumps(wanted))
    return directory


# -- the systems (each runs in its own child process) ----------------------------------------------------


def _listing(images: str) -> list[Path]:
    return sorted(p for p in Path(images).iterdir() if p.suffix in (".jpg", ".png"))


def _unit(vectors: Any) -> list[list[float]]:
    array = np.asarray(vectors, dtype=np.float32)
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).tolist()


def _load_hf(model: str, device: str = "cpu") -> tuple[Any, Any]:
    """The CLIP model (fp16 on a GPU, as anybind runs it there) and its image processor."""
    import torch
    from transformers import AutoImageProcessor, CLIPModel

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    clip = CLIPModel.from_pretrained(model, dtype=dtype).to(device).eval()
    return clip, AutoImageProcessor.from_pretrained(model)


def _stop(start: float, cpu: float) -> dict[str, Any]:
    """Wall and CPU seconds since ``start`` / ``cpu``, torch's thread count and the load average now."""
    import torch

    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "torch_threads": torch.get_num_threads(),
        "load_after": list(os.getloadavg()),
    }


class _NoStore:
    """Stands in for the chromadb collection where chromadb is not installed (``db=None``): adds nothing."""

    def __init__(self) -> None:
        self.added = 0

    def add(self, ids: list[str], **_: Any) -> None:
        self.added += len(ids)

    def count(self) -> int:
        return self.added


def _one_at_a_time(images: str, db: str | None, preprocess: Any, forward: Any) -> dict[str, Any]:
    """The tutorial loop, timed by stage: per file open (decode to RGB), ``preprocess(image)``, ``forward(inputs)``
    (a unit vector as a list) and ``collection.add`` of that one item into a persistent chromadb collection
    (``db=None``: no store at all, so the loop is faster than the tutorial's and a ratio against it is a floor)."""
    from PIL import Image

    paths = _listing(images)
    if db is None:
        collection: Any = _NoStore()
    else:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=db, settings=Settings(anonymized_telemetry=False))
        collection = client.get_or_create_collection("photos", embedding_function=None)
    forward(preprocess(Image.open(paths[0]).convert("RGB")))  # warm-up: one image, not added
    stages = dict.fromkeys(("open", "preprocess", "forward", "add"), 0.0)
    check: list[list[float]] = []
    load_before, cpu, start = list(os.getloadavg()), time.process_time(), time.perf_counter()
    for number, path in enumerate(paths):
        t0 = time.perf_counter()
        image = Image.open(path).convert("RGB")
        t1 = time.perf_counter()
        inputs = preprocess(image)
        t2 = time.perf_counter()
        embedding = forward(inputs)
        t3 = time.perf_counter()
        collection.add(ids=[str(number)], embeddings=[embedding], metadatas=[{"path": str(path)}])
        t4 = time.perf_counter()
        for stage, took in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[stage] += took
        if number < CHECK:
            check.append(embedding)
    result = _stop(start, cpu)
    result.update(items=collection.count(), stages=stages, load_before=load_before, check=_unit(check))
    return result


def child_one_at_a_time(model: str, images: str, db: str | None, device: str = "cpu") -> dict[str, Any]:
    """The tutorial pattern: open, preprocess, encode and ``collection.add`` one image at a time."""
    import torch

    clip, processor = _load_hf(model, device)

    def forward(inputs: Any) -> list[float]:
        with torch.no_grad():
            output = clip.get_image_features(pixel_values=inputs["pixel_values"].to(device, clip.dtype))
        features = getattr(output, "pooler_output", output).float()  # transformers 5 returns an output object
        return (features / features.norm(dim=-1, keepdim=True))[0].tolist()

    result = _one_at_a_time(images, db, lambda image: processor(images=image, return_tensors="pt"), forward)
    result["processor"] = type(processor).__name__
    return result


def child_anybind(
    images: str,
    db: str,
    batch_size: int,
    model: str = "",
    space: str = "",
    device: str = "cpu",
    workers: int | None = None,
) -> dict[str, Any]:
    """``Store.open(...).add_files([dir])`` — what ``anybind index DIR --db DB --space SPACE`` runs (default
    space: ``clip:MODEL``; ``workers``: decode threads, anybind's default when None)."""
    import torch  # noqa: F401 - imported before timing, as the CLI would have

    from anybind import Store

    paths = _listing(images)
    store = Store.open(db, space=space or f"clip:{model}", device=device, batch_size=batch_size)
    store.space.embed("image", paths[:2])  # loads the model and warms it up; not stored
    load_before, cpu, start = list(os.getloadavg()), time.process_time(), time.perf_counter()
    report = store.add_files([images], workers=workers)
    result = _stop(start, cpu)
    result.update(items=len(report.ids), errors=len(report.errors), load_before=load_before)
    ids = [report.added[str(path)][0] for path in paths[:CHECK]]
    result["check"] = _unit(store.vectors(ids))
    if not space:
        from transformers import AutoImageProcessor

        result["processor"] = type(AutoImageProcessor.from_pretrained(model)).__name__  # the class anybind loads
    result["decode_workers"] = workers or min(4, os.cpu_count() or 1)
    store.close()
    return result


def _raw(batches: list[Any], forward: Any) -> dict[str, Any]:
    """Time ``forward(batch)`` (returns the batch's vectors) over pre-processed batches, after a 2-image warm-up."""
    import torch

    check: list[Any] = []
    with torch.inference_mode():
        forward(batches[0][:2])  # warm-up
        load_before, cpu, start = list(os.getloadavg()), time.process_time(), time.perf_counter()
        for pixels in batches:
            out = forward(pixels)
            if not check:
                check = out[:CHECK].tolist()
        result = _stop(start, cpu)
    result.update(items=sum(len(b) for b in batches), load_before=load_before, check=_unit(check))
    return result


def child_raw(model: str, images: str, batch_size: int, device: str = "cpu") -> dict[str, Any]:
    """Only ``get_image_features`` on pre-decoded, pre-processed tensors in host memory, in batches (on a GPU: the
    copy to it, the fp16 forward and the vectors' copy back are timed, as anybind does all three)."""
    from PIL import Image

    clip, processor = _load_hf(model, device)
    paths = _listing(images)
    batches = []
    for first in range(0, len(paths), batch_size):  # decoding and preprocessing: not timed
        chunk = [Image.open(p).convert("RGB") for p in paths[first : first + batch_size]]
        batches.append(processor(images=chunk, return_tensors="pt")["pixel_values"])

    def forward(pixels: Any) -> Any:
        output = clip.get_image_features(pixel_values=pixels.to(device, clip.dtype))
        return getattr(output, "pooler_output", output).float().cpu()  # .cpu() waits for the GPU

    result = _raw(batches, forward)
    result["processor"] = type(processor).__name__
    return result


def _load_mini() -> Any:
    from anybind.plugins.mini import weights

    return weights.load(weights.BUILTIN).eval()


def child_mini_one_at_a_time(images: str, db: str) -> dict[str, Any]:
    """The tutorial pattern with anybind-mini's image tower (its own ``image_array`` preprocessing)."""
    import torch

    from anybind.plugins.mini.model import image_array

    model = _load_mini()

    def forward(pixels: Any) -> list[float]:
        with torch.inference_mode():
            return model.embed_images(pixels)[0].tolist()  # unit length already

    def preprocess(image: Any) -> Any:
        return torch.from_numpy(image_array(image, model.config.image_size)[None])

    return _one_at_a_time(images, db, preprocess, forward)


def child_mini_raw(images: str, batch_size: int) -> dict[str, Any]:
    """Only anybind-mini's image tower on pre-decoded, pre-processed batches."""
    import torch
    from PIL import Image

    from anybind.plugins.mini.model import image_array

    model = _load_mini()
    size = model.config.image_size
    paths = _listing(images)
    batches = [  # decoding and preprocessing: not timed
        torch.from_numpy(np.stack([image_array(Image.open(p).convert("RGB"), size) for p in paths[i : i + batch_size]]))
        for i in range(0, len(paths), batch_size)
    ]
    return _raw(batches, model.embed_images)


def vision_gflop(vision: dict[str, int] = VISION, projection: int = PROJECTION) -> float:
    """GFLOP of one image through the vision tower + projection (2 FLOP per multiply-add; norms etc. left out)."""
    width, mlp, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    tokens = patches + 1  # + the class token
    patch_embed = patches * 3 * vision["patch_size"] ** 2 * width
    per_layer = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    return 2 * (patch_embed + layers * per_layer + width * projection) / 1e9


def _gflops(rate: float | None) -> str:
    return f"{rate * vision_gflop():.0f}" if rate else "n/a"


# -- the section -------------------------------------------------------------------------------------------


def _rate(result: dict[str, Any]) -> float | None:
    if "error" in result or not result.get("seconds"):
        return None
    return result["items"] / result["seconds"]


def _agreement(results: dict[str, dict[str, Any]], names: list[str]) -> float | None:
    """Smallest cosine between the vectors two of ``names`` computed for the same image (1.0 = same encoder)."""
    checks = [np.asarray(results[n]["check"]) for n in names if "check" in results.get(n, {})]
    if len(checks) < 2:
        return None
    return float(min((a * checks[0]).sum(axis=1).min() for a in checks[1:]))


def measure(quick: bool, workdir: Path) -> dict[str, Any]:
    """Generate the inputs, run every system in its own child process and return the raw numbers."""
    count = IMAGES_QUICK if quick else IMAGES_FULL
    root = workdir / "ingest"
    log(f"ingest: generating {count} images and the ViT-B/32 checkpoint")
    images = generate_images(root / f"images-{count}", count)
    model = build_vit_b32(root / "clip-vit-b32-random")
    limit = 1800 if quick else 4 * 3600
    files = {"images": str(root / f"images-{count}")}
    clip = {**files, "model": str(model)}
    plan: list[tuple[str, str, dict[str, Any]]] = [
        ("raw", "child_raw", {**clip, "batch_size": BATCH}),
        ("one_at_a_time", "child_one_at_a_time", {**clip, "db": str(root / "chroma")}),
        (f"anybind_b{BATCH}", "child_anybind", {**clip, "db": str(root / f"anybind-b{BATCH}"), "batch_size": BATCH}),
    ]
    if not quick:
        plan.append(("anybind_b64", "child_anybind", {**clip, "db": str(root / "anybind-b64"), "batch_size": 64}))
    plan += [
        ("mini_raw", "child_mini_raw", {**files, "batch_size": BATCH}),
        ("mini_one_at_a_time", "child_mini_one_at_a_time", {**files, "db": str(root / "chroma-mini")}),
        (
            f"mini_anybind_b{BATCH}",
            "child_anybind",
            {**files, "db": str(root / "anybind-mini"), "batch_size": BATCH, "space": "anybind-mini"},
        ),
    ]
    runs: dict[str, dict[str, Any]] = {}
    for name, function, kwargs in plan:
        if "db" in kwargs:
            shutil.rmtree(kwargs["db"], ignore_errors=True)
        log(f"ingest: {name} on {count} images")
        runs[name] = run_in_child("ingest_bench", function, limit, **kwargs)
        rate = _rate(runs[name])
        log(f"ingest: {name}: " + (f"{rate:.2f} items/s" if rate else runs[name].get("error", "?")))
    agreement = _agreement(runs, [n for n in runs if not n.startswith("mini_")])
    mini_agreement = _agreement(runs, [n for n in runs if n.startswith("mini_")])
    for result in runs.values():  # the vectors themselves do not belong in results.json
        result.pop("check", None)
    image_bytes = sum(p.stat().st_size for p in images)
    return {
        "images": count,
        "image_bytes": image_bytes,
        "jpeg": sum(p.suffix == ".jpg" for p in images),
        "png": sum(p.suffix == ".png" for p in images),
        "model": "CLIP ViT-B/32 architecture, random init",
        "runs": runs,
        "vector_agreement_min_cosine": agreement,
        "mini_vector_agreement_min_cosine": mini_agreement,
    }


def _targets(ratio: float | None, overhead: float | None, numbers: dict[str, Any]) -> list[Target]:
    one = numbers["runs"]["one_at_a_time"]
    forward_only = one["items"] / one["stages"]["forward"] if "stages" in one else None
    raw = _rate(numbers["runs"]["raw"])
    ceiling = raw / forward_only if raw and forward_only else None
    numbers["batch32_vs_batch1_forward"] = ceiling
    if ratio is None:
        ingest = ("anybind ingest >= 10x the one-at-a-time pattern (ViT-B/32, CPU)", None, "a run failed")
    else:
        why = f"{ratio:.2f}x measured"
        if ceiling is not None:
            share = one["stages"]["forward"] / sum(one["stages"].values())
            why += (
                f". (a) spends {share:.0%} of its time in batch-1 forwards, and on this CPU a batch-{BATCH} forward "
                f"is only {ceiling:.2f}x faster per image than a batch-1 forward (measured: raw vs (a)'s forward "
                f"time), so no pipeline around this model can reach much more than {ceiling:.1f}x here. 10x needs "
                "hardware that batch 1 leaves mostly idle (a GPU) or a tutorial loop dominated by per-item overhead"
            )
        ingest = ("anybind ingest >= 10x the one-at-a-time pattern (ViT-B/32, CPU)", ratio >= TARGET_RATIO, why)
    if overhead is None:
        pipe = ("pipeline overhead <= 30% (ViT-B/32, CPU)", None, "a run failed")
    elif overhead < 0:
        pipe = (
            "pipeline overhead <= 30% (ViT-B/32, CPU)",
            True,
            f"{overhead:.0%}: anybind measured faster than the raw forward alone, which it cannot be; the difference "
            "is timing noise (other work on the shared cores, see 'CPU cores busy'), so the overhead is within noise",
        )
    else:
        pipe = (
            "pipeline overhead <= 30% (ViT-B/32, CPU)",
            overhead <= TARGET_OVERHEAD,
            f"{overhead:.0%}: anybind at {1 - overhead:.0%} of the raw forward's images/s (decode, preprocessing, "
            "hashing and commit share the 2 cores with the model)",
        )
    return [ingest, pipe, _mini_target(numbers)]


def _stage_split(stages: dict[str, float]) -> str:
    """The one-at-a-time loop's seconds per stage as shares: ``open 3%, preprocess 2%, ...``."""
    total = sum(stages.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items())


def _mini_target(numbers: dict[str, Any]) -> Target:
    """The 10x target with anybind-mini, and the ceiling set by decoding: anybind must still open and preprocess
    every file, so with all cores decoding it cannot beat (a)'s total time / ((a)'s decode time / cores)."""
    name = "anybind ingest >= 10x the one-at-a-time pattern (anybind-mini)"
    runs = numbers["runs"]
    one, ours = runs.get("mini_one_at_a_time", {}), runs.get(f"mini_anybind_b{BATCH}", {})
    one_rate, our_rate = _rate(one), _rate(ours)
    if not one_rate or not our_rate:
        return (name, None, "a run failed")
    ratio = our_rate / one_rate
    numbers["mini_ratio_anybind_vs_one_at_a_time"] = ratio
    stages = one["stages"]
    total, decode = sum(stages.values()), stages["open"] + stages["preprocess"]
    cores = os.cpu_count() or 1
    ceiling = total / (decode / cores)
    numbers["mini_decode_ceiling"] = ceiling
    split = _stage_split(stages)
    why = (
        f"{ratio:.2f}x measured. (a)'s time: {split}. Opening, decoding and preprocessing are work anybind has to "
        f"do as well: with all {cores} cores on them and nothing else, a pipeline that decodes every pixel, as (a) "
        f"does, could reach at most {ceiling:.1f}x here (a decoder that skips work, such as JPEG's DCT-domain "
        "downscaling, would change the pixels the model sees)"
    )
    return (name, ratio >= TARGET_RATIO, why)


def _figure(rows: list[tuple[str, float]], path: Path, encoder: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.2))
    labels, values = [r[0] for r in rows], [r[1] for r in rows]
    bars = ax.barh(labels, values, color=["#999999"] + ["#2b6cb0"] * (len(rows) - 2) + ["#444444"])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"images / s ({encoder}, CPU)")
    ax.set_xlim(0, max(values) * 1.2)
    return save_figure(fig, path)


def render(numbers: dict[str, Any], command: str) -> Section:
    """The Markdown section, the figure and the target verdicts for measured ``numbers``."""
    runs = numbers["runs"]
    one_rate, raw_rate = _rate(runs["one_at_a_time"]), _rate(runs["raw"])
    b_rate = _rate(runs[f"anybind_b{BATCH}"])
    ratio = b_rate / one_rate if b_rate and one_rate else None
    overhead = 1 - b_rate / raw_rate if b_rate and raw_rate else None
    numbers.update(ratio_anybind_vs_one_at_a_time=ratio, pipeline_overhead=overhead)
    labels = {  # name: (table row, figure bar)
        "one_at_a_time": (
            "(a) one at a time: PIL + processor + forward + chromadb `add`, per image",
            "(a) one at a time + chromadb",
        ),
        f"anybind_b{BATCH}": (f"(b) anybind `add_files` = `anybind index`, batch {BATCH}", f"(b) anybind, bs {BATCH}"),
        "anybind_b64": ("(b) anybind `add_files` = `anybind index`, batch 64", "(b) anybind, bs 64"),
        "raw": (f"raw `get_image_features`, pre-processed tensors, batch {BATCH}", f"raw forward, bs {BATCH}"),
    }
    labels |= {
        "mini_one_at_a_time": (
            "anybind-mini (a) one at a time: PIL + `image_array` + forward + chromadb `add`, per image",
            "(a) one at a time + chromadb",
        ),
        f"mini_anybind_b{BATCH}": (
            f"anybind-mini (b) anybind `add_files` = `anybind index`, batch {BATCH}",
            f"(b) anybind, bs {BATCH}",
        ),
        "mini_raw": (f"anybind-mini raw image tower, pre-processed tensors, batch {BATCH}", f"raw forward, bs {BATCH}"),
    }
    rows, bars, mini_bars = [], [], []
    clip_names = ("one_at_a_time", f"anybind_b{BATCH}", "anybind_b64", "raw")
    mini_names = ("mini_one_at_a_time", f"mini_anybind_b{BATCH}", "mini_raw")
    for name in (*clip_names, *mini_names):
        if name not in runs:
            continue
        run = runs[name]
        rate = _rate(run)
        cpu = run["cpu_seconds"] / run["seconds"] if rate else None
        base = _rate(runs.get("mini_one_at_a_time" if name.startswith("mini_") else "one_at_a_time", {}))
        versus = rate / base if rate and base else None
        rows.append([labels[name][0], run.get("items"), run.get("seconds"), rate, versus, cpu, run.get("peak_rss_mib")])
        if "error" in run:
            rows[-1][0] += f" — failed: {run['error']}"
        if rate:
            (mini_bars if name.startswith("mini_") else bars).append((labels[name][1], rate))
    table = md_table(["system", "images", "timed s", "images/s", "vs (a)", "CPU cores busy", "peak RSS MiB"], rows)
    figures = [_figure(bars, FIG_DIR / "ingest_throughput.png", "CLIP ViT-B/32 architecture")] if len(bars) >= 2 else []
    if len(mini_bars) >= 2:
        figures.append(_figure(mini_bars, FIG_DIR / "ingest_throughput_mini.png", "anybind-mini"))
    targets = _targets(ratio, overhead, numbers)
    stages = runs["one_at_a_time"].get("stages")
    lines = [
        f"Two encoders, each compared with itself: a real-size CLIP ViT-B/32 built from its config with random "
        f"weights (the first rows), and anybind-mini, the space that ships with anybind (64 px CNN image tower, "
        f"1.3 M parameters; the rows so named). Same {numbers['images']:,} generated photos for every row "
        f"({numbers['jpeg']} JPEG + {numbers['png']} PNG, 640x480/480x640, {numbers['image_bytes'] / 2**20:.0f} MiB).",
        "",
        table,
        "",
        *(figure_link(f) for f in figures),
        "",
        "- ViT-B/32: (b)/(a) = " + (f"**{ratio:.2f}x**" if ratio is not None else "n/a (a run failed)") + "; "
        "pipeline overhead = 1 - (b)/raw = " + (f"**{overhead:.0%}**." if overhead is not None else "n/a."),
    ]
    mini_rates = [_rate(runs.get(n, {})) for n in mini_names]
    if all(mini_rates):
        one, ours, raw = mini_rates
        lines.append(
            f"- anybind-mini: (b)/(a) = **{ours / one:.2f}x**; the raw tower alone runs {raw:,.0f} images/s on "
            f"pre-processed batches, and (b), which also reads, decodes and resizes every photo, {ours / raw:.0%} of "
            "that."
        )
    for target, met, why in targets:
        verdict = "not measured" if met is None else ("**met**" if met else "**not met**")
        lines.append(f"- Target: {target} — {verdict}: {why}.")
    if stages:
        lines.append(f"- Where ViT-B/32 (a)'s time goes: {_stage_split(stages)}.")
    threads = runs["raw"].get("torch_threads", "?")
    loads = ", ".join(f"{name} {run['load_before'][0]:.1f}" for name, run in runs.items() if "load_before" in run)
    agreement = numbers.get("vector_agreement_min_cosine")
    mini_agreement = numbers.get("mini_vector_agreement_min_cosine")
    lines += [
        f"- Timed: (a) the loop over all files (open, processor — for anybind-mini its `image_array` — "
        "`get_image_features` under `torch.no_grad` — for anybind-mini `embed_images` under `torch.inference_mode` —, "
        "normalise, `collection.add` of one item into a `chromadb.PersistentClient` collection); (b) the "
        "`add_files` call alone (walk, hashing and decoding in worker threads, batched preprocessing and encoding "
        "under `torch.inference_mode`, FAISS Flat + SQLite commit with fsync); raw: only `get_image_features` "
        "on tensors preprocessed beforehand. Model loading and an untimed warm-up forward (1-2 images) per system "
        f"are excluded. torch threads: {threads} in every child; 'CPU cores busy' = CPU seconds / wall seconds of "
        "the timed part.",
        "- Each system runs alone in its own child process, one after the other, on the same files; peak RSS is "
        "that child's high-water mark (model included). Other work may share this machine's cores: 1-minute load "
        f"average before each run: {loads} on {os.cpu_count()} logical cores (full record in results.json).",
        f"- The vectors of the same images agree across the systems (smallest cosine: ViT-B/32 {agreement:.4f}"
        + (f", anybind-mini {mini_agreement:.4f})." if mini_agreement is not None else "; anybind-mini not checked).")
        if agreement is not None
        else "- Vector agreement not checked (a run failed).",
        f"- The vision tower costs {vision_gflop():.1f} GFLOP per image (counted from the config: matmuls, "
        f"convolution and attention, 2 FLOP per multiply-add) whatever the batch; the raw batch-{BATCH} forward "
        f"reached {_gflops(raw_rate)} GFLOP/s on this CPU.",
        f"- Command: `{command}`; {utc_now()}.",
    ]
    return Section(title="Ingest", markdown="\n".join(lines), figures=figures, results=numbers, targets=targets)


def run(quick: bool, workdir: Path) -> Section:
    """Measure and render the ingest section (quick: 96 images, full: 2,000)."""
    numbers = measure(quick, Path(workdir))
    numbers["machine"], numbers["versions"] = machine_info(), versions()
    for package in ("transformers", "pillow"):
        numbers["versions"][package] = _version(package)
    command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "bench/ingest_bench.py"
    return render(numbers, command)


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{IMAGES_QUICK} images instead of {IMAGES_FULL}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/anybind-bench"))
    args = parser.parse_args()
    section = run(args.quick, args.workdir)
    print(f"## {section.title}\n\n{section.markdown}")
    print(json.dumps(section.results, indent=1, default=str)[:4000], file=sys.stderr)
