"""Emoji concepts of the anybind-mini corpus: pinned npm sources, labels, families, the split and the images.

A *concept* is one base emojibase entry (English label, tags, group, subgroup) that has a Twemoji image
(emoji-datasource-twitter), a Noto image (emoji-datasource-google) and an OpenMoji colour SVG. Everything is
read straight out of the npm tarballs, so the same tarballs (recorded with their sha256) give the same corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

NPM_PACKAGES: dict[str, str] = {
    "emoji-datasource-twitter": "16.0.0",
    "emoji-datasource-google": "16.0.0",
    "openmoji": "17.0.0",
    "emojibase-data": "17.0.0",
}
"""The pinned npm packages (name: version) every corpus is built from."""

STYLES: dict[str, tuple[str, str, str]] = {
    "twitter": ("emoji-datasource-twitter", "package/img/twitter/64/", ".png"),
    "google": ("emoji-datasource-google", "package/img/google/64/", ".png"),
    "openmoji": ("openmoji", "package/color/svg/", ".svg"),
}
"""Image style: (npm package, member prefix, suffix). twitter and google train; openmoji is the held-out style."""

IMAGE_SIZE = 64
FLAG_SUBGROUPS = frozenset({"country-flag", "subdivision-flag", "flag"})
ALWAYS_TRAIN_FAMILIES = frozenset({"flag", "keycap", "clock", "family"})
MAX_TEST_FAMILY_SIZE = 12
CONCRETE_SUBGROUPS = frozenset(
    {"drink", "dishware", "sky-weather", "sport", "game", "clothing", "household", "tool", "musical-instrument"}
    | {"music", "phone", "computer", "light-video", "book-paper", "money", "mail", "writing", "office", "lock"}
    | {"science", "medical", "other-object", "arts-crafts", "event", "award-medal", "hotel", "body-parts"}
)
TEST_FRACTION = 0.15

# Words that only say who (gender, age, number) does something: "man technologist" is a "technologist".
PERSON_WORDS = frozenset(
    {"man", "woman", "person", "men", "women", "people", "boy", "girl", "male", "female", "adult", "child"}
    | {"man's", "woman's", "men's", "women's"}
)
AGE_WORDS = frozenset({"old", "older"})  # dropped only next to a person word: "old key" stays "old key"
FAMILY_ALIASES: dict[str, str] = {
    "merman": "merperson",
    "mermaid": "merperson",
    "prince": "person with crown",
    "princess": "person with crown",
    "mrs. claus": "santa claus",
    "mx claus": "santa claus",
    "breast-feeding": "person feeding baby",
}
"""Gendered single words that name the same concept as another label (applied before the word rules)."""


@dataclass(frozen=True)
class NpmSource:
    """One pinned npm tarball in the cache."""

    name: str
    version: str
    path: Path
    sha256: str

    def record(self) -> dict[str, str]:
        """The JSON record for ``sources.json``."""
        return {"name": self.name, "version": self.version, "file": self.path.name, "sha256": self.sha256}


@dataclass
class Concept:
    """One emoji concept: emojibase fields plus its family and split."""

    hexcode: str
    emoji: str
    label: str
    tags: list[str]
    group: str
    subgroup: str
    family: str = ""
    split: str = "train"

    def record(self) -> dict[str, Any]:
        """The JSON record for ``concepts.jsonl``."""
        return asdict(self)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ensure_npm_packages(cache_dir: Path) -> dict[str, NpmSource]:
    """The pinned tarballs in ``cache_dir``, fetching a missing one with ``npm pack NAME@VERSION``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, NpmSource] = {}
    for name, version in NPM_PACKAGES.items():
        path = cache_dir / f"{name}-{version}.tgz"
        if not path.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(
                    f"{path} is missing and npm is not installed: install Node.js/npm (apt-get install npm), "
                    f"or put the tarball there yourself (npm pack {name}@{version})"
                )
            print(f"fetching {name}@{version} with npm pack into {cache_dir}")
            done = subprocess.run([npm, "pack", f"{name}@{version}"], cwd=cache_dir, capture_output=True, text=True)
            if done.returncode != 0 or not path.exists():
                raise RuntimeError(f"npm pack {name}@{version} failed in {cache_dir}: {done.stderr.strip()[-500:]}")
        sources[name] = NpmSource(name, version, path, sha256_file(path))
    return sources


