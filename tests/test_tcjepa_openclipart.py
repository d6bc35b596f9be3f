"""openclipart image-caption manifests (Debian openclipart-png + openclipart-svg) and TC-JEPA on them.

The tests on real files skip when the packages are missing; install them with
`apt-get install openclipart-png openclipart-svg` (~156 MB download, ~330 MB installed)."""
import json
from pathlib import Path

import pytest

from ci_skips import require
from data import openclipart
from test_train import make_cfg

ROOT = openclipart.DEFAULT_ROOT
installed = pytest.mark.usefixtures("openclipart_installed")


@pytest.fixture
def openclipart_installed():
    require((ROOT / "png").is_dir() and (ROOT / "svg").is_dir(),
            f"openclipart not installed under {ROOT} ({openclipart.APT_COMMAND})")


def test_missing_packages_say_the_apt_command(tmp_path, capsys):
    with pytest.raises(openclipart.OpenClipartMissing, match="apt-get install openclipart-png openclipart-svg"):
        openclipart.build(tmp_path / "out", root=tmp_path)
    assert openclipart.main(["--out", str(tmp_path / "out"), "--root", str(tmp_path)]) == 2
    assert "apt-get install openclipart-png openclipart-svg" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written, nothing installed


def test_svg_metadata_gives_the_work_title_and_description(tmp_path):
    # the Creative Commons namespace varies between files; author titles (under cc:Agent) are not captions
    svg = tmp_path / "a.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF xmlns:cc="http://web.resource.org/cc/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<cc:Work><dc:title>red  apple</dc:title><dc:description>A shiny\n red apple</dc:description>'
        '<dc:creator><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:creator></cc:Work>'
        '</rdf:RDF></metadata></svg>')
    assert openclipart.svg_captions(svg) == ["red apple", "A shiny red apple"]


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@installed
def test_manifests_from_the_real_packages(tmp_path):
    counts = openclipart.build(tmp_path / "a", max_per_category=4, seed=0)
    categories = json.loads((tmp_path / "a" / "categories.json").read_text())
    assert counts["categories"] == len(categories) == 22 and "animals" in categories
    train, val = _read(tmp_path / "a" / "train.jsonl"), _read(tmp_path / "a" / "val.jsonl")
    assert not {r["path"] for r in train} & {r["path"] for r in val}  # split by file
    assert {r["labels"]["category"] for r in val} == set(range(22))  # every category is probed
    for r in train[:20]:
        folder = Path(r["path"]).relative_to(ROOT / "png").parts[0]
        assert Path(r["path"]).is_file() and categories[r["labels"]["category"]] == folder
    # fixed seed: the same split again; another seed: another one
    openclipart.build(tmp_path / "b", max_per_category=4, seed=0)
    assert _read(tmp_path / "b" / "val.jsonl") == val
    openclipart.build(tmp_path / "c", max_per_category=4, seed=1)
    assert _read(tmp_path / "c" / "val.jsonl") != val
    # the few giant PNGs are left out (read from the header, not decoded)
    assert counts["too_big"] > 0
    assert all(openclipart.png_pixels(Path(r["path"])) <= 4096 * 4096 for r in train + val)
    from torchvision.io import decode_image

    img = decode_image(train[0]["path"])
    assert openclipart.png_pixels(Path(train[0]["path"])) == img.shape[1] * img.shape[2]
    elephant = ROOT / "svg" / "animals" / "mammals" / "elephant_01.svg"
    if elephant.is_file():
        assert openclipart.svg_captions(elephant) == ["elephant"]


@installed
def test_tcjepa_trains_on_openclipart_images_and_captions(tmp_path):
    from vjepa.train.experiment import run_experiment

    openclipart.build(tmp_path / "oc", max_per_category=3, seed=0)
    cfg = make_cfg(tmp_path, tmp_path / "run", "experiment=tcjepa_openclipart", "experiment.total_steps=3",
                   f"data.train=[{tmp_path / 'oc' / 'train.jsonl'}]", f"data.val={tmp_path / 'oc' / 'val.jsonl'}",
                   "data.crop_size=64", "data.frames_per_clip=1", "experiment.probe.enabled=true")
    assert (cfg.data.frames_per_clip, cfg.model.tubelet_size, cfg.mask.kind) == (1, 1, "ijepa")
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["complete"] and set(summary["probe"]["student"]["attentive"]) == {"category"}
