"""data.bench: the docs section is replaced in place; a tiny end-to-end run (slow)."""

import pytest
import torch

from data.bench import run, write_section


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Train step\nkeep me\n\n## Data loader on a GPU machine\ngpu numbers\n\n"
                   "## Data loader\nold numbers\n\n## Theory\nkeep too\n")
    write_section("## Data loader\n\nnew numbers\n", doc)
    text = doc.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.index("## Train step") < text.index("## Data loader\n") < text.index("## Theory")
    assert "keep me" in text and "keep too" in text and "gpu numbers" in text  # a heading that only starts alike
    write_section("## Data loader on a GPU machine\n\nnew gpu\n", doc)
    text = doc.read_text()
    assert "gpu numbers" not in text and "new gpu" in text and "new numbers" in text
    fresh = tmp_path / "new.md"
    write_section("## Data loader\n\nx\n", fresh)
    assert fresh.read_text().startswith("# Benchmarks") and fresh.read_text().count("## Data loader") == 1


@pytest.mark.slow
def test_bench_runs_end_to_end(tmp_path):
    from data.benchvideos import make_bench_videos

    csv = make_bench_videos(tmp_path, seconds=3, count=2)
    section = run(csv, batches=1, workers=[0], backends=["pyav", "dali", "dali-gpu"], repeats=1)
    assert "| pyav loader, 0 workers |" in section and "| dali | n/a |" in section
    if not torch.cuda.is_available():
        assert "| dali-gpu | n/a |" in section
    assert "| pyav loader, 0 workers, normalised on this CPU |" in section
    # the goal's ceiling is plain PyAV; the loader is also held against our reader alone
    assert "| pyav bare library (seek to the keyframe, decode every frame), 1 process |" in section
    assert "| pyav reader alone, 1 process |" in section and "of pyav reader alone (per pair" in section

