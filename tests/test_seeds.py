"""launch.seeds: the evidence-of-learning checks and the table over pipeline seeds."""
import json
import math
from pathlib import Path

from launch.seeds import main, seed_checks, seeds_table

REPO = Path(__file__).resolve().parents[1]


def cell(mean):
    return {"mean": mean, "se": 0.5, "seeds": [mean] * 3, "n_val": 600}


def summary(student_digit, teacher_ratio=0.6, student_direction=90.0):
    labels = lambda d, r, s: {"digit": cell(d), "direction": cell(r), "speed": cell(s)}  # noqa: E731
    return {
        "probe": {
            "random-init": {"linear": labels(20.0, 91.0, 60.0)},
            "raw-pixels": {"linear": labels(10.0, 50.0, 40.0)},
            "teacher": {"linear": labels(25.0, 80.0, 50.0)},
            "student": {"linear": labels(student_digit, student_direction, 61.0)},
        },
        "stages": {
            "teacher": {"tail_loss": 0.3, "final_trivial": {"zero": 0.6, "position": 0.5},
                        "final_loss_ratio": teacher_ratio, "wall_seconds": 100.0},
            "student": {"tail_loss": 0.2, "final_trivial": {"zero": 0.8, "position": 0.4},
                        "final_loss_ratio": 0.5, "wall_seconds": 200.0},
        },
    }


def test_checks_apply_the_margins():
    ok = seed_checks(summary(26.0))
    assert ok["linear: digit - random >= 6"] == (True, "+6.0")
    assert ok["linear: direction - random >= -2"] == (True, "-1.0")
    assert ok["linear: speed - random >= -2"] == (True, "+1.0")
    # student mean (26 + 90 + 61) / 3 = 59.0 against the teacher's (25 + 80 + 50) / 3 = 51.67
    assert ok["linear: mean over labels, student - teacher > 0"] == (True, "+7.3")
    assert ok["teacher loss / trivial <= 0.7"] == (True, "0.600")
    bad = seed_checks(summary(25.9, teacher_ratio=0.75, student_direction=88.9))
    assert bad["linear: digit - random >= 6"][0] is False
    assert bad["linear: direction - random >= -2"] == (False, "-2.1")
    assert bad["teacher loss / trivial <= 0.7"] == (False, "0.750")


def test_table_is_mean_and_standard_error_over_the_seeds(tmp_path):
    summaries = {0: summary(24.0), 1: summary(26.0), 2: summary(31.0)}
    table = seeds_table(summaries)
    # student digit over seeds: mean 27.0, sample std sqrt(((3^2) + 1 + 4^2) / 2) = sqrt(13), se = sqrt(13 / 3)
    se = math.sqrt(13 / 3)
    assert f"| student | 27.0 ± {se:.1f} | 90.0 ± 0.0 | 61.0 ± 0.0 |" in table
    assert "| random-init | 20.0 ± 0.0 | 91.0 ± 0.0 | 60.0 ± 0.0 | 57.0 ± 0.0 |" in table
    assert "| teacher | 0.3000 ± 0.0000 | 0.6000 ± 0.0000 | 0.5000 ± 0.0000 | 0.6000 ± 0.0000 | 100 ± 0 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| linear: digit - random >= 6"))
    assert row == "| linear: digit - random >= 6 | FAIL (+4.0) | pass (+6.0) | pass (+11.0) |"
    # the command reads finished seeds back instead of rerunning them, and writes seeds.md
    for s, summ in summaries.items():
        (tmp_path / f"seed_{s}").mkdir()
        (tmp_path / f"seed_{s}" / "summary.json").write_text(json.dumps(summ))
    main(["--out", str(tmp_path), "--seeds", "0", "1", "2"])
    assert (tmp_path / "seeds.md").read_text() == table


def test_reprobe_probes_the_trained_stages_again_without_training(embedded_data, tmp_path, monkeypatch):
    """Two real `launch.train` processes: the first trains and probes (linear), `--reprobe` with another probe
    setting (k-NN) keeps every trained weight and the old summary, and writes a summary with the new probe."""
    from test_train import SMALL

    monkeypatch.chdir(REPO)
    tiny = [*SMALL[:-2], f"data.root={embedded_data}", "experiment.total_steps=4", "log_every=1",
            "experiment.probe.seeds=1"]
    main(["--out", str(tmp_path), "--seeds", "3", "--", *tiny, "experiment.probe.families=[linear]"])
    run = tmp_path / "seed_3"
    first = json.loads((run / "summary.json").read_text())
    finals = {stage: (run / stage / "final.pt").read_bytes() for stage in ("teacher", "student")}
    assert set(first["probe"]["student"]) == {"linear"}

    main(["--out", str(tmp_path), "--seeds", "3", "--reprobe", "--", *tiny, "experiment.probe.families=[knn]"])
    again = json.loads((run / "summary.json").read_text())
    assert set(again["probe"]["student"]) == {"knn"} and set(again["probe"]) == set(first["probe"])
    assert {stage: (run / stage / "final.pt").read_bytes() for stage in finals} == finals  # nothing retrained
    assert again["stages"]["student"]["steps"] == first["stages"]["student"]["steps"]
    kept = list(run.glob("summary.before-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == first
    assert "| knn: digit - random >= 6 |" in (tmp_path / "seeds.md").read_text()
