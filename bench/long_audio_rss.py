"""Peak memory of indexing one long recording: ``python bench/long_audio_rss.py [--minutes 10] [--model full|tiny]``.

Builds (offline, random weights) a CLAP with the real input settings of ``laion/clap-htsat-unfused`` (48 kHz,
10 s windows, 64 mel bins) — ``full`` is the real-size architecture (153M parameters), ``tiny`` a small one
with the same input pipeline — a tiny CLIP anchor, and a random linear binding CLAP-audio -> CLIP. It writes a
generated WAV (a chirp under noise, 16-bit, 48 kHz) and runs ``anybind index`` on it in a child process,
reporting that process's peak RSS, next to the peak RSS of a child that only loads the same space (the
model's own share) — the difference is what streaming the file costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 48_000


def write_long_wav(path: Path, minutes: float) -> None:
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as out:
        for start in range(0, total, RATE * 10):
            t = np.arange(start, min(start + RATE * 10, total)) / RATE
            chirp = 0.3 * np.sin(2 * np.pi * (200 + 20 * (t % 60)) * t)
            out.write((chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32))


def build_models(root: Path, model: str) -> Path:
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from anybind.bindings import LearnedBinding, save_binding
    from anybind.plugins.hf_loading import weights_id
    from anybind.testing import build_tiny_clip, train_tokenizer

    clip = build_tiny_clip(root / "clip")
    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    if model == "full":
        config = ClapConfig(text_config={"vocab_size": len(tokenizer)})
    else:
        config = ClapConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
            ),
            audio_config=dict(depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32),
            projection_dim=24,
        )
    clap = root / "clap"
    ClapModel(config).save_pretrained(clap)
    tokenizer.save_pretrained(clap)
    ClapFeatureExtractor().save_pretrained(clap)  # the laion/clap-htsat-unfused defaults: 48 kHz, 10 s, 64 mels
    source_dim = config.projection_dim
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((16, source_dim)) / np.sqrt(source_dim)).astype(np.float32)
    binding = LearnedBinding(
        "linear",
        {"linear.weight": weights, "linear.bias": np.zeros(16, np.float32)},
        info={"source": weights_id("clap", str(clap)), "anchor": weights_id("clip", str(clip))},
    )
    save_binding(binding, root / "audio")
    space = root / "space.toml"
    space.write_text(
        f'anchor = "clip:{clip}"\n\n[modalities.audio]\nencoder = "clap:{clap}"\nbinding = "{root / "audio"}"\n'
    )
    return space


def peak_rss_mib(argv: list[str]) -> tuple[float, float, str]:
    """Run a child; its peak RSS (MiB) and wall time. Each measurement is its own child (ru_maxrss is a max)."""
    probe = (
        "import resource, subprocess, sys, time, json; t = time.time(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.time() - t, "
        "p.returncode, p.stderr[-2000:]]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    peak, wall, code, stderr = json.loads(out.stdout)
    if code != 0:
        raise SystemExit(f"{argv} failed ({code}):\n{stderr}")
    return peak, wall, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    args, extra = parser.parse_known_args()  # the rest goes to `anybind index` (e.g. --batch-size 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        space = build_models(root, args.model)
        wav = root / "long.wav"
        write_long_wav(wav, args.minutes)
        load_only = [sys.executable, "-c", f"import anybind; anybind.load_space({str(space)!r}, device='cpu')"]
        base, base_wall, _ = peak_rss_mib(load_only)
        cmd = [
            sys.executable,
            "-m",
            "anybind",
            "index",
            str(wav),
            "--db",
            str(root / "db"),
            "--space",
            str(space),
            "--device",
            "cpu",
            *extra,
            "--no-progress",
            "--json",
        ]
        started = time.time()
        peak, wall, stderr = peak_rss_mib(cmd)
        print(
            json.dumps(
                {
                    "model": args.model,
                    "index_options": extra,
                    "minutes": args.minutes,
                    "wav_bytes": wav.stat().st_size,
                    "peak_rss_mib_index": round(peak, 1),
                    "peak_rss_mib_load_space_only": round(base, 1),
                    "index_wall_s": round(wall, 1),
                    "load_wall_s": round(base_wall, 1),
                    "summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
                    "elapsed_s": round(time.time() - started, 1),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
