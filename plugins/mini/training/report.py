"""Markdown tables of a training run's figures (the ``--metrics`` JSON of :mod:`.run`) for ``docs/mini-model.md``.

python -m anybind.plugins.mini.training.report METRICS.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_ROWS = (
    ("held_out_concepts/twitter", "held-out concepts, Twemoji (a training style)"),
    ("held_out_concepts/google", "held-out concepts, Noto (a training style)"),
    ("held_out_concepts/openmoji", "held-out concepts, OpenMoji (held-out style)"),
    ("train_concepts/openmoji", "training concepts, OpenMoji (held-out style)"),
    ("train_concepts/twitter", "training concepts, Twemoji (seen in training)"),
)
AUDIO_ROWS = (
    "audio->text",
    "audio->text/instrument",
    "audio->text/effect",
    "audio->text/speech",
    "audio->image",
    "image->audio",
    "text->audio",
    "image->text",
    "text->image",
)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def image_table(info: dict) -> str:
    lines = [
        "| text → image among | queries = pictures | R@1 % | R@5 % | R@10 % | image → text R@1 % | R@5 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in IMAGE_ROWS:
        figures = info["image_metrics"].get(key)
        if figures:
            t2i, i2t = figures["text->image"], figures["image->text"]
            lines.append(
                f"| {title} | {t2i['n_queries']} | {_pct(t2i['R@1'])} | {_pct(t2i['R@5'])} | {_pct(t2i['R@10'])} "
                f"| {_pct(i2t['R@1'])} | {_pct(i2t['R@5'])} |"
            )
    return "\n".join(lines)


def audio_table(info: dict) -> str:
    summary, runs = info["audio_summary"], info["audio_runs"]
    seeds = sorted({run["training"]["seed"] for run in runs})
    first = runs[0]["metrics"]
    lines = [
        f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}; held-out renders.",
        "",
        "| direction | queries x keys | emergent R@1 % | emergent R@5 % | control R@1 % | control R@5 % |",
        "|---|---|---|---|---|---|",
    ]
    for direction in AUDIO_ROWS:
        if direction not in first:
            continue
        em, co = summary["image"][direction], summary["text"][direction]
        size = f"{first[direction]['n_queries']} x {first[direction]['n_keys']}"
        cells = [f"{_pct(d[k]['mean'])} ± {_pct(d[k]['std'])}" for d in (em, co) for k in ("R@1", "R@5")]
        lines.append(f"| {direction.replace('->', ' → ')} | {size} | {' | '.join(cells)} |")
    ratio = summary["ratio_audio_to_text"]
    lines += [
        "",
        f"Emergent / control, audio → text: R@1 {ratio['R@1']:.2f}, R@5 {ratio['R@5']:.2f}, R@10 {ratio['R@10']:.2f}.",
    ]
    return "\n".join(lines)


def per_seed(info: dict) -> str:
    lines = ["| seed | trained against | audio → text R@1 % | R@5 % | audio → image R@1 % | epochs | seconds |"]
    lines.append("|---|---|---|---|---|---|---|")
    for run in info["audio_runs"]:
        t, m = run["training"], run["metrics"]
        lines.append(
            f"| {t['seed']} | {'pictures (emergent)' if t['target'] == 'image' else 'label texts (control)'} "
            f"| {_pct(m['audio->text']['R@1'])} | {_pct(m['audio->text']['R@5'])} | {_pct(m['audio->image']['R@1'])} "
            f"| {t['epochs']} | {t['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Markdown tables of an anybind-mini training run")
    parser.add_argument("metrics", type=Path)
    info = json.loads(parser.parse_args(argv).metrics.read_text())
    print(image_table(info), "", audio_table(info), "", per_seed(info), sep="\n")


if __name__ == "__main__":
    main()
