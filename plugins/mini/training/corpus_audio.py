"""Audio of the anybind-mini corpus: General MIDI sounds (fluidsynth + FluidR3_GM) and spoken names (espeak-ng).

Every clip is 16 kHz mono 16-bit FLAC, leading and trailing silence trimmed to at most 50 ms, at most 2.0 s,
peak-normalised to -1 dBFS. Render parameters are drawn from ``random.Random`` seeded by strings, and each sound
concept renders in a fresh synthesizer, so a seed gives the same clips whichever worker renders them.

Held-out renders: sounds in the test split use MIDI notes and velocities (and, for percussion, drum kits) that no
train render uses; spoken names in the test split use two voices that no train render uses. A name that would last
over 2 s is spoken again 30 words/min faster (the record holds the speed used), so no word is cut off.
"""

from __future__ import annotations

import ctypes
import io
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
MAX_SECONDS = 2.0
EDGE_SILENCE = 0.05
SILENCE_DB = -50.0  # below the peak: what counts as silence when trimming
PEAK_DBFS = -1.0
RELEASE_TAIL = 0.5
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

TRAIN_VELOCITIES = (60, 90, 120)
TEST_VELOCITIES = (75, 105)
TRAIN_RENDERS, TEST_RENDERS = 40, 10

# espeak-ng 1.51's English voices, less the two held out. Write "en", not "en-gb": espeak-ng ignores a variant
# after "en-gb" ("en-gb+f1" speaks exactly as "en"), and it has no "en-us-nyc" (that name speaks as "en-us").
TRAIN_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan")
# voice variants (formants, breathiness, pitch range); f3 and m7 are left to the held-out voices
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f4", "f5", "klatt")
TEST_VOICES = ("en-029+f3", "en-gb-x-gbcwmd+m7")
SPEECH_TRAIN, SPEECH_TEST_PER_VOICE = 24, 3


@dataclass(frozen=True)
class SoundSpec:
    """A sound concept: the emoji label and the General MIDI programs (0-based) that play it.

    Melodic sounds play even MIDI notes of ``note_range`` in train and odd ones in test. Percussion (bank 128,
    channel 9) plays ``train_notes``/``test_notes`` on the drum kits ``programs``/``test_programs``.
    """

    label: str
    programs: tuple[int, ...]
    kind: str = "instrument"
    note_range: tuple[int, int] = (48, 84)
    percussion: bool = False
    train_notes: tuple[int, ...] = ()
    test_notes: tuple[int, ...] = ()
    test_programs: tuple[int, ...] = ()
    chords: bool = True

    def notes(self, split: str) -> tuple[int, ...]:
        """The MIDI notes this split may use."""
        if self.percussion:
            return self.train_notes if split == "train" else self.test_notes
        parity = 0 if split == "train" else 1
        return tuple(n for n in range(self.note_range[0], self.note_range[1] + 1) if n % 2 == parity)

    def kits(self, split: str) -> tuple[int, ...]:
        """The presets this split plays (drum kits differ between splits; melodic programs do not)."""
        return self.test_programs if self.percussion and split == "test" else self.programs


