"""python -m data.check: a table of problems and a non-zero exit code."""

import json
import subprocess
import sys
from pathlib import Path

from data.check import main
from data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


def test_check_reports_every_problem(tmp_path, capsys):
    root = generate(tmp_path / "syn", num_videos=4, seed=0)
    good = sorted((root / "videos").glob("*.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "garbage.mp4").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "trunc.mp4").write_bytes(good[0].read_bytes()[:800])
    lines = [f"{good[0]} 0", f"{good[1]} 1", "empty.mp4 2", "text.mp4 3", "garbage.mp4 4", "trunc.mp4 5",
             "missing.mp4 6", "nolabel", f"{good[2]} three"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    assert main([str(tmp_path / "list.csv")]) == 1
    out = capsys.readouterr().out
    table = {ln.split()[0].rsplit(":", 1)[1]: ln for ln in out.splitlines() if "list.csv:" in ln}
    expect = {"3": "empty", "4": "unreadable", "5": "unreadable", "6": "unreadable", "7": "missing",
              "8": "bad_row", "9": "bad_label"}
    assert sorted(table) == sorted(expect)
    assert all(f" {reason} " in table[line] for line, reason in expect.items())
    assert "7 problem(s) in 9 row(s)" in out
    # too short for a 16 x 4 clip
    assert main([str(root / "val.jsonl"), "--frames-per-clip", "16", "--frame-step", "4"]) == 1
    assert "too_short" in capsys.readouterr().out


def test_check_cli_clean_manifest_exits_zero(tmp_path):
    root = generate(tmp_path, num_videos=3, seed=1)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "videos/000000.mp4", "label": 1}) + "\n")
    r = subprocess.run([sys.executable, "-m", "data.check", str(root / "m.jsonl"), "--decode"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok: 1 row(s)" in r.stdout
