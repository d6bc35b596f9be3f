"""`python -m launch.trace_summary A.json B.json [--names a b] [--out FILE.md] [--gap-us 50]`: two torch.profiler
chrome traces (`launch.bench --trace DIR` writes DIR/CASE.json; .json.gz is read too) side by side, per step.

Per trace: wall time; on a GPU the device busy time (union of kernel, memcpy and memset intervals over all
streams), idle time and idle gaps longer than --gap-us with what the host was running meanwhile; kernel time and
host-op self time by category; host-device synchronisations (runtime calls and the aten ops that force one) with
their callers; memcpy kinds and bytes; cudaMalloc/cudaFree (caching-allocator misses); the input dtypes of the
matmul-like ops as called and as run (autocast casts in between); copy/cast/layout ops. Then the rows that
differ most, in plain sentences. Steps are the `ProfilerStep#N` annotations; without them the whole trace is one.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

HOST_CATS = {"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}  # gpu_user_annotation / cuda_sync mark time, they use none
SYNC_CALLS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D"}
SYNC_OPS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
            "aten::unique", "aten::_unique2", "aten::unique_consecutive", "aten::equal", "aten::allclose",
            "aten::repeat_interleave", "aten::nonzero_static", "aten::masked_scatter_"}
ALLOC = re.compile(r"^(cudaMalloc|cudaFree|cudaHostAlloc|cudaMallocHost|cudaFreeHost)")
MATMUL_OPS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|addbmm|linear|matmul|einsum|_addmm_activation|"
                        r"(_?scaled_dot_product\w*))$")
LAYOUT_OPS = {"aten::contiguous", "aten::copy_", "aten::to", "aten::_to_copy", "aten::clone"}
# first match wins: attention and optimizer kernels are also "elementwise" or "gemm" by name; copies are
# unrolled_elementwise kernels of direct_copy_kernel_cuda
CATEGORIES = [
    ("attention", r"flash|fmha|sdpa|scaled_dot_product|attention|attn"),
    ("optimizer", r"multi_tensor_apply|adam|_foreach_|^Optimizer\."),
    ("norm", r"layer_norm|layernorm|rms_norm|group_norm|batch_norm|GammaBeta"),
    ("copy/cast", r"copy|^Memcpy|^Memset|contiguous|clone|^aten::to$|cast"),
    ("matmul", r"gemm|gemv|nvjet|xmma|cublas|cutlass|matmul|^aten::(mm|addmm|bmm|baddbmm|addbmm|linear|einsum)$"),
    ("elementwise/reduction", r"elementwise|reduce|softmax|SoftMax|aten::(add|sub|mul|div|gelu|silu|relu|sigmoid|"
                              r"tanh|exp|log|pow|sqrt|rsqrt|neg|abs|sum|mean|amax|max|min|where|fill|zero|clamp|"
                              r"lerp|addc|sign|l1_loss|mse_loss|smooth_l1|.*_backward$)"),
]
CATEGORIES = [(name, re.compile(pattern, re.I)) for name, pattern in CATEGORIES]
DTYPES = {"float": "float32", "c10::BFloat16": "bfloat16", "c10::Half": "float16", "double": "float64"}


class TraceError(ValueError):
    """A file that is not a readable torch.profiler chrome trace; the message names it."""


def category(name: str) -> str:
    return next((cat for cat, pattern in CATEGORIES if pattern.search(name)), "other")


def load_events(path: Path) -> list[dict]:
    try:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rt") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, OSError) as e:
        raise TraceError(f"{path}: not a readable JSON trace (truncated or not JSON?): {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise TraceError(f"{path}: not a torch.profiler chrome trace (no traceEvents list)")
    return [e for e in doc["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]


def dtypes(event: dict) -> str:
    """The tensor inputs' dtypes in order of first appearance: 'bfloat16', 'float32 x bfloat16'."""
    seen = [DTYPES.get(t, t) for t in event.get("args", {}).get("Input type", []) if t in DTYPES]
    return " x ".join(dict.fromkeys(seen)) or "unrecorded dtypes"  # a trace taken without record_shapes