EFFECT_RANGE = (54, 72)
SOUNDS: tuple[SoundSpec, ...] = (
    SoundSpec("violin", (40,)),
    SoundSpec("trumpet", (56,)),
    SoundSpec("saxophone", (65,)),
    SoundSpec("guitar", (24, 25, 29)),
    SoundSpec("musical keyboard", (0, 4)),
    SoundSpec("banjo", (105,)),
    SoundSpec("accordion", (21,)),
    SoundSpec("flute", (73,), note_range=(60, 90)),
    SoundSpec("harp", (46,)),
    SoundSpec("church", (19,), note_range=(36, 72)),
    SoundSpec("musical note", (52,), note_range=(48, 79)),
    SoundSpec("postal horn", (60,), note_range=(48, 77)),
    SoundSpec("bell", (14,), note_range=(55, 84)),
    SoundSpec("bellhop bell", (9,), note_range=(72, 96), chords=False),
    SoundSpec("wind chime", (112,), note_range=(72, 96)),
    SoundSpec("long drum", (116,), note_range=(36, 64), chords=False),
    SoundSpec(
        "drum",
        (0, 16, 24),
        percussion=True,
        train_notes=(36, 38, 45, 49, 50),
        test_notes=(35, 40, 47, 57),
        test_programs=(8, 32),
    ),
    SoundSpec("maracas", (0, 16, 24), percussion=True, train_notes=(70,), test_notes=(70,), test_programs=(8, 32)),
    SoundSpec("wind face", (121,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("water wave", (122,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("bird", (123,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("telephone", (124,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("helicopter", (125,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("clapping hands", (126,), kind="effect", note_range=EFFECT_RANGE, chords=False),
    SoundSpec("water pistol", (127,), kind="effect", note_range=EFFECT_RANGE, chords=False),
)
"""The sound concepts (emojibase labels) and their GM programs; maracas differ only by kit and velocity."""


@dataclass(frozen=True)
class NoteRender:
    """One clip of a sound concept: notes played one after another (phrase) or together (chord)."""

    name: str
    split: str
    program: int
    bank: int
    notes: tuple[int, ...]
    velocity: int
    duration: float
    mode: str

    def params(self) -> dict[str, Any]:
        """The render parameters recorded in ``audio.jsonl``."""
        return {
            "program": self.program,
            "bank": self.bank,
            "notes": list(self.notes),
            "velocity": self.velocity,
            "duration": self.duration,
            "mode": self.mode,
        }


@dataclass(frozen=True)
class SpeechRender:
    """One spoken-name clip: espeak-ng voice (with variant), speed (words/min) and pitch (0-99)."""

    name: str
    split: str
    voice: str
    speed: int
    pitch: int

    def params(self) -> dict[str, Any]:
        """The render parameters recorded in ``audio.jsonl``."""
        return {"voice": self.voice, "speed": self.speed, "pitch": self.pitch}


def plan_notes(spec: SoundSpec, seed: int = 0) -> list[NoteRender]:
    """:data:`TRAIN_RENDERS` train and :data:`TEST_RENDERS` test renders, with disjoint notes and velocities."""
    renders = []
    splits = (("train", TRAIN_RENDERS, TRAIN_VELOCITIES), ("test", TEST_RENDERS, TEST_VELOCITIES))
    for split, count, velocities in splits:
        rng = random.Random(f"{seed}:{spec.label}:{split}")
        notes, kits = spec.notes(split), spec.kits(split)
        for i in range(count):
            mode = rng.choice(("note", "note", "phrase", "chord") if spec.chords else ("note", "note", "phrase"))
            size = 1 if mode == "note" else rng.randint(2, 3)
            if mode == "chord":
                root = rng.choice(notes)
                near = [n for n in notes if root < n <= root + 12] or [root]
                chosen = (root, *sorted(rng.sample(near, min(size - 1, len(near)))))
                chosen = tuple(sorted(set(chosen)))
            elif mode == "phrase" and spec.kind == "effect":
                chosen = (rng.choice(notes),) * size  # a ring, a shot, a tweet repeated
            else:
                chosen = tuple(rng.choice(notes) for _ in range(size))
            renders.append(
                NoteRender(
                    name=f"{split}-{i:03d}",
                    split=split,
                    program=kits[i % len(kits)],
                    bank=128 if spec.percussion else 0,
                    notes=chosen,
                    velocity=rng.choice(velocities),
                    duration=round(rng.uniform(0.3, 1.5), 2),
                    mode=mode,
                )
            )
    return renders


def plan_speech(label: str, seed: int = 0) -> list[SpeechRender]:
    """24 train renders, no two with the same voice and variant (render r: voice r mod 5, variant r mod 12), and
    6 test renders (2 held-out voices x 3)."""
    rng = random.Random(f"{seed}:{label}:speech")
    renders = []
    for r in range(SPEECH_TRAIN):
        voice, variant = TRAIN_VOICES[r % len(TRAIN_VOICES)], TRAIN_VARIANTS[r % len(TRAIN_VARIANTS)]
        speed, pitch = rng.randint(130, 200), rng.randint(30, 70)
        renders.append(SpeechRender(f"train-{r:03d}", "train", f"{voice}+{variant}", speed, pitch))
    for voice in TEST_VOICES:
        for _ in range(SPEECH_TEST_PER_VOICE):
            name = f"test-{len(renders) - SPEECH_TRAIN:03d}"
            renders.append(SpeechRender(name, "test", voice, rng.randint(130, 200), rng.randint(30, 70)))
    return renders


def trim_silence(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip with at most :data:`EDGE_SILENCE` of silence each side; ``ValueError`` if it is silent."""
    audio = np.asarray(audio, dtype=np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 0:
        raise ValueError("silent clip")
    loud = np.flatnonzero(np.abs(audio) > peak * 10 ** (SILENCE_DB / 20))
    margin = int(EDGE_SILENCE * sample_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def finish_clip(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Trim silence, cut at :data:`MAX_SECONDS` (20 ms fade-out) and peak-normalise to :data:`PEAK_DBFS`."""
    audio = trim_silence(audio, sample_rate)
    limit = int(MAX_SECONDS * sample_rate)
    if audio.size > limit:
        audio = audio[:limit].copy()
        fade = int(0.02 * sample_rate)
        audio[-fade:] *= np.linspace(1.0, 0.0, fade)
    return (audio * (10 ** (PEAK_DBFS / 20) / np.abs(audio).max())).astype(np.float32)


def write_flac(path: Path, audio: np.ndarray) -> float:
    """A finished clip written as 16-bit FLAC; returns its length in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    return round(audio.size / SAMPLE_RATE, 3)


def check_tools(soundfont: Path = DEFAULT_SOUNDFONT) -> None:
    """Raise ``RuntimeError`` saying what to install when fluidsynth, the soundfont or espeak-ng is missing."""
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as error:
        raise RuntimeError(
            f"fluidsynth not found ({error}): apt-get install fluidsynth fluid-soundfont-gm; pip install pyfluidsynth"
        ) from error
    if not soundfont.is_file():
        raise RuntimeError(f"soundfont {soundfont} not found: apt-get install fluid-soundfont-gm")
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng not found: apt-get install espeak-ng")


class Synth:
    """A fresh fluidsynth synthesizer at 16 kHz with one soundfont, rendering float samples (no dither)."""

    def __init__(self, soundfont: Path) -> None:
        import fluidsynth

        self.synth = fluidsynth.Synth(samplerate=float(SAMPLE_RATE))
        self.sfid = self.synth.sfload(str(soundfont))
        if self.sfid < 0:
            raise RuntimeError(f"fluidsynth could not load the soundfont {soundfont}")
        self.write = fluidsynth._fl.fluid_synth_write_float
        self.write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        self.write.restype = ctypes.c_int
        self.rendered = 0  # samples so far: fluidsynth works in blocks of 64, events take effect at block starts

    def samples(self, count: int) -> np.ndarray:
        """The next ``count`` samples, mono."""
        left, right = np.zeros(count, np.float32), np.zeros(count, np.float32)
        if count and self.write(self.synth.synth, count, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1) != 0:
            raise RuntimeError("fluid_synth_write_float failed")
        self.rendered += count
        return (left + right) / 2

    def render(self, render: NoteRender) -> np.ndarray:
        """One clip: the notes held ``duration`` seconds in all (a phrase splits it), then a release tail."""
        self.synth.system_reset()
        self.samples(1024 + (-self.rendered) % 64)  # start on a block boundary: the same clip whatever came before
        channel = 9 if render.bank == 128 else 0
        if self.synth.program_select(channel, self.sfid, render.bank, render.program) != 0:
            raise RuntimeError(f"no preset {render.bank}:{render.program} in the soundfont")
        step = render.duration / len(render.notes) if render.mode == "phrase" else 0.0
        events = []
        for i, note in enumerate(render.notes):
            start = i * step
            events += [(start, 1, note), (start + (step or render.duration), 0, note)]
        events.sort()
        parts, now = [], 0
        for time, on, note in events:
            at = round(time * SAMPLE_RATE)
            parts.append(self.samples(at - now))
            now = at
            if on:
                self.synth.noteon(channel, note, render.velocity)
            else:
                self.synth.noteoff(channel, note)
        parts.append(self.samples(int(min(RELEASE_TAIL, MAX_SECONDS) * SAMPLE_RATE)))
        return np.concatenate(parts)

    def close(self) -> None:
        """Free the synthesizer."""
        self.synth.delete()


def clip_record(
    path: Path, hexcode: str, label: str, kind: str, split: str, seconds: float, params: dict[str, Any]
) -> dict[str, Any]:
    """One ``audio.jsonl`` record: the clip's path (relative to the corpus), concept, kind, split and parameters."""
    return {
        "path": path.as_posix(),
        "hexcode": hexcode,
        "label": label,
        "kind": kind,
        "split": split,
        "seconds": seconds,
        **params,
    }


def render_sound(task: tuple[SoundSpec, str, int, str, str]) -> list[dict[str, Any]]:
    """All clips of one sound concept (a worker task): ``(spec, hexcode, seed, out_dir, soundfont)``."""
    spec, hexcode, seed, out_dir, soundfont = task
    synth = Synth(Path(soundfont))
    records = []
    try:
        for render in plan_notes(spec, seed):
            path = Path("audio") / spec.kind / hexcode / f"{render.name}.flac"
            seconds = write_flac(Path(out_dir) / path, finish_clip(synth.render(render)))
            records.append(clip_record(path, hexcode, spec.label, spec.kind, render.split, seconds, render.params()))
    finally:
        synth.close()
    return records


def speak(text: str, render: SpeechRender) -> np.ndarray:
    """espeak-ng's speech of ``text`` (22.05 kHz) resampled to 16 kHz mono float32."""
    import torch
    import torchaudio.functional as F

    command = ["espeak-ng", "--stdout", "-v", render.voice, "-s", str(render.speed), "-p", str(render.pitch), text]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed for {text!r} ({render.voice}): {done.stderr.decode(errors='replace')}")
    audio, rate = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1)))
    return F.resample(wave, rate, SAMPLE_RATE).numpy()


def render_speech(task: tuple[str, str, int, str]) -> list[dict[str, Any]]:
    """All spoken-name clips of one concept (a thread task): ``(label, hexcode, seed, out_dir)``."""
    label, hexcode, seed, out_dir = task
    records = []
    for render in plan_speech(label, seed):
        path = Path("audio") / "speech" / hexcode / f"{render.name}.flac"
        raw = speak(label, render)
        while trim_silence(raw).size > MAX_SECONDS * SAMPLE_RATE and render.speed < 260:  # speak faster, never cut
            render = replace(render, speed=render.speed + 30)
            raw = speak(label, render)
        seconds = write_flac(Path(out_dir) / path, finish_clip(raw))
        params = {"text": label, **render.params()}
        records.append(clip_record(path, hexcode, label, "speech", render.split, seconds, params))
    return records


def render_all(
    sounds: Sequence[tuple[SoundSpec, str]],
    spoken: Sequence[tuple[str, str]],
    out_dir: Path,
    seed: int = 0,
    soundfont: Path = DEFAULT_SOUNDFONT,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Render every sound ``(spec, hexcode)`` in ``workers`` processes, then every spoken name ``(label, hexcode)``
    in ``workers`` threads (each waiting on one espeak-ng); the ``audio.jsonl`` records, sorted by path."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    check_tools(soundfont)
    records: list[dict[str, Any]] = []
    sound_tasks = [(spec, hexcode, seed, str(out_dir), str(soundfont)) for spec, hexcode in sounds]
    with multiprocessing.get_context("spawn").Pool(max(1, min(workers, 2))) as pool:
        for result in pool.imap_unordered(render_sound, sound_tasks):
            records += result
    import torch

    torch.set_num_threads(1)
    speech_tasks = [(label, hexcode, seed, str(out_dir)) for label, hexcode in spoken]
    with ThreadPoolExecutor(max(1, min(workers, 2))) as threads:
        for result in threads.map(render_speech, speech_tasks):
            records += result
    return sorted(records, key=lambda record: record["path"])