def read_json_member(tarball: Path, member: str) -> Any:
    """A JSON file read out of a tarball."""
    with tarfile.open(tarball, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{member} is not a file in {tarball}")
        return json.load(handle)


def image_key(hexcode: str) -> str:
    """A hexcode without FE0F (variation selector 16), upper case: how images are matched when not exact."""
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


class ImageIndex:
    """The image members of one style's tarball, looked up by hexcode (exact first, then without FE0F)."""

    def __init__(self, names: Iterable[str], prefix: str, suffix: str) -> None:
        self.exact: dict[str, str] = {}
        self.loose: dict[str, str] = {}
        for name in sorted(names):
            if name.startswith(prefix) and name.endswith(suffix) and "/" not in name[len(prefix) :]:
                code = name[len(prefix) : -len(suffix)].upper()
                self.exact[code] = name
                self.loose.setdefault(image_key(code), name)

    def find(self, hexcode: str) -> str | None:
        """The member holding this emoji's image, or None."""
        return self.exact.get(hexcode.upper()) or self.loose.get(image_key(hexcode))


def index_images(sources: Mapping[str, NpmSource]) -> dict[str, ImageIndex]:
    """One :class:`ImageIndex` per style."""
    indexes = {}
    for style, (package, prefix, suffix) in STYLES.items():
        with tarfile.open(sources[package].path, "r:gz") as tar:
            indexes[style] = ImageIndex(tar.getnames(), prefix, suffix)
    return indexes


def normalise_label(label: str) -> str:
    """Lower case, typographic apostrophes as ``'``, single spaces."""
    return " ".join(label.lower().replace("\u2019", "'").split())


def family_of(label: str, subgroup: str) -> str:
    """The family key of a concept, so that near-duplicates never straddle train and test.

    Rules, in order:

    1. flags (subgroups ``country-flag``, ``subdivision-flag``, ``flag``) are ``"flag"``; keycaps ``"keycap"``;
       clock faces (subgroup ``time``, labels with "o'clock" or "-thirty") ``"clock"``.
    2. ``"family"`` and every ``"family: ..."`` are ``"family"``.
    3. A label with a colon is reduced to the part before it ("kiss: woman, man" -> "kiss",
       "person walking: facing right" -> "person walking", "man: beard" -> "man"), then rule 4 applies.
    4. A few gendered single words are aliased (merman/mermaid -> merperson, prince/princess -> person with
       crown, Mrs./Mx Claus -> Santa Claus, breast-feeding -> person feeding baby).
    5. Words that only say who does it are dropped: man, woman, person, men, women, people, boy, girl, male,
       female, adult, child and their possessives, plus old/older when the label has such a word; then a
       leading "and". So "man technologist", "woman technologist" and "technologist" are all "technologist",
       "man in tuxedo" and "person in tuxedo" "in tuxedo", "woman and man holding hands" "holding hands".
       A label left empty ("man", "old woman", "man: red hair") is ``"person"``.
    6. Otherwise the family is the normalised label: "X face" variants stay separate concepts.
    """
    text = normalise_label(label)
    if subgroup in FLAG_SUBGROUPS:
        return "flag"
    if subgroup == "keycap":
        return "keycap"
    if subgroup == "time" and ("o'clock" in text or "-thirty" in text):
        return "clock"
    if text == "family" or text.startswith("family:"):
        return "family"
    text = text.split(":", 1)[0].strip()
    text = FAMILY_ALIASES.get(text, text)
    words = text.split()
    if any(word in PERSON_WORDS for word in words):
        words = [word for word in words if word not in PERSON_WORDS and word not in AGE_WORDS]
        while words and words[0] == "and":
            words.pop(0)
        return " ".join(words) or "person"
    return text


def load_concepts(sources: Mapping[str, NpmSource], indexes: Mapping[str, ImageIndex]) -> tuple[list[Concept], Counter]:
    """The concepts (sorted by hexcode, family set, split not yet) and how many entries were dropped why."""
    tarball = sources["emojibase-data"].path
    data = read_json_member(tarball, "package/en/data.json")
    meta = read_json_member(tarball, "package/meta/groups.json")
    groups, subgroups = meta["groups"], meta["subgroups"]
    dropped: Counter = Counter()
    concepts = []
    for entry in data:
        dropped["skin-tone variant (nested under a base entry)"] += len(entry.get("skins", ()))
        label = entry.get("label", "").strip()
        if label.lower().startswith("regional indicator"):
            dropped["regional indicator"] += 1
            continue
        if "group" not in entry or groups.get(str(entry["group"])) == "component":
            dropped["component"] += 1
            continue
        if not label:
            dropped["empty label"] += 1
            continue
        missing = [style for style, index in indexes.items() if index.find(entry["hexcode"]) is None]
        if missing:
            dropped[f"no {'/'.join(missing)} image"] += 1
            continue
        subgroup = subgroups[str(entry["subgroup"])]
        concepts.append(
            Concept(
                hexcode=entry["hexcode"],
                emoji=entry["emoji"],
                label=label,
                tags=list(entry.get("tags", [])),
                group=groups[str(entry["group"])],
                subgroup=subgroup,
                family=family_of(label, subgroup),
            )
        )
    concepts.sort(key=lambda concept: concept.hexcode)
    return concepts, dropped


def rank(seed: int, key: str) -> str:
    """A seeded, platform-independent sort key (adding a concept never reshuffles the others)."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def choose_test_families(
    family_sizes: Mapping[str, int],
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    force_train: Iterable[str] = (),
    max_family_size: int = MAX_TEST_FAMILY_SIZE,
) -> set[str]:
    """The held-out families: about ``test_fraction`` of all concepts, whole families in seeded order.

    Never chosen: :data:`ALWAYS_TRAIN_FAMILIES`, ``force_train`` and families of more than ``max_family_size``.
    """
    target = round(test_fraction * sum(family_sizes.values()))
    excluded = ALWAYS_TRAIN_FAMILIES | set(force_train)
    eligible = [name for name, size in family_sizes.items() if name not in excluded and size <= max_family_size]
    chosen: set[str] = set()
    total = 0
    for name in sorted(eligible, key=lambda name: rank(seed, name)):
        if total >= target:
            break
        if total + family_sizes[name] <= target:
            chosen.add(name)
            total += family_sizes[name]
    return chosen


def assign_splits(concepts: list[Concept], seed: int = 0, force_train_labels: Iterable[str] = ()) -> set[str]:
    """Set every concept's split ("train"/"test") by family; the families of ``force_train_labels`` train.

    Raises ``KeyError`` naming a forced label that is not a concept. Returns the test families.
    """
    by_label = {concept.label: concept for concept in concepts}
    unknown = [label for label in force_train_labels if label not in by_label]
    if unknown:
        raise KeyError(f"not emoji concepts (no such emojibase label with all three images): {unknown}")
    forced = {by_label[label].family for label in force_train_labels}
    test = choose_test_families(Counter(concept.family for concept in concepts), seed, force_train=forced)
    for concept in concepts:
        concept.split = "test" if concept.family in test else "train"
    return test


def on_white(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """An RGB ``size`` x ``size`` image: the (RGBA) image resized if needed and composited on white."""
    rgba = image.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def rasterise_svg(svg: bytes, size: int = IMAGE_SIZE) -> Image.Image:
    """An SVG (OpenMoji: 72x72 viewBox) rasterised by cairosvg at ``size`` px and put on white."""
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
    return on_white(Image.open(io.BytesIO(png)), size)


def write_images(
    concepts: list[Concept],
    sources: Mapping[str, NpmSource],
    indexes: Mapping[str, ImageIndex],
    out_dir: Path,
) -> dict[str, int]:
    """``images/<style>/<hexcode>.png`` (64 px RGB on white) for every concept and style; counts per style."""
    counts = {}
    for style, (package, _prefix, suffix) in STYLES.items():
        wanted = {indexes[style].find(concept.hexcode): concept.hexcode for concept in concepts}
        folder = out_dir / "images" / style
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        with tarfile.open(sources[package].path, "r:gz") as tar:
            for member in tar:
                hexcode = wanted.get(member.name)
                handle = tar.extractfile(member) if hexcode else None
                if handle is None:
                    continue
                data = handle.read()
                image = rasterise_svg(data) if suffix == ".svg" else on_white(Image.open(io.BytesIO(data)))
                image.save(folder / f"{hexcode}.png", optimize=True)
                written += 1
        if written != len(concepts):
            raise RuntimeError(f"{style}: wrote {written} images for {len(concepts)} concepts")
        counts[style] = written
    return counts


def concrete_subgroup(subgroup: str) -> bool:
    """Subgroups of concrete nouns (animals, plants, food, objects, vehicles, places, weather, sports)."""
    prefixes = ("animal-", "plant-", "food-", "transport-", "place-")
    return subgroup.startswith(prefixes) or subgroup in CONCRETE_SUBGROUPS


def speakable(concept: Concept) -> bool:
    """A label of 1-3 words of ASCII letters that is not a flag, keycap, clock face or family."""
    words = concept.label.split()
    return (
        1 <= len(words) <= 3
        and re.fullmatch(r"[A-Za-z ]+", concept.label) is not None
        and concept.family not in ALWAYS_TRAIN_FAMILIES
    )


def choose_spoken_concepts(
    concepts: list[Concept], count: int, seed: int = 0, required: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[Concept]:
    """``count`` train concepts whose names are spoken: the ``required`` labels, then speakable concrete nouns
    (then other speakable labels) in seeded order. Sorted by hexcode."""
    by_label = {concept.label: concept for concept in concepts}
    chosen = [by_label[label] for label in required]
    if any(concept.split != "train" for concept in chosen):
        raise ValueError(f"spoken concepts must be train concepts: {[c.label for c in chosen if c.split != 'train']}")
    skip = {concept.hexcode for concept in chosen} | {by_label[label].hexcode for label in exclude}
    pool = [c for c in concepts if c.split == "train" and c.hexcode not in skip and speakable(c)]
    pool.sort(key=lambda c: (not concrete_subgroup(c.subgroup), rank(seed, c.hexcode)))
    chosen += pool[: max(0, count - len(chosen))]
    return sorted(chosen, key=lambda concept: concept.hexcode)
