"""Time segments through the space and the store, with a fake temporal modality (no audio/video decoding).

``tape`` files are text: a ``TAPE`` header line, then one word per second. Its segmenter yields one segment per
window whose parts are the words (strings, embedded by the text tower), so every expected vector can be computed
by hand from ``space.embed("text", words)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import builtin_host

import anybind
from anybind import DecodeError, ItemError, SpaceError, Store
from anybind.segments import Segment, SegmentPlan

CLOSED: list[str] = []


def tape_words(source: object) -> list[str]:
    if isinstance(source, list):
        return source
    lines = Path(source).read_text().splitlines()
    if not lines or lines[0] != "TAPE":
        raise DecodeError(str(source), "not a tape")
    return lines[1:]


def tape_segments(source: object, plan: SegmentPlan):
    words = tape_words(source)
    duration = len(words)
    start = 0.0
    try:
        while start < duration:
            end = min(start + plan.window, duration)
            parts = words[int(start) : math.ceil(end)]
            if "FAIL" in parts:
                raise DecodeError(str(source), f"corrupt tape at {start:.1f} s")
            if "BOOM" in parts:
                raise RuntimeError("plugin bug")
            yield Segment(start, end, parts)
            if end >= duration:
                break
            start += plan.hop
    finally:
        CLOSED.append(str(source))


def eager_segments(source: object, plan: SegmentPlan):
    """Not a generator: checks the input when called (as a third-party segmenter may), then returns an iterator."""
    text = Path(source).read_text()
    if "FAIL" in text:
        raise DecodeError(str(source), "bad header")
    return tape_segments(["dog", "cat", "car"], plan)


class TapePlugin:
    @anybind.hookimpl
    def anybind_modalities(self, register):
        register(
            anybind.Modality(
                name="eager",
                decode=tape_words,
                sniff=lambda head: head.startswith(b"EAGER\n"),
                embeds_as="text",
                segment=eager_segments,
                segment_defaults={"window": 2.0},
            )
        )
        register(
            anybind.Modality(
                name="tape",
                decode=tape_words,
                sniff=lambda head: head.startswith(b"TAPE\n"),
                extensions=(".tape",),
                embeds_as="text",
                segment=tape_segments,
                segment_defaults={"window": 2.0, "overlap": 0.0},
            )
        )


@pytest.fixture(scope="module")
def tape_host() -> anybind.PluginHost:
    host = builtin_host()
    host.add_plugin(TapePlugin(), "tape")
    return host


def load(tiny_clip_dir: Path, host: anybind.PluginHost, batch_size: int = 32, **route) -> anybind.Space:
    config = anybind.SpaceConfig(anchor=f"clip:{tiny_clip_dir}", modalities={"tape": anybind.RouteConfig(**route)})
    return anybind.load_space(config, device="cpu", batch_size=batch_size, host=host)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def write_tape(path: Path, words: list[str]) -> Path:
    path.write_text("TAPE\n" + "\n".join(words) + "\n")
    return path


WORDS = ["dog", "cat", "car", "sky", "violin", "house", "tree"]


def test_segment_vectors_are_the_normalised_mean_of_their_parts(tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host)
    result = space.embed_segments("tape", WORDS)
    assert result.starts == [0.0, 2.0, 4.0, 6.0]
    assert result.ends == [2.0, 4.0, 6.0, 7.0]
    words = space.embed("text", WORDS)
    expected = unit(np.stack([words[0:2].mean(0), words[2:4].mean(0), words[4:6].mean(0), words[6:7].mean(0)]))
    np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
    # the whole input as one query vector: the normalised mean of its segment vectors
    np.testing.assert_allclose(space.embed("tape", [WORDS])[0], unit(expected.mean(0)), atol=1e-5)


def test_route_options_override_the_modality_defaults(tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host, window=3.0, overlap=1.0)
    plan = space.segment_plan("tape")
    assert (plan.window, plan.hop, plan.overlap) == (3.0, 2.0, 1.0)
    result = space.embed_segments("tape", WORDS)
    assert list(zip(result.starts, result.ends, strict=True)) == [(0, 3), (2, 5), (4, 7)]
    assert load(tiny_clip_dir, tape_host).segment_plan("text") is None


def test_encoder_inputs_set_the_window_and_cap_it(tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host)
    encoder = space.routes["text"].encoder
    object.__setattr__(encoder, "inputs", {"text": {"window": 1.0}})
    try:
        assert space.segment_plan("tape").window == 1.0  # the encoder's input beats the plugin's default
        capped = load(tiny_clip_dir, tape_host, window=3.0)
        object.__setattr__(capped.routes["text"].encoder, "inputs", {"text": {"window": 1.0}})
        with pytest.raises(SpaceError, match=r"window = 3.0 s is longer than encoder .*'s 1.0 s input"):
            capped.segment_plan("tape")
    finally:
        object.__delattr__(encoder, "inputs")


def test_bad_plans_are_space_errors(tiny_clip_dir, tape_host):
    with pytest.raises(SpaceError, match=r"overlap 2.0 s is not shorter than the window \(2.0 s\)"):
        load(tiny_clip_dir, tape_host, overlap=2.0).segment_plan("tape")
    with pytest.raises(SpaceError, match="would hold no frame"):
        SegmentPlan(1.0, 1.0, fps=0.5)
    with pytest.raises(SpaceError, match="hop"):
        SegmentPlan(1.0, 2.0)


def test_parts_of_many_inputs_share_encoder_batches(tiny_clip_dir, tape_host, monkeypatch):
    space = load(tiny_clip_dir, tape_host, batch_size=8)
    encoder = space.routes["text"].encoder
    calls: list[int] = []
    original = encoder.embed
    monkeypatch.setattr(encoder, "embed", lambda tower, batch: calls.append(len(batch)) or original(tower, batch))
    items = [["dog", "cat", "car"]] * 5  # 15 parts in 10 segments
    result = space.try_embed_segments("tape", items)
    assert calls == [8, 7]
    assert [len(r.starts) for r in result] == [2] * 5
    alone = load(tiny_clip_dir, tape_host, batch_size=1).embed_segments("tape", ["dog", "cat", "car"])
    for r in result:
        np.testing.assert_allclose(r.vectors, alone.vectors, atol=1e-5)


def test_a_file_failing_half_way_is_dropped_whole_and_closed(tiny_clip_dir, tape_host, tmp_path):
    space = load(tiny_clip_dir, tape_host, batch_size=4)
    good = write_tape(tmp_path / "good.tape", WORDS)
    bad = write_tape(tmp_path / "bad.tape", ["dog", "cat", "car", "FAIL", "sky"])
    buggy = write_tape(tmp_path / "buggy.tape", ["dog", "BOOM"])
    CLOSED.clear()
    results = space.try_embed_segments("tape", [str(good), str(bad), str(buggy), str(good)])
    assert [r.error is None for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, DecodeError)
    assert str(results[1].error) == f"{bad}: corrupt tape at 2.0 s"
    assert str(results[2].error) == f"{buggy}: RuntimeError: plugin bug"
    assert results[1].vectors is None
    np.testing.assert_allclose(results[0].vectors, results[3].vectors, atol=1e-6)
    assert CLOSED.count(str(bad)) == 1  # the generator was finished, not left suspended

    with pytest.raises(DecodeError, match="corrupt tape"):
        space.embed_segments("tape", str(bad))
    embedded = space.try_embed("tape", [str(bad), str(good)])
    assert embedded.indices == [1] and embedded.failed == [0]


def test_an_input_with_no_segments_is_an_item_error(tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host)
    (result,) = space.try_embed_segments("tape", [[]])
    assert isinstance(result.error, ItemError)
    assert "has no segments to embed" in str(result.error)


def test_a_part_that_cannot_be_encoded_fails_its_file_only(tiny_clip_dir, tape_host, monkeypatch):
    space = load(tiny_clip_dir, tape_host, batch_size=4)
    encoder = space.routes["text"].encoder
    original = encoder.embed

    def embed(tower, batch):
        if "poison" in batch:
            raise ValueError("cannot tokenize poison")
        return original(tower, batch)

    monkeypatch.setattr(encoder, "embed", embed)
    results = space.try_embed_segments("tape", [["dog", "cat"], ["sky", "poison", "tree"], ["car"]])
    assert [r.error is None for r in results] == [True, False, True]
    assert str(results[1].error) == (
        "<item 1: builtins.list>: segment 0.00-2.00 s: cannot be embedded: cannot tokenize poison"
    )


def test_native_vectors_skip_the_binding(tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host)
    native = space.try_native("tape", [WORDS], encoder=f"clip:{tiny_clip_dir}")
    np.testing.assert_allclose(native.vectors, space.embed("tape", [WORDS]), atol=1e-5)  # identity route
    with pytest.raises(anybind.UnknownNameError, match="nope"):
        space.try_native("tape", [WORDS], encoder="nope:x")


# -- the store ----------------------------------------------------------------------------------------------


@pytest.fixture()
def tape_store(tmp_path, tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host)
    store = Store.open(tmp_path / "db", space=space, host=tape_host)
    yield store
    store.close()


def test_index_stores_one_item_per_segment_with_times(tape_store, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_tape(media / "a.tape", WORDS)
    write_tape(media / "b.tape", ["violin", "violin", "violin"])
    bad = write_tape(media / "c.tape", ["dog", "FAIL"])
    report = tape_store.add_files([media])
    assert sorted(map(Path, report.added)) == [media / "a.tape", media / "b.tape"]
    assert [len(v) for _, v in sorted(report.added.items())] == [4, 2]
    assert [str(e) for e in report.errors] == [f"{bad}: corrupt tape at 0.0 s"]
    rows = {r.id: r for r in tape_store.get(report.ids)}
    spans = sorted((Path(r.uri).name, r.start, r.end) for r in rows.values())
    assert spans == [
        ("a.tape", 0.0, 2.0),
        ("a.tape", 2.0, 4.0),
        ("a.tape", 4.0, 6.0),
        ("a.tape", 6.0, 7.0),
        ("b.tape", 0.0, 2.0),
        ("b.tape", 2.0, 3.0),
    ]
    again = tape_store.add_files([media])
    assert sorted(map(Path, again.unchanged)) == [media / "a.tape", media / "b.tape"]


def test_search_rolls_up_to_each_files_best_segment(tape_store, tmp_path):
    space = tape_store.space
    files = {}
    for name, words in {"a": WORDS, "b": ["sky", "sky", "dog", "dog"], "c": ["tree", "house", "car"]}.items():
        files[name] = write_tape(tmp_path / f"{name}.tape", words)
    tape_store.add_files(list(files.values()))
    q = space.embed("text", ["dog"])[0]
    everything = tape_store.search(vector=q, to="tape", k=100, segments=True)
    assert len(everything) == 4 + 2 + 2
    best: dict[str, object] = {}
    for hit in everything:  # best first: the first hit of each file is its best segment
        best.setdefault(hit.uri, hit)
    rolled = tape_store.search(vector=q, to="tape", k=10)
    assert [(h.uri, h.start, h.end, h.id) for h in rolled] == [(h.uri, h.start, h.end, h.id) for h in best.values()]
    top = tape_store.search(vector=q, to="tape", k=2)
    assert [h.id for h in top] == [h.id for h in list(best.values())[:2]]
    # scores are exact: the segment vector's cosine with the query
    seg = space.embed_segments("tape", str(files["b"]))
    hit_b = best[str(files["b"].resolve())]
    index = seg.starts.index(hit_b.start)
    assert hit_b.score == pytest.approx(float(seg.vectors[index] @ q), abs=1e-5)


def test_store_add_segments_in_memory_items(tape_store):
    report = tape_store.add("tape", [WORDS, ["dog"]], metadata={"src": "memory"})
    assert [len(ids) for ids in report.added.values()] == [4, 1]
    rows = {r.id: r for r in tape_store.get(report.ids)}
    assert sorted((r.start, r.end) for r in rows.values()) == [(0, 1), (0, 2), (2, 4), (4, 6), (6, 7)]
    assert {r.metadata["src"] for r in rows.values()} == {"memory"}


def test_commit_every_never_splits_a_file(tmp_path, tiny_clip_dir, tape_host):
    space = load(tiny_clip_dir, tape_host, batch_size=2)  # files finish while later files are read
    files = [write_tape(tmp_path / f"{i}.tape", WORDS) for i in range(4)]
    with Store.open(tmp_path / "db", space=space, host=tape_host) as store:
        report = store.add_files(files, commit_every=3)
        assert store.generation >= 2  # several commits
        generations = {}
        for path, ids in report.added.items():
            gens = {r.generation for r in store.get(ids)}
            assert len(ids) == 4 and len(gens) == 1, (path, gens)  # all of a file's segments in one commit
            generations[path] = gens.pop()
        assert len(set(generations.values())) >= 2


def test_batches_are_cut_by_bytes_too():
    from anybind.segment_embedding import SegmentBatcher
    from anybind.segments import AudioClip
    from anybind.space import EmbedResult

    sizes: list[int] = []

    def encode(values, labels):
        sizes.append(len(values))
        return EmbedResult(np.ones((len(values), 4), np.float32), list(range(len(values))))

    clip = AudioClip(np.zeros(1000, np.float32), 16000)  # 4,000 bytes per part
    batcher = SegmentBatcher(encode, batch_size=32, dim=4, max_bytes=10_000)
    done = batcher.feed("a", "a", iter([Segment(float(i), i + 1.0, [clip]) for i in range(7)])) + batcher.flush()
    assert sizes == [3, 3, 1]  # 3 parts reach 12,000 bytes >= 10,000
    assert len(done) == 1 and done[0].vectors.shape == (7, 4)
    np.testing.assert_allclose(np.linalg.norm(done[0].vectors, axis=1), 1.0)


def test_a_segmenter_failing_when_called_fails_only_its_file(tape_store, tmp_path):
    good, bad = tmp_path / "good.eager", tmp_path / "bad.eager"
    good.write_text("EAGER\nok\n")
    bad.write_text("EAGER\nFAIL\n")
    report = tape_store.add_files([bad, good])
    assert [str(e) for e in report.errors] == [f"{bad}: bad header"]
    assert list(report.added) == [str(good)] and len(report.added[str(good)]) == 2
