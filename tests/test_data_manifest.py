"""Manifests and clip index rules."""

import json

import numpy as np
import pytest

from data.clips import TooShort, clip_indices, frame_step_for
from data.loader import epoch_order
from data.manifest import read_manifest, read_manifests


def test_reference_csv_relative_paths_and_bad_rows(tmp_path):
    (tmp_path / "sub").mkdir()
    m = tmp_path / "sub" / "list.csv"
    m.write_text("a.mp4 3\n/abs/b.mp4 0\n\nc d.mp4 7\nnolabel\ne.mp4 cat\n")
    items, problems = read_manifest(m)
    assert [i.path for i in items] == [str(tmp_path / "sub" / "a.mp4"), "/abs/b.mp4", str(tmp_path / "sub" / "c d.mp4")]
    assert [i.labels for i in items] == [{"label": 3}, {"label": 0}, {"label": 7}]
    assert [(p.where, p.reason) for p in problems] == [(f"{m}:5", "bad_row"), (f"{m}:6", "bad_label")]


def test_jsonl_labels_captions_ranges(tmp_path):
    m = tmp_path / "m.jsonl"
    rows = [{"path": "x.mp4", "labels": {"digit": 3, "speed": 1}, "captions": ["a", "b"], "start": 1.0, "end": 2.5},
            {"path": "y.mp4", "label": 2, "caption": "one"},
            {"path": "z.mp4", "labels": {"digit": "three"}},
            {"nopath": 1}]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    items, problems = read_manifest(m)
    assert items[0].labels == {"digit": 3, "speed": 1} and items[0].captions == ("a", "b")
    assert (items[0].start, items[0].end) == (1.0, 2.5)
    assert items[1].labels == {"label": 2} and items[1].captions == ("one",)
    assert [(p.where.rsplit(":", 1)[1], p.reason) for p in problems] == [
        ("3", "bad_label"), ("4", "bad_row"), ("5", "bad_row")]


def test_csv_with_header(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,captions,start,end\nv.mp4,4,first|second,0,1.5\nw.mp4,1.0,,,\nq.mp4,x,,,\n")
    items, problems = read_manifest(m)
    assert [i.labels["label"] for i in items] == [4, 1]
    assert items[0].captions == ("first", "second") and items[0].end == 1.5
    assert len(problems) == 1 and problems[0].where.endswith(":4") and problems[0].reason == "bad_label"


def test_weighted_mix_follows_weights(tmp_path):
    (tmp_path / "a.csv").write_text("".join(f"a{i}.mp4 0\n" for i in range(10)))
    (tmp_path / "b.csv").write_text("".join(f"b{i}.mp4 1\n" for i in range(90)))
    mixed = read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"], weights=[3, 1])
    w = mixed.sample_weights()
    assert len(w) == 100 and w[0] == pytest.approx(0.3) and w[99] == pytest.approx(1 / 90)
    draws = np.concatenate([epoch_order(100, e, 0, True, w) for e in range(40)])
    assert np.mean(draws < 10) == pytest.approx(0.75, abs=0.03)  # a holds 10% of items, gets 75% of draws
    assert not np.array_equal(epoch_order(100, 0, 0, True, w), epoch_order(100, 1, 0, True, w))
    with pytest.raises(ValueError, match="2 manifests"):
        read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"], weights=[1])


def test_clip_indices_train_eval_short():
    assert frame_step_for(30, 16, frame_step=4) == 4
    assert frame_step_for(30, 16, fps=7.5) == 4
    assert frame_step_for(30, 16, duration=2.0) == 4  # 60 frames over 16 samples
    with pytest.raises(ValueError):
        frame_step_for(30, 16, frame_step=4, fps=5)
    (ev,) = clip_indices(300, 16, 4)
    assert ev.tolist() == list(range(118, 182, 4))  # centred in the video
    ev2 = clip_indices(300, 16, 4, num_clips=2)
    assert [c[0] for c in ev2] == [43, 193]  # centred in each half
    rng = np.random.default_rng(0)
    starts = {int(clip_indices(300, 16, 4, rng=rng)[0][0]) for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 236 and len(starts) > 50
    (short,) = clip_indices(10, 8, 2)
    assert short.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]  # padded with the last frame
    with pytest.raises(TooShort):
        clip_indices(10, 8, 2, short="skip")
    (ranged,) = clip_indices(300, 4, 2, first=100, last=110)
    assert ranged.tolist() == [101, 103, 105, 107]
