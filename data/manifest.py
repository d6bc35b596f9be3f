"""Manifests: lists of media files with labels, captions and optional time ranges.

Formats (chosen by content, not by extension alone):
- reference V-JEPA CSV: ``<path> <label>`` per line, space separated, no header (existing file lists work unchanged);
- JSONL: one object per line with ``path`` and optionally ``label`` (int), ``labels`` ({name: int}),
  other integer columns named in ``label_keys``, ``caption`` (str) / ``captions`` (list[str]),
  ``start`` / ``end`` (seconds);
- CSV with a header row containing ``path`` (comma separated): same columns as JSONL; ``captions``
  may hold several captions separated by ``|``.

Relative paths resolve against the manifest's folder. Rows that cannot be read are not fatal:
they are returned as :class:`Problem` records with ``file:line`` so that loaders count them and
``python -m data.check`` prints them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    path: str                                   # absolute path to the media file
    labels: dict[str, int] = field(default_factory=dict)
    captions: tuple[str, ...] = ()
    start: float | None = None                  # seconds
    end: float | None = None                    # seconds
    source: str = ""                            # "manifest:line", for error messages


@dataclass(frozen=True)
class Problem:
    where: str                                  # "file:line" or a file path
    path: str                                   # media path if known, else ""
    reason: str                                 # short category: bad_row, bad_label, missing, empty, ...
    detail: str = ""


def _to_int_label(name: str, value) -> int:
    # bools are ints in Python but never valid labels; floats only when integral ("3.0" from pandas dumps)
    if isinstance(value, bool):
        raise ValueError(f"label {name!r} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            raise ValueError(f"label {name!r} must be an integer, got {value!r}") from None
        if f.is_integer():
            return int(f)
    raise ValueError(f"label {name!r} must be an integer, got {value!r}")


def _item_from_record(rec: dict, folder: Path, where: str, label_keys: tuple[str, ...]) -> Item:
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    path = rec.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError("missing or empty 'path'")
    labels: dict[str, int] = {}
    if rec.get("label") not in (None, ""):
        labels["label"] = _to_int_label("label", rec["label"])
    named = rec.get("labels")
    if named not in (None, ""):
        if isinstance(named, str):  # CSV cell holding JSON
            named = json.loads(named)
        if not isinstance(named, dict):
            raise ValueError(f"'labels' must be an object of name -> int, got {type(named).__name__}")
        for k, v in named.items():
            labels[str(k)] = _to_int_label(k, v)
    for k in label_keys:
        if rec.get(k) not in (None, ""):
            labels[k] = _to_int_label(k, rec[k])
    captions: list[str] = []
    if rec.get("caption") not in (None, ""):
        captions.append(str(rec["caption"]))
    caps = rec.get("captions")
    if caps not in (None, ""):
        if isinstance(caps, str):
            caps = [c for c in caps.split("|") if c.strip()]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError("'captions' must be a list of strings")
        captions.extend(caps)
    start = float(rec["start"]) if rec.get("start") not in (None, "") else None
    end = float(rec["end"]) if rec.get("end") not in (None, "") else None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    return Item(str((folder / path.strip()).resolve()) if not Path(path).is_absolute() else path.strip(),
                labels, tuple(captions), start, end, where)


def _looks_like_jsonl(first: str) -> bool:
    return first.lstrip().startswith("{")


def read_manifest(manifest: str | Path, label_keys: tuple[str, ...] = ()) -> tuple[list[Item], list[Problem]]:
    """Parse one manifest. Returns (items, problems); never raises for bad rows, only for an unreadable file."""
    manifest = Path(manifest)
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read manifest {manifest}: {e}") from e
    folder = manifest.resolve().parent
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    items: list[Item] = []
    problems: list[Problem] = []

    def bad(lineno: int, path: str, reason: str, detail: str) -> None:
        problems.append(Problem(f"{manifest}:{lineno}", path, reason, detail))

    if _looks_like_jsonl(first):
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad(lineno, "", "bad_row", f"invalid JSON: {e.msg}")
                continue
            try:
                items.append(_item_from_record(rec, folder, f"{manifest}:{lineno}", label_keys))
            except (ValueError, TypeError) as e:
                kind = "bad_label" if "label" in str(e) else "bad_row"
                bad(lineno, rec.get("path", "") if isinstance(rec, dict) else "", kind, str(e))
    elif "path" in [c.strip() for c in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            lineno = reader.line_num
            if row is None or not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            if None in row:  # more cells than header columns
                bad(lineno, row.get("path") or "", "bad_row", "more cells than header columns")
                continue
            try:
                items.append(_item_from_record(row, folder, f"{manifest}:{lineno}", label_keys))
            except (ValueError, TypeError) as e:
                kind = "bad_label" if "label" in str(e) else "bad_row"
                bad(lineno, row.get("path") or "", kind, str(e))
    else:
        # reference format: "<path> <label>"; the path is everything before the last space so that
        # paths containing spaces still work
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            path, sep, label = line.rpartition(" ")
            if not sep or not path.strip():
                bad(lineno, line, "bad_row", "expected '<path> <label>'")
                continue
            try:
                items.append(_item_from_record({"path": path.strip(), "label": label}, folder,
                                               f"{manifest}:{lineno}", ()))
            except (ValueError, TypeError) as e:
                bad(lineno, path.strip(), "bad_label", str(e))
    for p in problems:
        log.warning("skipping %s (%s): %s", p.where, p.reason, p.detail)
    return items, problems


@dataclass
class MixedManifest:
    """Several manifests concatenated; ``weights`` (one per manifest) drive the weighted sampler."""
    items: list[Item]
    problems: list[Problem]
    sizes: list[int]                            # items per manifest, in order
    weights: list[float] | None = None

    def sample_weights(self) -> list[float] | None:
        """Per-item probability mass: manifest weight spread evenly over its items (V-JEPA's scheme)."""
        if self.weights is None:
            return None
        per_item: list[float] = []
        for size, w in zip(self.sizes, self.weights):
            per_item += [w / size] * size if size else []
        return per_item


def read_manifests(manifests, weights=None, label_keys: tuple[str, ...] = ()) -> MixedManifest:
    """Read one manifest path or a list of them; optional per-manifest sampling weights."""
    if isinstance(manifests, (str, Path)):
        manifests = [manifests]
    manifests = list(manifests)
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(manifests):
            raise ValueError(f"{len(weights)} weights for {len(manifests)} manifests")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    items, problems, sizes = [], [], []
    for m in manifests:
        its, probs = read_manifest(m, label_keys)
        items += its
        problems += probs
        sizes.append(len(its))
    if not items:
        raise ValueError(f"no readable items in {', '.join(map(str, manifests))} "
                         f"({len(problems)} bad rows, first: {problems[0] if problems else 'empty file'})")
    return MixedManifest(items, problems, sizes, weights)


def items_from_image_folder(root: str | Path,
                            extensions=(".jpg", ".jpeg", ".png", ".bmp", ".webp")) -> tuple[list[Item], list[str]]:
    """Folder-per-class images (``root/<class>/<file>``): items labelled by sorted class name, and the class
    names."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"no class folders in {root}")
    items = [Item(str(f.resolve()), {"label": k}, (), None, None, str(f))
             for k, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.suffix.lower() in extensions]
    if not items:
        raise ValueError(f"no images with extensions {extensions} under {root}")
    return items, classes
