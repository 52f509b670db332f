"""Train anybind-mini from a corpus and write the weights plus every figure ``docs/mini-model.md`` reports.

    python -m anybind.plugins.mini.training.run --corpus DIR --out plugins/mini/weights --seeds 0,1,2

1. image tower (seed = the first seed) against frozen MiniLM, the text head frozen at the identity by default;
2. per seed: the audio tower against the frozen image tower (emergent), and a control against the text head;
3. the weights of step 1 plus the emergent audio tower of the first seed go to ``--out``
   (``mini.safetensors`` + ``mini.json``); every figure (all seeds, both targets) to ``--metrics FILE``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from anybind.plugins.mini import minilm, weights
from anybind.plugins.mini.model import ConvTower, MiniConfig, MiniModel

from .data import Corpus, TextCache
from .evaluate import evaluate_audio, evaluate_images
from .train_audio import train_audio
from .train_image import train_image_text


def _mean_std(runs: list[dict], direction: str, key: str) -> dict:
    values = [run["metrics"][direction][key] for run in runs]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def summarise(audio_runs: list[dict]) -> dict:
    """Mean and spread over seeds for the emergent runs and the controls, and the emergent/control ratios."""
    out: dict = {}
    for target in ("image", "text"):
        runs = [run for run in audio_runs if run["training"]["target"] == target]
        out[target] = {
            direction: {key: _mean_std(runs, direction, key) for key in ("R@1", "R@5", "R@10")}
            for direction in runs[0]["metrics"]
        }
    emergent, control = out["image"]["audio->text"], out["text"]["audio->text"]
    out["ratio_audio_to_text"] = {key: emergent[key]["mean"] / max(control[key]["mean"], 1e-9) for key in emergent}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="weights directory to write")
    parser.add_argument("--metrics", type=Path, help="also write every figure here (JSON)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="image,text", help="audio runs: image (emergent), text (control)")
    parser.add_argument("--image-epochs", type=int, default=50)
    parser.add_argument("--audio-epochs", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-hidden", type=int, default=0, help="width of the text head's MLP (0: linear)")
    parser.add_argument("--batch-size", type=int, default=256, help="step 1's batch (concepts per step)")
    parser.add_argument("--soft", type=float, default=0.0, help="step 1's share of MiniLM-similarity targets")
    parser.add_argument(
        "--validation", type=float, default=0.0, help="share of training concepts held back to watch (0: none)"
    )
    parser.add_argument("--dim", type=int, default=384, help="width of the space (384: MiniLM's own)")
    parser.add_argument(
        "--head-lr-scale",
        type=float,
        default=0.0,
        help="text head learning rate / the towers' (0: frozen identity; needs --dim 384, --text-hidden 0)",
    )
    parser.add_argument("--image-align", type=float, default=0.0, help="step 1: weight of 1 - cos(picture, text)")
    parser.add_argument("--audio-align", type=float, default=3.0, help="step 2: weight of 1 - cos(clip, target)")
    parser.add_argument(
        "--audio-negatives", default="audio", choices=("audio", "all"), help="step 2: targets scored against each clip"
    )
    parser.add_argument("--soft-temperature", type=float, default=0.1, help="temperature of those targets")
    parser.add_argument(
        "--image-from", type=Path, help="skip step 1: take the image tower and text head from this weights directory"
    )
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    if "image" not in targets or not set(targets) <= {"image", "text"}:
        parser.error(f"--targets: 'image' (the shipped emergent tower), optionally with 'text'; not {args.targets!r}")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.monotonic()
    corpus = Corpus(args.corpus)
    cache = TextCache(corpus.root)

    if args.image_from:
        model = weights.load(args.image_from)
        image_training = weights.read_info(args.image_from)["image_training"]
    else:
        torch.manual_seed(seeds[0])
        model = MiniModel(MiniConfig(dim=args.dim, text_hidden=args.text_hidden))
        image_training = train_image_text(
            model,
            corpus,
            seed=seeds[0],
            epochs=args.image_epochs,
            batch_size=args.batch_size,
            soft=args.soft,
            soft_temperature=args.soft_temperature,
            validation_fraction=args.validation,
            head_lr_scale=args.head_lr_scale,
            align=args.image_align,
        )
        weights.save(model, args.out, {"image_training": image_training, "stage": "image and text only"})
    image_metrics = evaluate_images(model, corpus, cache, image_training.get("validation_fraction", 0.08))
    for name, figures in image_metrics.items():
        t2i = figures["text->image"]
        print(f"{name}: text->image R@1 {t2i['R@1']:.3f} R@5 {t2i['R@5']:.3f} (n={t2i['n_queries']})")

    audio_runs, shipped, shipped_training = [], None, {}
    for seed in seeds:
        for target in targets:
            torch.manual_seed(seed)
            run_model = copy.deepcopy(model)
            config = run_model.config
            run_model.audio = ConvTower(1, config.audio_channels, config.dim)
            training = train_audio(
                run_model,
                corpus,
                target=target,
                seed=seed,
                epochs=args.audio_epochs,
                align=args.audio_align,
                negatives=args.audio_negatives,
            )
            metrics = evaluate_audio(run_model, corpus, cache)
            print(
                f"seed {seed} audio->{target}: audio->text R@1 {metrics['audio->text']['R@1']:.3f} "
                f"R@5 {metrics['audio->text']['R@5']:.3f}; audio->image R@1 {metrics['audio->image']['R@1']:.3f}"
            )
            audio_runs.append({"training": training, "metrics": metrics})
            if target == "image" and seed == seeds[0]:
                shipped = run_model
                shipped_training = {k: v for k, v in training.items() if k != "history"}
    summary = summarise(audio_runs) if "text" in targets else {}
    print(f"emergent/control audio->text: {json.dumps(summary.get('ratio_audio_to_text'))}")

    info = {
        "trained": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "anybind.plugins.mini.training.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.monotonic() - started, 1),
        "text_encoder": {"package": minilm.PACKAGE, "sha256": minilm.weights_digest()},
        "corpus": json.loads((corpus.root / "sources.json").read_text())
        if (corpus.root / "sources.json").is_file()
        else None,
        "image_training": image_training,
        "image_metrics": image_metrics,
        "audio_runs": audio_runs,
        "audio_summary": summary,
        "shipped_audio_tower": {
            "target": "image",
            "seed": seeds[0],
            "training": shipped_training,
        },
    }
    kept = ("trained", "command", "machine", "text_encoder", "image_training", "shipped_audio_tower", "audio_summary")
    weights.save(shipped, args.out, {k: info[k] for k in kept})
    if args.metrics:
        args.metrics.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out} in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
