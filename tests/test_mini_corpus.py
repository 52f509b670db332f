"""The anybind-mini corpus builder's pure logic: families, the split, sources, render plans, clips and videos.

No npm, network or big downloads: the npm tarballs are faked in a temporary directory. The checks that render
real audio skip when fluidsynth, the GM soundfont or espeak-ng is missing.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from anybind.plugins.mini.training import corpus, corpus_audio, corpus_emoji, corpus_video
from anybind.plugins.mini.training.corpus_emoji import ALWAYS_TRAIN_FAMILIES, Concept, family_of


@pytest.mark.parametrize(
    ("label", "subgroup", "family"),
    [
        ("man technologist", "person-role", "technologist"),
        ("woman technologist", "person-role", "technologist"),
        ("technologist", "person-role", "technologist"),
        ("man in tuxedo", "person-role", "in tuxedo"),
        ("person in tuxedo", "person-role", "in tuxedo"),
        ("kiss: woman, man", "family", "kiss"),
        ("couple with heart: man, man", "family", "couple with heart"),
        ("woman and man holding hands", "family", "holding hands"),
        ("men holding hands", "family", "holding hands"),
        ("family: man, woman, boy", "family", "family"),
        ("family: adult, child", "person-symbol", "family"),
        ("family", "person-symbol", "family"),
        ("person walking: facing right", "person-activity", "walking"),
        ("woman walking", "person-activity", "walking"),
        ("old man", "person", "person"),
        ("man: red hair", "person", "person"),
        ("girl", "person", "person"),
        ("old key", "household", "old key"),
        ("mermaid", "person-fantasy", "merperson"),
        ("Mrs. Claus", "person-fantasy", "santa claus"),
        ("men\u2019s room", "transport-sign", "room"),
        ("women\u2019s room", "transport-sign", "room"),
        ("flag: Germany", "country-flag", "flag"),
        ("flag: Scotland", "subdivision-flag", "flag"),
        ("chequered flag", "flag", "flag"),
        ("keycap: 10", "keycap", "keycap"),
        ("one o\u2019clock", "time", "clock"),
        ("twelve-thirty", "time", "clock"),
        ("alarm clock", "time", "alarm clock"),
        ("grinning face", "face-smiling", "grinning face"),
        ("grinning face with big eyes", "face-smiling", "grinning face with big eyes"),
        ("cat face", "animal-mammal", "cat face"),
        ("violin", "musical-instrument", "violin"),
    ],
)
def test_family_rules(label: str, subgroup: str, family: str) -> None:
    assert family_of(label, subgroup) == family


def make_concepts() -> list[Concept]:
    """About 300 synthetic concepts in families of 1-3, plus flags, clocks, a family group and a big family."""
    concepts = []

    def add(label: str, subgroup: str = "thing") -> None:
        code = f"{len(concepts):05X}"
        concepts.append(Concept(code, "?", label, [], "objects", subgroup, family_of(label, subgroup)))

    for i in range(100):
        name = "thing " + chr(97 + i % 26) + chr(97 + i // 26)  # speakable: ASCII letters only
        add(name)
        if i % 3 == 0:
            add(f"man {name}", "person-role")
            add(f"woman {name}", "person-role")
    for i in range(40):
        add(f"flag: Land {i}", "country-flag")
        add(f"family: man, girl {i}", "family")
    for word in ("one", "two", "three"):
        add(f"{word} o\u2019clock", "time")
    for i in range(13):
        add(f"person: hair {i}", "person")  # 13 members of the family "person"
    add("violin", "musical-instrument")
    return concepts


def test_split_never_straddles_a_family_and_keeps_big_ones_in_train() -> None:
    concepts = make_concepts()
    test_families = corpus_emoji.assign_splits(concepts, seed=0, force_train_labels=["violin"])
    splits: dict[str, set[str]] = {}
    for concept in concepts:
        splits.setdefault(concept.family, set()).add(concept.split)
    assert all(len(seen) == 1 for seen in splits.values())
    sizes = Counter(concept.family for concept in concepts)
    for family in test_families:
        assert family not in ALWAYS_TRAIN_FAMILIES and sizes[family] <= corpus_emoji.MAX_TEST_FAMILY_SIZE
    assert {c.split for c in concepts if c.family in ALWAYS_TRAIN_FAMILIES | {"person", "violin"}} == {"train"}
    held_out = sum(c.split == "test" for c in concepts)
    assert abs(held_out - 0.15 * len(concepts)) <= 3
    assert family_of("man thing aa", "person-role") == family_of("woman thing aa", "person-role") == "thing aa"


def test_split_is_deterministic_for_a_seed() -> None:
    def split(seed: int) -> list[str]:
        concepts = make_concepts()
        corpus_emoji.assign_splits(concepts, seed=seed)
        return [concept.split for concept in concepts]

    assert split(0) == split(0)
    assert split(1) == split(1)
    assert split(0) != split(1)


def test_forcing_an_unknown_label_fails_loudly() -> None:
    with pytest.raises(KeyError, match="trombone"):
        corpus_emoji.assign_splits(make_concepts(), force_train_labels=["trombone"])


def test_choose_test_families_stays_at_or_under_the_target() -> None:
    sizes = {f"f{i}": 1 + i % 4 for i in range(200)} | {"flag": 50, "huge": 13}
    chosen = corpus_emoji.choose_test_families(sizes, seed=3, force_train=["f1"])
    target = round(0.15 * sum(sizes.values()))
    assert target - 3 <= sum(sizes[f] for f in chosen) <= target
    assert not chosen & {"flag", "huge", "f1"}


def test_spoken_concepts_are_speakable_train_concepts() -> None:
    concepts = make_concepts()
    concepts.append(Concept("FFFFF", "?", "wine glass", [], "food-drink", "drink", "wine glass"))
    corpus_emoji.assign_splits(concepts, force_train_labels=["violin", "wine glass"])
    chosen = corpus_emoji.choose_spoken_concepts(concepts, 20, seed=0, required=["violin"], exclude=["wine glass"])
    assert len(chosen) == 20 and "violin" in {c.label for c in chosen} and "wine glass" not in {c.label for c in chosen}
    assert all(c.split == "train" and corpus_emoji.speakable(c) for c in chosen)
    assert [c.hexcode for c in chosen] == sorted(c.hexcode for c in chosen)


def test_image_index_matches_with_and_without_fe0f() -> None:
    names = ["p/64/2764-fe0f.png", "p/64/1f3bb.png", "p/64/263a-fe0f.png", "p/64/sub/1f600.png", "p/64/x.txt"]
    index = corpus_emoji.ImageIndex(names, "p/64/", ".png")
    assert index.find("2764") == "p/64/2764-fe0f.png"
    assert index.find("1F3BB") == "p/64/1f3bb.png"
    assert index.find("1F3BB-FE0F") == "p/64/1f3bb.png"
    assert index.find("1F600") is None


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png(color: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


SVG = (
    b'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
    b'<rect x="0" y="0" width="36" height="72" fill="#f00"/></svg>'
)


@pytest.fixture
def fake_npm(tmp_path: Path) -> Path:
    """The four pinned tarballs, faked with a handful of entries."""
    entries = [
        {"label": "regional indicator A", "hexcode": "1F1E6", "emoji": "a"},
        {"label": "violin", "hexcode": "1F3BB", "emoji": "v", "group": 6, "subgroup": 2, "tags": ["music"]},
        {"label": "red heart", "hexcode": "2764", "emoji": "h", "group": 0, "subgroup": 1, "tags": []},
        {"label": "red hair", "hexcode": "1F9B0", "emoji": "r", "group": 2, "subgroup": 0},
        {"label": "no google", "hexcode": "1F600", "emoji": "g", "group": 0, "subgroup": 1},
        {"label": "man cook", "hexcode": "1F468-200D-1F373", "emoji": "c", "group": 1, "subgroup": 3,
         "skins": [{"label": "man cook: light skin tone", "hexcode": "1F468-1F3FB-200D-1F373"}]},
    ]  # fmt: skip
    groups = {
        "groups": {"0": "smileys-emotion", "1": "people-body", "2": "component", "6": "activities"},
        "subgroups": {"0": "hair-style", "1": "heart", "2": "musical-instrument", "3": "person-role"},
    }
    svgs = ("1F3BB", "2764-FE0F", "1F600", "1F468-200D-1F373")
    contents = {
        "emojibase-data": {
            "package/en/data.json": json.dumps(entries).encode(),
            "package/meta/groups.json": json.dumps(groups).encode(),
        },
        "openmoji": {f"package/color/svg/{code}.svg": SVG for code in svgs},
    }
    for style in ("twitter", "google"):
        codes = ["1f3bb", "2764-fe0f", "1f468-200d-1f373"] + (["1f600"] if style == "twitter" else [])
        contents[f"emoji-datasource-{style}"] = {
            f"package/img/{style}/64/{c}.png": png((0, 0, 255, 128)) for c in codes
        }
    for name, version in corpus_emoji.NPM_PACKAGES.items():
        with tarfile.open(tmp_path / f"{name}-{version}.tgz", "w:gz") as tar:
            for member, data in contents[name].items():
                add_member(tar, member, data)
    return tmp_path


def test_concepts_and_images_from_the_tarballs(fake_npm: Path, tmp_path: Path) -> None:
    try:  # rasterises the OpenMoji SVGs; not a core dependency of anybind
        import cairosvg  # noqa: F401
    except (ImportError, OSError):  # OSError: cairosvg is there but libcairo is not
        pytest.skip("needs cairosvg (and libcairo)")
    sources = corpus_emoji.ensure_npm_packages(fake_npm)
    assert all(len(source.sha256) == 64 for source in sources.values())
    indexes = corpus_emoji.index_images(sources)
    concepts, dropped = corpus_emoji.load_concepts(sources, indexes)
    assert [c.label for c in concepts] == ["violin", "man cook", "red heart"]  # sorted by hexcode
    assert dropped == Counter({"regional indicator": 1, "component": 1, "no google image": 1,
                               "skin-tone variant (nested under a base entry)": 1})  # fmt: skip
    assert concepts[1].family == "cook" and concepts[0].subgroup == "musical-instrument"
    counts = corpus_emoji.write_images(concepts, sources, indexes, tmp_path / "out")
    assert counts == {"twitter": 3, "google": 3, "openmoji": 3}
    heart = Image.open(tmp_path / "out" / "images" / "twitter" / "2764.png")
    assert heart.mode == "RGB" and heart.size == (64, 64)
    assert tuple(heart.getpixel((5, 5))) == pytest.approx((127, 127, 255), abs=2)  # half-transparent blue on white
    svg = Image.open(tmp_path / "out" / "images" / "openmoji" / "1F3BB.png")
    assert svg.getpixel((5, 30))[:3] == (255, 0, 0) and svg.getpixel((60, 30)) == (255, 255, 255)


def test_a_missing_tarball_without_npm_is_an_actionable_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"npm pack emoji-datasource-twitter@16\.0\.0"):
        corpus_emoji.ensure_npm_packages(tmp_path)


@pytest.mark.parametrize("spec", corpus_audio.SOUNDS, ids=lambda spec: spec.label)
def test_sound_plans_hold_out_notes_and_velocities(spec: corpus_audio.SoundSpec) -> None:
    plan = corpus_audio.plan_notes(spec, seed=0)
    assert plan == corpus_audio.plan_notes(spec, seed=0)
    train = [r for r in plan if r.split == "train"]
    test = [r for r in plan if r.split == "test"]
    assert (len(train), len(test)) == (corpus_audio.TRAIN_RENDERS, corpus_audio.TEST_RENDERS)
    assert not {r.velocity for r in train} & {r.velocity for r in test}
    train_notes = {n for r in train for n in r.notes}
    test_notes = {n for r in test for n in r.notes}
    if spec.percussion:
        assert not {r.program for r in train} & {r.program for r in test}
    else:
        assert not train_notes & test_notes
    assert all(0.3 <= r.duration <= 1.5 and 1 <= len(r.notes) <= 3 for r in plan)


def test_speech_plans_hold_out_voices() -> None:
    plan = corpus_audio.plan_speech("violin", seed=0)
    train = {r.voice.split("+")[0] for r in plan if r.split == "train"}
    test = {r.voice.split("+")[0] for r in plan if r.split == "test"}
    assert len(train) == 5 and len(test) == 2 and not train & test
    assert Counter(r.split for r in plan) == {"train": 24, "test": 6}
    assert len({r.voice for r in plan if r.split == "train"}) == 24  # no voice+variant twice
    assert all(130 <= r.speed <= 200 and 30 <= r.pitch <= 70 for r in plan)
    assert len({r.name for r in plan}) == len(plan)


def test_finish_clip_trims_caps_and_normalises() -> None:
    rate = corpus_audio.SAMPLE_RATE
    tone = 0.3 * np.sin(np.arange(rate // 2) * 2 * np.pi * 440 / rate)
    clip = corpus_audio.finish_clip(np.concatenate([np.zeros(rate), tone, np.zeros(rate)]))
    assert clip.size <= rate // 2 + 2 * int(0.05 * rate) + 1
    assert np.abs(clip).max() == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    long = corpus_audio.finish_clip(0.1 * np.sin(np.arange(5 * rate) * 0.1))
    assert long.size == 2 * rate and abs(long[-1]) < 1e-3
    with pytest.raises(ValueError, match="silent"):
        corpus_audio.finish_clip(np.zeros(100))


def test_video_has_the_expected_frame_at_a_time(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    shots = [corpus_video.Shot(red, "red", 3.0, "pan"), corpus_video.Shot(blue, "blue", 2.0, "zoom")]
    ranges = corpus_video.write_concept_video(tmp_path / "v.mp4", shots, fps=10, size=128)
    assert ranges == [{"label": "red", "start": 0.0, "end": 3.0}, {"label": "blue", "start": 3.0, "end": 5.0}]
    with av.open(str(tmp_path / "v.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 128)
        assert sum(1 for _ in container.decode(video=0)) == 50
    for seconds, color in ((0.0, red), (2.9, red), (3.0, blue), (4.9, blue)):
        frame = corpus_video.frame_at(tmp_path / "v.mp4", seconds)
        assert np.abs(frame[64, 64].astype(int) - np.array(color.getpixel((0, 0)))).max() < 25
    start, end = corpus_video.frame_at(tmp_path / "v.mp4", 0.0), corpus_video.frame_at(tmp_path / "v.mp4", 2.9)
    assert start[64, 10, 1] < 100 and end[64, 10].min() > 230  # the pan moved the image from left to right
    with pytest.raises(ValueError, match="motion"):
        corpus_video.shot_frame(red, "spin", 0.0, 128)


def test_sample_helpers_and_licenses(fake_npm: Path, tmp_path: Path) -> None:
    assert corpus.caption("umbrella") == "an umbrella" and corpus.slug("water wave") == "water-wave"
    sources = corpus_emoji.ensure_npm_packages(fake_npm)
    sample = corpus.licenses_markdown(sources, ["twitter"])
    assert "Twemoji" in sample and "CC-BY 4.0" in sample and "Noto" not in sample and "FluidR3_GM" in sample
    assert "Noto" in corpus.licenses_markdown(sources, corpus_emoji.STYLES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "concepts.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="--overwrite"):
        corpus.prepare_out(tmp_path / "out", overwrite=False)
    corpus.prepare_out(tmp_path / "out", overwrite=True)
    assert not any((tmp_path / "out").iterdir())


def test_rendering_real_sounds_and_speech(tmp_path: Path) -> None:
    pytest.importorskip("fluidsynth", exc_type=ImportError)
    if not corpus_audio.DEFAULT_SOUNDFONT.is_file() or shutil.which("espeak-ng") is None:
        pytest.skip("needs fluid-soundfont-gm and espeak-ng")
    plan = corpus_audio.plan_notes(corpus_audio.SOUNDS[0])[:3]

    def render() -> list[np.ndarray]:  # a fresh synthesizer per concept: the same sequence gives the same clips
        synth = corpus_audio.Synth(corpus_audio.DEFAULT_SOUNDFONT)
        try:
            return [synth.render(one) for one in plan]
        finally:
            synth.close()

    first, again = render(), render()
    assert all(
        np.abs(clip).max() > 0.01 and np.array_equal(clip, same) for clip, same in zip(first, again, strict=True)
    )
    speech = corpus_audio.speak("violin", corpus_audio.plan_speech("violin")[0])
    clip = corpus_audio.finish_clip(speech)
    assert 0.2 < clip.size / corpus_audio.SAMPLE_RATE <= 2.0


def test_every_training_voice_gives_its_own_waveform() -> None:
    """espeak-ng silently falls back for voice names it does not know or variants it ignores ("en-gb+f1" speaks
    as "en"): each voice+variant of the plan must give its own waveform, or the corpus has fewer voices than
    it says."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    voices = sorted({r.voice for r in corpus_audio.plan_speech("violin")})
    speech = {}
    for voice in voices:
        render = corpus_audio.SpeechRender("probe", "train", voice, 160, 50)
        speech[voice] = corpus_audio.speak("violin", render).tobytes()
    assert len(set(speech.values())) == len(voices), [v for v in voices if list(speech.values()).count(speech[v]) > 1]