def nest(host: list[dict]) -> None:
    """Give each host event its enclosing event on the same thread ('parent') and its self time."""
    by_thread = defaultdict(list)
    for e in host:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            e["parent"] = stack[-1] if stack else None
            e["self"] = e["dur"]
            if e["parent"] is not None and e["cat"] in ("cpu_op", "user_annotation"):
                e["parent"]["self"] -= e["dur"]
            stack.append(e)


def ancestors(e: dict):
    while (e := e.get("parent")) is not None:
        yield e


def caller(e: dict, skip=frozenset()) -> str:
    """The nearest enclosing op or annotation not in ``skip`` ('(python)' when called from Python directly)."""
    up = next((a for a in ancestors(e) if a["name"] not in skip and not a["name"].startswith("ProfilerStep#")), None)
    return up["name"] if up else "(python)"


def union(intervals: list[tuple[float, float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def summarise(path: Path, gap_us: float = 50.0) -> dict:
    """Everything the report shows of one trace. ``totals``: label -> sum over the profiled steps, in us for
    labels ending '(ms)', bytes for '(MB)', else a count; ``rows`` turns them into per-step values."""
    path = Path(path)
    events = load_events(path)
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")]
    spans = steps or [e for e in events if e.get("cat") in HOST_CATS | DEVICE_CATS]  # no marks: one step
    if not spans:
        raise TraceError(f"{path}: no host or device events in the trace")
    t0, t1 = min(e["ts"] for e in spans), max(e["ts"] + e["dur"] for e in spans)
    host = [e for e in events if e.get("cat") in HOST_CATS and t0 <= e["ts"] <= t1]
    nest(host)
    # device work launched inside the steps (correlation id of its launch), whenever it ran
    launched = {e["args"]["correlation"] for e in host if "correlation" in e.get("args", {})}
    device = [e for e in events if e.get("cat") in DEVICE_CATS
              and (e.get("args", {}).get("correlation") in launched
                   or ("correlation" not in e.get("args", {}) and t0 <= e["ts"] <= t1))]
    s = {"path": str(path), "steps": max(len(steps), 1), "marked": bool(steps), "wall": t1 - t0, "device": None,
         "gaps": [], "callers": defaultdict(Counter), "totals": Counter()}
    total = s["totals"]
    if device:
        busy = union([(e["ts"], e["ts"] + e["dur"]) for e in device])
        end = max(t1, busy[-1][1])
        busy_us = sum(b - a for a, b in busy)
        gaps = [(b[0] - a[1], a[1]) for a, b in zip(busy, busy[1:]) if b[0] - a[1] > gap_us]
        s["device"] = {"device busy (ms)": busy_us, "device busy %": 100 * busy_us / (end - t0),
                       "device idle (ms)": end - t0 - busy_us, "idle gaps (count)": len(gaps),
                       "idle gaps (ms)": sum(g for g, _ in gaps)}
        s["gaps"] = [(g, start - t0, host_at(host, start + g / 2)) for g, start in sorted(gaps, reverse=True)[:5]]
        for e in device:
            total[f"device: {category(e['name'])} (ms)"] += e["dur"]
            if e["cat"] == "gpu_memcpy":
                kind = re.match(r"Memcpy (\w+)", e["name"])
                kind = kind.group(1) if kind else e["name"]
                total[f"memcpy {kind} (count)"] += 1
                total[f"memcpy {kind} (MB)"] += e.get("args", {}).get("bytes", 0)
    for e in host:
        name, ups = e["name"], list(ancestors(e))
        if e["cat"] == "cpu_op":
            in_optimizer = any(a["name"].startswith("Optimizer.step") for a in ups)
            total[f"host op self time: {'optimizer' if in_optimizer else category(name)} (ms)"] += e["self"]
        if e["cat"] == "cuda_runtime" and (name in SYNC_CALLS or ALLOC.match(name)):
            kind = "sync call" if name in SYNC_CALLS else "allocator"
            total[f"{kind}: {name} (count)"] += 1
            total[f"{kind}: {name} (ms)"] += e["dur"]
            if name in SYNC_CALLS:
                s["callers"][name][caller(e)] += 1
                forcing = [a for a in ups if a["name"] in SYNC_OPS]  # on CPU tensors those ops make no call
                if forcing:
                    forcing[-1]["synced"] = True
        # an op counted once per call: aten::item's own aten::_local_scalar_dense is no second sync
        if name in SYNC_OPS and not any(a["name"] in SYNC_OPS for a in ups):
            total[f"sync-forcing op: {name} (count)"] += 1
            total[f"sync-forcing op: {name} (ms)"] += e["dur"]
            s["callers"][name][caller(e, SYNC_OPS)] += 1
        if MATMUL_OPS.match(name):
            if not any(MATMUL_OPS.match(a["name"]) for a in ups):  # outermost: the dtypes the model passed in
                total[f"matmul called with {dtypes(e)} (count)"] += 1
            e["matmul"] = True
            for a in ups:
                a["has_matmul"] = True
        if name in LAYOUT_OPS and not any(a["name"] in LAYOUT_OPS for a in ups):
            total[f"layout op: {name} (count)"] += 1
            total[f"layout op: {name} (ms)"] += e["dur"]
    for e in host:
        if e.get("synced"):
            total[f"sync-forcing op: {e['name']} that synced the device (count)"] += 1
        if e.get("matmul") and not e.get("has_matmul"):  # innermost matmul-like ops: what ran (after autocast)
            total[f"matmul ran: {e['name'].removeprefix('aten::')} {dtypes(e)} (count)"] += 1
    return s


def host_at(host: list[dict], t: float) -> str:
    """What the host was doing at time t: the outermost op > the innermost event around t (any thread)."""
    around = [e for e in host if e["ts"] <= t <= e["ts"] + e["dur"] and not e["name"].startswith("ProfilerStep#")]
    if not around:
        return "(no op: Python between ops)"
    inner = min(around, key=lambda e: e["dur"])
    outer = max((e for e in around if e["cat"] == "cpu_op"), key=lambda e: e["dur"], default=inner)
    return inner["name"] if inner is outer else f"{outer['name']} > {inner['name']}"


def rows(s: dict) -> dict[str, tuple[float | str, str]]:
    """The table's rows of one summary, per step: label -> (value, kind: 'ms' | 'count' | 'MB' | '%' | 'text')."""
    n = s["steps"]
    out: dict[str, tuple[float | str, str]] = {"wall time (ms)": (s["wall"] / 1e3 / n, "ms")}
    for label in ["device busy (ms)", "device busy %", "device idle (ms)", "idle gaps (count)", "idle gaps (ms)"]:
        v = s["device"][label] if s["device"] else None
        out[label] = ("no device events", "text") if v is None else (v, "%") if "%" in label else per_step(label, v, n)
    order = ["device:", "host op", "sync call", "sync-forcing", "allocator", "memcpy", "matmul called", "matmul ran",
             "layout"]
    for label in sorted(s["totals"], key=lambda k: (next(i for i, p in enumerate(order + [""]) if k.startswith(p)), k)):
        out[label] = per_step(label, s["totals"][label], n)
    return out


def per_step(label: str, total: float, n: int) -> tuple[float, str]:
    kind = "ms" if label.endswith("(ms)") else "MB" if label.endswith("(MB)") else "count"
    return total / {"ms": 1e3, "MB": 1e6, "count": 1}[kind] / n, kind


def fmt(value, kind: str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.1f}%" if kind == "%" else f"{value:.3f}" if kind in ("ms", "MB") else f"{value:g}"


def differences(a: dict, b: dict, names: list[str], wall: float) -> list[str]:
    """Sentences for the rows that differ by >= 1.5x (or exist on one side only) and matter: >= 5% of the step
    for times, >= 1 per step for counts and MB; times first, each kind largest difference first."""
    found = []
    for label in dict.fromkeys([*a, *b]):
        kind = (a.get(label) or b[label])[1]
        va, vb = a.get(label, (0.0,))[0], b.get(label, (0.0,))[0]
        if isinstance(va, str) or isinstance(vb, str) or kind == "%" or label.startswith("wall"):
            continue
        small, large = sorted((va, vb))
        if large - small < (0.05 * wall if kind == "ms" else 1) or (small > 0 and large / small < 1.5):
            continue
        ratio = f"{vb / va:.2f}x" if va else "only in " + names[1]
        found.append((kind == "ms", abs(vb - va),
                      f"{label}: {names[1]} {fmt(vb, kind)} vs {names[0]} {fmt(va, kind)} ({ratio})"))
    return [text for *_, text in sorted(found, reverse=True)[:10]]


def report(summaries: list[dict], names: list[str], gap_us: float = 50.0) -> str:
    tables = [rows(s) for s in summaries]
    lines = [f"# Trace summary: {' vs '.join(names)}", ""]
    lines += [f"- {name}: `{s['path']}`, {s['steps']} step(s)" + ("" if s["marked"] else " (no ProfilerStep marks: "
              "the whole trace as one step)") for name, s in zip(names, summaries)]
    lines += ["", "Per step. Device busy: the union of kernel/memcpy/memset intervals over all streams; host op self "
              f"time: each op minus the ops inside it; idle gaps: longer than {gap_us:g} us.", "",
              "| per step | " + " | ".join(names) + (f" | {names[1]} / {names[0]} |" if len(names) == 2 else " |"),
              "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for label in dict.fromkeys(k for t in tables for k in t):
        cells = [t.get(label, (0.0, next(t2[label][1] for t2 in tables if label in t2))) for t in tables]
        row = [fmt(v, kind) for v, kind in cells]
        if len(names) == 2:
            (va, _), (vb, _) = cells
            row.append(f"{vb / va:.2f}" if not isinstance(va, str) and not isinstance(vb, str) and va else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if len(names) == 2:
        wall = max(s["wall"] / 1e3 / s["steps"] for s in summaries)
        (va, _), (vb, _) = (t["wall time (ms)"] for t in tables)
        lines += ["", "## Largest differences", "", f"- wall time (ms): {names[1]} {vb:.3f} vs {names[0]} {va:.3f} "
                  f"({vb / va:.2f}x)"] + [f"- {t}" for t in differences(*tables, names, wall)]
    for name, s in zip(names, summaries):
        lines += ["", f"## {name}: longest device idle gaps, sync callers", ""]
        if s["device"] is None:
            lines.append("- no device events")
        for gap, start, what in s["gaps"]:
            lines.append(f"- idle {gap / 1e3:.3f} ms at {start / 1e3:.3f} ms into the steps; host: {what}")
        for call, callers in sorted(s["callers"].items()):
            top = ", ".join(f"{c} ({k})" for c, k in callers.most_common(3))
            lines.append(f"- {call} ({sum(callers.values())} in {s['steps']} step(s)) called by: {top}")
    return "\n".join(lines) + "\n"


def compare(paths: list[Path], names: list[str] | None = None, gap_us: float = 50.0) -> str:
    names = list(names or [re.sub(r"\.json(\.gz)?$", "", Path(p).name) for p in paths])
    return report([summarise(p, gap_us) for p in paths], names, gap_us)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", nargs="+", type=Path, help="one or two chrome traces (.json or .json.gz)")
    p.add_argument("--names", nargs="+", default=None, help="column names (default: the file names)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    p.add_argument("--gap-us", type=float, default=50.0, help="device idle gaps longer than this are counted")
    args = p.parse_args(argv)
    if len(args.traces) > 2 or (args.names and len(args.names) != len(args.traces)):
        p.error("one or two traces, and as many --names")
    try:
        text = compare(args.traces, args.names, args.gap_us)
    except TraceError as e:
        raise SystemExit(f"trace_summary: {e}") from None
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
