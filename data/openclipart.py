"""Image-caption manifests from Debian's openclipart packages (public-domain clip art).

    python -m data.openclipart --out DIR [--root /usr/share/openclipart] [--val-fraction 0.2] [--seed 0]
                               [--max-per-category N] [--max-pixels 16777216]

Reads the PNGs of ``openclipart-png`` and, for each, the SVG of the same relative path in
``openclipart-svg``: the work's ``<dc:title>`` and (when present and different) ``<dc:description>`` are its
captions. The 22 top-level folders are the ``category`` probe label. Writes ``DIR/train.jsonl``,
``DIR/val.jsonl`` (split by file, per category, with a fixed seed) and ``DIR/categories.json``. PNGs over
``--max-pixels`` (19 of 8121, up to 25k x 25k: minutes each to decode) are left out and counted.
Installs nothing: when the packages are missing it says which apt command installs them.
"""
from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/openclipart")
APT_COMMAND = "sudo apt-get install openclipart-png openclipart-svg"
NS = {"dc": "http://purl.org/dc/elements/1.1/"}


class OpenClipartMissing(FileNotFoundError):
    pass


def check_installed(root: Path = DEFAULT_ROOT) -> None:
    missing = [f"{root / kind} (Debian package openclipart-{kind})" for kind in ("png", "svg")
               if not (root / kind).is_dir()]
    if missing:
        raise OpenClipartMissing(f"openclipart not found: {', '.join(missing)}. Install it with: {APT_COMMAND}")


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def svg_captions(svg: Path) -> list[str]:
    """The work's title and description (the ones under cc:Work, not the author's or publisher's titles)."""
    try:
        root = ET.parse(svg).getroot()
    except (ET.ParseError, OSError):
        # some files carry entities ElementTree rejects: fall back to the first title/description in the text
        text = svg.read_text(errors="replace")
        found = [re.search(rf"<dc:{tag}>(.*?)</dc:{tag}>", text, re.S) for tag in ("title", "description")]
        values = [_clean(m.group(1)) if m else "" for m in found]
    else:
        # the Creative Commons namespace differs between files (web.resource.org/cc/ or creativecommons.org/ns#)
        work = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Work"), None)
        values = [_clean(work.findtext(f"dc:{tag}", namespaces=NS)) if work is not None else ""
                  for tag in ("title", "description")]
    title, description = values
    captions = [title] if title else []
    if description and description.lower() != title.lower():
        captions.append(description)
    return captions


def png_pixels(path: Path) -> int | None:
    """Width x height from the PNG header (IHDR), without decoding; None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width * height


def collect(root: Path = DEFAULT_ROOT, max_pixels: int | None = None) -> tuple[list[dict], list[str], int]:
    """All PNGs as rows {path, labels: {category}, svg}, the sorted category names, and how many PNGs were
    left out for having more than `max_pixels` pixels (a few are 10k x 10k and more: minutes to decode)."""
    check_installed(root)
    png_root, svg_root = root / "png", root / "svg"
    categories = sorted(p.name for p in png_root.iterdir() if p.is_dir())
    rows, too_big = [], 0
    for k, cat in enumerate(categories):
        for png in sorted((png_root / cat).rglob("*.png")):
            if max_pixels and (png_pixels(png) or 0) > max_pixels:
                too_big += 1
                continue
            svg = svg_root / png.relative_to(png_root).with_suffix(".svg")
            rows.append({"path": str(png), "labels": {"category": k}, "svg": svg})
    return rows, categories, too_big


def with_captions(rows: list[dict]) -> list[dict]:
    """Manifest rows: the SVG's captions (none when the PNG has no SVG) replace the SVG path."""
    return [{"path": r["path"], "labels": r["labels"],
             "captions": svg_captions(r["svg"]) if r["svg"].is_file() else []} for r in rows]


def split(rows: list[dict], val_fraction: float = 0.2, seed: int = 0, max_per_category: int | None = None
          ) -> tuple[list[dict], list[dict]]:
    """Per category: a seeded permutation of its files, optionally capped; the first val_fraction go to val
    (at least one when the category has two files or more)."""
    rng = np.random.default_rng(seed)
    by_cat: dict[int, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["labels"]["category"], []).append(r)
    train, val = [], []
    for cat in sorted(by_cat):
        items = by_cat[cat]
        order = rng.permutation(len(items))[:max_per_category]
        n_val = int(round(len(order) * val_fraction))
        n_val = max(n_val, 1) if len(order) >= 2 and val_fraction > 0 else n_val
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return train, val


def build(out: str | Path, root: str | Path = DEFAULT_ROOT, val_fraction: float = 0.2, seed: int = 0,
          max_per_category: int | None = None, max_pixels: int | None = 4096 * 4096) -> dict:
    """Write the manifests into `out`; returns counts."""
    out, root = Path(out), Path(root)
    rows, categories, too_big = collect(root, max_pixels)
    train, val = (with_captions(part) for part in split(rows, val_fraction, seed, max_per_category))
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("val.jsonl", val)):
        with open(out / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    (out / "categories.json").write_text(json.dumps(categories, indent=1))
    return {"train": len(train), "val": len(val), "categories": len(categories),
            "uncaptioned": sum(not r["captions"] for r in train + val), "too_big": too_big,
            "with_description": sum(len(r["captions"]) > 1 for r in train + val)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.openclipart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, categories.json")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="where openclipart-png/-svg are installed")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-category", type=int, default=None, help="cap files per category (small runs)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="leave out larger PNGs (0: keep all)")
    a = p.parse_args(argv)
    try:
        counts = build(a.out, a.root, a.val_fraction, a.seed, a.max_per_category, a.max_pixels or None)
    except OpenClipartMissing as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {a.out}/train.jsonl ({counts['train']}), val.jsonl ({counts['val']}), categories.json "
          f"({counts['categories']}); {counts['uncaptioned']} without a caption, "
          f"{counts['with_description']} with a description; {counts['too_big']} PNGs over --max-pixels left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
