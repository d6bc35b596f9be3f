"""Loader benchmark: clips/s per backend and worker count, against the bare-decoder ceiling.

    python -m data.bench [--videos DIR] [--batches 24] [--repeats 3] [--workers 0 1 2]
                         [--backends decord pyav dali dali-gpu] [--no-write | --docs PATH --section NAME]

Settings are those of ``../shared/reference.md`` §8: 16 frames, step 4, 1 clip, random resized crop 224
(scale (0.3, 1.0), ratio (0.75, 1.35)), flip, normalise, batch 8, on the 8 files of
``../shared/bench/make_videos.sh`` (made with PyAV by ``data.benchvideos`` when there is no ffmpeg).
The ceiling decodes exactly the loader's frame indices with plain library code (``LIBRARY``),
readers kept open, in a tight loop (1 process, and 2 processes in parallel); PyAV's loader is also held
against our ``PyAVReader`` alone, which decodes fewer frames than plain PyAV code. Each loader row runs
``--repeats`` times, each time right after its ceiling, and reports medians: on a shared machine throughput
drifts by 10-20% between minutes, and a ratio of two back-to-back runs cancels most of that.
``dali-gpu`` (needs CUDA): DALI NVDEC (``device='mixed'``), a batch of clips per pipeline run, frames decoded
into GPU memory; its loader runs in the training process (0 workers) and crops, flips and normalises on the
GPU. Writes the ``## Data loader`` section of ``docs/benchmarks.md`` and prints it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.benchvideos import make_bench_videos
from data.clips import clip_indices
from data.decoders import DALI_CPU_CODECS, installed, open_video, rgb_converter
from data.loader import build_loader
from data.manifest import read_manifest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SETTINGS = dict(batch_size=8, frames_per_clip=16, frame_step=4, num_clips=1, size=224, train=True, seed=0)
REFERENCE = {0: 8.0, 2: 15.7}                 # clips/s, reference.md §8
REFERENCE_BARE = "bare decord: 9.4 (reader per clip), 12.5 (reader kept open), 16.4 (2 processes)"
REPEAT = 8                                     # each file listed 8 times: 64 items = 8 batches per epoch


def _items(csv: Path):
    items, problems = read_manifest(csv)
    if problems:
        raise SystemExit(f"bad benchmark manifest {csv}: {problems[:3]}")
    return items * REPEAT


def loader_clips_per_s(items, backend: str, workers: int, batches: int, normalize: bool = False,
                       **loader_kw) -> tuple[float, float]:
    """(clips/s wall clock, CPU ms per clip of this process -- all the work when workers == 0).

    ``normalize=False`` measures what the GPU training path asks of the CPU: uint8 batches handed to the
    device copy (the float pass runs on the GPU); ``True`` adds the float pass on this CPU (CPU training)."""
    loader = build_loader(items=items, backend=backend, num_workers=workers, normalize=normalize,
                          **{**SETTINGS, **loader_kw})
    it = iter(loader)
    next(it)  # warm-up: workers start, decoders open
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while done < batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    if batch["video"].is_cuda:
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert batch["video"].shape == (8, 3, 16, 224, 224)
    assert batch["video"].dtype == (torch.float32 if normalize else torch.uint8)
    del it
    loader.close()  # persistent workers would otherwise linger (and prefetch) into the next measurement
    clips = batches * SETTINGS["batch_size"]
    return clips / elapsed, 1000 * cpu / clips


def loader_keys(items, clips: int) -> list[tuple[int, list[int]]]:
    """(item index, frame indices) of the ``clips`` training clips the loader rows time (those after the
    warm-up batch), exactly as the loader samples them."""
    loader = build_loader(items=items, num_workers=0, **SETTINGS)
    ds = loader.dataset
    keys, epoch, warm_up = [], 0, SETTINGS["batch_size"]
    while len(keys) < clips + warm_up:
        keys += [k for batch in loader._batches(epoch) for k in batch]
        epoch += 1
    frames = {}
    out = []
    for index, ep, draw in keys[warm_up:warm_up + clips]:
        path = items[index].path
        if path not in frames:
            frames[path] = open_video(path, "pyav").num_frames
        rng = np.random.default_rng(ds._seeds(ep, draw, index, 0)[0])
        out.append((index, clip_indices(frames[path], 16, 4, 1, rng)[0].tolist()))
    return out


class PyAVLibraryReader:
    """PyAV's bare-library ceiling: what plain PyAV code does for a clip, with the file kept open -- seek to
    the keyframe at or before the clip's first frame, decode every frame up to its last, convert the wanted
    ones to RGB. One decoder thread, as in a loader worker, and our reader's RGB conversion
    (:func:`data.decoders.rgb_converter`), so the two differ only in what they decode. Same frames as
    ``PyAVReader`` (checked by :func:`run` and tests/test_data_decoders.py); ``PyAVReader`` decodes fewer
    frames to get them: it drops the non-reference frames it does not need, starts from the keyframe nearest
    each wanted frame, and goes on without seeking when the decoder already sits before the next one."""

    def __init__(self, path: str):
        import av

        self._container = av.open(path)
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = 1
        self._pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size)
        self._to_rgb = rgb_converter()

    def get_frames(self, indices) -> np.ndarray:
        wanted = {self._pts[i] for i in indices}
        last = max(wanted)
        self._container.seek(min(wanted), stream=self._stream, backward=True, any_frame=False)
        found = {}
        for frame in self._container.decode(self._stream):
            if frame.pts in wanted:
                found[frame.pts] = self._to_rgb(frame)
            if frame.pts is not None and frame.pts >= last:
                break
        return np.stack([found[self._pts[i]] for i in indices])


def check_library_frames(items, keys) -> None:
    """The bare-library ceiling decodes the frames the loader's reader returns, pixel for pixel (one reader
    of each kind per file, kept open across the keys, as in the timed loops)."""
    plain, ours = {}, {}
    for index, idx in keys:
        path = items[index].path
        if path not in plain:
            plain[path], ours[path] = PyAVLibraryReader(path), open_video(path, "pyav")
        if not np.array_equal(plain[path].get_frames(idx), ours[path].get_frames(idx)):
            raise AssertionError(f"plain PyAV and PyAVReader disagree on {path} frames {idx}")


def open_bare(path: str, kind: str):
    """A reader for a ceiling: ``pyav-library`` (plain PyAV, above) or one of our backends alone."""
    return PyAVLibraryReader(path) if kind == "pyav-library" else open_video(path, kind)


def _bare_loop(args) -> tuple[int, float, float]:
    backend, paths, keys = args
    readers = {}
    start, cpu = time.perf_counter(), time.process_time()
    for index, idx in keys:
        path = paths[index]
        if path not in readers:
            readers[path] = open_bare(path, backend)
        readers[path].get_frames(idx)
    return len(keys), time.perf_counter() - start, time.process_time() - cpu


def bare_clips_per_s(items, backend: str, keys, processes: int) -> tuple[float, float]:
    """(clips/s wall clock, CPU ms per clip). With several processes each decodes the clips that worker
    would decode in the loader: the DataLoader hands whole batches to its workers in turn, and the timed
    batches start after the warm-up batch (which went to worker 0). That split is what the workers face:
    interleaving single clips instead balances the processes better and ran 3-10% faster here."""
    paths = [it.path for it in items]
    if processes == 1:
        n, t, cpu = _bare_loop((backend, paths, keys))
        return n / t, 1000 * cpu / n
    bs = SETTINGS["batch_size"]
    batches = [keys[i:i + bs] for i in range(0, len(keys), bs)]
    shards = [(backend, paths, [k for j, b in enumerate(batches) if (1 + j) % processes == p for k in b])
              for p in range(processes)]
    with mp.get_context("forkserver").Pool(processes) as pool:
        results = pool.map(_bare_loop, shards)
    n = sum(r[0] for r in results)
    return n / max(r[1] for r in results), 1000 * sum(r[2] for r in results) / n


DALI_GPU_LOADER = dict(device="cuda", decoder_options={"device": "mixed", "device_id": 0})  # + backend="dali"


def dali_gpu_bare_clips_per_s(items, keys, per_run: int, threads: int | None = None) -> float:
    """NVDEC ceiling: the same clips decoded by DALI alone, ``per_run`` clips per pipeline run, frames left
    in GPU memory (readers opened -- file bytes read, metadata probed -- before the clock starts)."""
    from data.decoders import dali_decode

    readers = {}
    for index, _ in keys:
        path = items[index].path
        if path not in readers:
            readers[path] = open_video(path, "dali", device="mixed", device_id=0, threads=threads)
    requests = [(readers[items[index].path], idx) for index, idx in keys]
    dali_decode(requests[:per_run])  # warm-up: pipeline built, NVDEC sessions made
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(requests), per_run):
        frames = dali_decode(requests[i:i + per_run])
    torch.cuda.synchronize()
    assert frames[0].is_cuda and frames[0].shape[0] == 16
    return len(requests) / (time.perf_counter() - start)


def measure_dali_gpu(items, keys, batches: int, repeats: int, threads: list[int]) -> list[tuple]:
    """NVDEC ceilings per pipeline thread count (DALI decodes the clips of a run in parallel, one per thread)
    and clips per run, then the GPU loader (default threads) against its ceiling."""
    if not torch.cuda.is_available():
        return [("dali-gpu", "n/a", "DALI NVDEC (device='mixed') needs a GPU; none here")]
    if not installed("dali"):
        return [("dali-gpu", "n/a", "nvidia-dali is not installed here (.ci/pack_dali.sh carries it to a GPU machine)")]
    from data.decoders import DALI_MIXED_THREADS, usable_cpus

    bs = SETTINGS["batch_size"]
    rows = []
    for t in threads:
        for per_run in (bs, 64):
            rate = _median([dali_gpu_bare_clips_per_s(items, keys, per_run, t) for _ in range(repeats)])
            note = "NVDEC ceiling, frames left in GPU memory" + (" (the loader's batch)" if per_run == bs else "")
            rows.append((f"dali-gpu bare, {per_run} clips per pipeline run, {t} threads", f"{rate:.1f}", note))
    default = min(DALI_MIXED_THREADS, usable_cpus())
    rates, ratios = [], []
    for _ in range(repeats):
        ceiling = dali_gpu_bare_clips_per_s(items, keys, bs, default)
        rate, _ = loader_clips_per_s(items, "dali", 0, batches, normalize=True, **DALI_GPU_LOADER)
        rates.append(rate)
        ratios.append(rate / ceiling)
    rows.append(_loader_row(f"dali-gpu loader, 0 workers, {default} pipeline threads", rates, ratios, REFERENCE[2],
                            detail=f" ({default} threads, a batch per run)",
                            tail="; crop, flip, normalise on the GPU, float32 batch on the GPU",
                            ceiling="NVDEC ceiling"))
    return rows


def codec_of(path: str) -> tuple[str, str]:
    """(video codec, the muxer's encoder tag) of a file: what the table says the files are."""
    import av

    with av.open(path) as c:
        return c.streams.video[0].codec_context.name, c.metadata.get("encoder", "no encoder tag")


def _median(xs):
    return float(np.median(xs))


# each backend's bare-library ceiling: (the reader open_bare makes, what it does)
LIBRARY = {"decord": ("decord", "get_batch"), "pyav": ("pyav-library", "seek to the keyframe, decode every frame"),
           "dali": ("dali", "fn.decoders.video")}


def _loader_row(name: str, rates: list[float], ratios: list[float], ref: float | None, detail: str = "",
                tail: str = "", ceiling: str = "bare-library ceiling") -> tuple:
    rate, ratio = _median(rates), _median(ratios)
    note = f"{ratio:.0%} of {ceiling}{detail}"
    if ref:
        note += f"; {rate / ref:.2f}x reference ({ref})"
    note += tail
    print(f"{name}: {rate:.1f} clips/s ({note})", flush=True)
    return name, f"{rate:.1f}", note


def _pairs(ratios: list[float]) -> str:
    return ", ".join(f"{r:.0%}" for r in ratios)


def measure_backend(items, backend: str, keys, workers: list[int], batches: int, repeats: int) -> list[tuple]:
    """Table rows for one backend: the bare ceilings and, per worker count, the loader against the ceilings
    measured right before it (medians over ``repeats`` pairs). The goal's ceiling is the bare library's
    (``LIBRARY``); where our reader does less work than plain library code (pyav), the loader is also held
    against our reader alone, which shows what the loader itself costs."""
    library, what = LIBRARY[backend]
    kinds = [library] + ([backend] if library != backend else [])  # the ceilings measured before each loader run
    ceilings = {(k, max(w, 1)): [] for k in kinds for w in workers}  # n workers are held against n processes
    cpu1 = {k: [] for k in kinds}
    loader_rows = []
    for w in workers:
        procs = max(w, 1)
        rates, cpus, cpu_rates = [], [], []
        ratios = {k: [] for k in kinds}
        cpu_ratios = {k: [] for k in kinds}
        for _ in range(repeats):
            ceiling = {}
            for k in kinds:
                ceiling[k], cpu = bare_clips_per_s(items, k, keys, procs)
                ceilings[(k, procs)].append(ceiling[k])
                if procs == 1:
                    cpu1[k].append(cpu)
            rate, lcpu = loader_clips_per_s(items, backend, w, batches)
            rates.append(rate)
            cpus.append(lcpu)
            for k in kinds:
                ratios[k].append(rate / ceiling[k])
            if w == max(workers):  # the CPU-training variant of the goal row
                rate, _ = loader_clips_per_s(items, backend, w, batches, normalize=True)
                cpu_rates.append(rate)
                for k in kinds:
                    cpu_ratios[k].append(rate / ceiling[k])
        ref = REFERENCE.get(w)

        def own(r: dict) -> str:  # the stricter ratio, where our reader is not the library's own
            return (f"; {_median(r[backend]):.0%} of {backend} reader alone (per pair {_pairs(r[backend])})"
                    if library != backend else "")

        loader_rows.append(_loader_row(
            f"{backend} loader, {w} workers", rates, ratios[library], ref,
            detail=f" (per pair {_pairs(ratios[library])}){own(ratios)}",
            tail=f"; {_median(cpus):.0f} CPU ms/clip (all work in-process)" if w == 0 else ""))
        if cpu_rates:
            loader_rows.append(_loader_row(f"{backend} loader, {w} workers, normalised on this CPU",
                                           cpu_rates, cpu_ratios[library], ref, detail=own(cpu_ratios)))
    rows = []
    for (k, procs), rates in ceilings.items():
        if k == library:
            name, note = f"{backend} bare library ({what})", "decode ceiling"
        else:
            name, note = f"{backend} reader alone", "our reader without the loader"
        if procs == 1:
            rows.append((f"{name}, 1 process", f"{_median(rates):.1f}",
                         f"{note}, readers kept open; {_median(cpu1[k]):.0f} CPU ms/clip"))
        else:
            rows.append((f"{name}, {procs} processes", f"{_median(rates):.1f}", f"{note} for {procs} workers"))
    return rows + loader_rows


def run(videos: Path | None, batches: int, workers: list[int], backends: list[str], repeats: int = 3,
        section_name: str = "Data loader", dali_threads: tuple[int, ...] = (1, 8)) -> str:
    tmp = None
    if videos is None:
        tmp = tempfile.TemporaryDirectory(prefix="vjepa_bench_")
        print("making benchmark videos ...", flush=True)
        csv = make_bench_videos(tmp.name)
    else:
        csv = videos / "videos.csv" if videos.is_dir() else videos
        if not csv.exists():
            csv = make_bench_videos(videos)
    items = _items(csv)
    codec, muxer = codec_of(items[0].path)
    clips = batches * SETTINGS["batch_size"]
    keys = loader_keys(items, clips)
    rows = []
    load_before = os.getloadavg()[0]
    for backend in backends:
        if backend == "dali-gpu":
            rows += measure_dali_gpu(items, keys, batches, repeats, dali_threads)
            continue
        if backend == "dali" and codec not in DALI_CPU_CODECS:
            rows.append((backend, "n/a", f"DALI's CPU decoder cannot decode {codec} (see the dali-gpu rows)"))
            continue
        if backend == "pyav":
            check_library_frames(items, keys[:8])
        rows += measure_backend(items, backend, keys, workers, batches, repeats)
    load_after = os.getloadavg()[0]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    made = "made by ../shared/bench/make_videos.sh (ffmpeg)" if shutil.which("ffmpeg") else \
        ("made by `data.benchvideos` with PyAV (no ffmpeg binary here: similar content, not byte-identical to "
         "make_videos.sh)")
    source = made if tmp else f"`--videos {csv.parent}` (muxed by {muxer})"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    dali_note = ("DALI GPU rows: see the dali-gpu rows above." if "dali-gpu" in backends and gpu else
                 "DALI GPU (`device='mixed'`) rows need a GPU machine (`--backends decord dali-gpu` there): "
                 "see `## Data loader on a GPU machine (H200)`.")
    machine = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores{gpu}, "
               f"torch {torch.__version__}")
    section = f"""## {section_name}

`python -m data.bench` ({machine}).
Files: 8 x 10 s 320x240 30 fps {codec} (x264 defaults, keyint 250), {source}; each listed {REPEAT}x.
Clip: 16 frames, step 4, 1 clip, RandomResizedCrop 224 scale (0.3, 1.0) ratio (0.75, 1.35), flip, batch 8;
{clips} clips timed per run after one warm-up batch. Bare-library ceiling: the same frame indices decoded by
plain library code in a tight loop, readers kept open (decord: `get_batch`; PyAV: seek to the keyframe, decode
every frame to the clip's last, convert the wanted ones; one decoder thread each, as in a worker). Our PyAV
reader decodes fewer frames than that (below), so its loader is also held against that reader alone, which
shows what the loader itself costs. Loader rows: uint8 batches handed to the training device, which normalises them (the
GPU path: the float pass runs on the GPU); the "normalised on this CPU" row adds that pass in the training
process, as CPU training does. Each loader row ran {repeats}x, each right after its ceiling; the table gives medians
(clips/s on this shared machine drifts 10-20% between minutes; back-to-back ratios drift much less).
Machine load average {load_before:.1f} -> {load_after:.1f} during the run (the benchmark's own processes included).
Reference (V-JEPA 1 loader, reference.md §8): 8.0 clips/s with 0 workers, 15.7 with 2; {REFERENCE_BARE}.

| configuration | clips/s | notes |
|---|---|---|
{table}

The `pyav` backend decodes from the nearest keyframe and lets FFmpeg drop non-reference frames that are not
requested (`skip_frame=NONREF`), so it decodes fewer frames than decord for the same, pixel-identical output.
{dali_note}
"""
    if tmp:
        tmp.cleanup()
    return section


def write_section(section: str, path: Path = DOCS) -> None:
    """Replace (or append) the section with ``section``'s heading, leaving other sections alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = section.splitlines()[0]
    match = re.search(rf"^{re.escape(heading)}$", text, re.MULTILINE)  # the whole line: not "### ..." nor a prefix
    start = match.start() if match else -1
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip() + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, default=None, help="folder with videos.csv (made if missing)")
    p.add_argument("--batches", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backends", nargs="+", default=["decord", "pyav", "dali", "dali-gpu"])
    p.add_argument("--dali-threads", type=int, nargs="+", default=[1, 8], help="dali-gpu: pipeline threads to try")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--docs", type=Path, default=DOCS, help="markdown file the section is written to")
    p.add_argument("--section", default="Data loader", help="section heading (a GPU machine's run gets its own)")
    a = p.parse_args(argv)
    section = run(a.videos, a.batches, a.workers, a.backends, a.repeats, a.section, tuple(a.dali_threads))
    if not a.no_write:
        write_section(section, a.docs)
    print(section)


if __name__ == "__main__":
    main()
