"""launch/trace_summary.py: a real CPU profiler trace, a hand-computed GPU trace, and files that are no trace."""
from __future__ import annotations

import copy
import gzip
import json
import re

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from launch import trace_summary
from launch.trace_summary import TraceError, rows, summarise


def test_a_real_cpu_trace_counts_the_syncs_and_matmul_dtypes_the_model_ran(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32), torch.nn.GELU(),
                                torch.nn.Linear(32, 4))
    x, steps, items_per_step = torch.randn(8, 16), 2, 3
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            with record_function(f"ProfilerStep#{i}"):
                loss = model(x).square().mean()
                for _ in range(items_per_step):
                    loss.item()
                loss.backward()
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    model[0](x)  # called with float32 tensors, run in bfloat16 after autocast's casts
    path = tmp_path / "cpu.json"
    prof.export_chrome_trace(str(path))

    s = summarise(path)
    r = rows(s)
    assert s["steps"] == steps and s["device"] is None
    assert r["device busy (ms)"] == ("no device events", "text")
    # host op self times exclude the ops inside each op, so on one thread they add up to at most the step
    self_times = sum(v for k, (v, _) in r.items() if k.startswith("host op self time"))
    assert 0 < self_times <= r["wall time (ms)"][0] * 1.001
    assert r["sync-forcing op: aten::item (count)"] == (items_per_step, "count")  # not its _local_scalar_dense too
    # forward: three addmm in float32; the autocast call: one addmm in bfloat16, called with float32
    assert r["matmul ran: addmm float32 (count)"] == (3, "count")
    assert r["matmul ran: addmm bfloat16 (count)"] == (1, "count")
    assert not [k for k in r if "bfloat16" in k and k.startswith("matmul") and "addmm" not in k]
    assert r["matmul called with float32 (count)"][0] >= 4
    assert "matmul called with bfloat16 (count)" not in r


# A GPU trace in torch.profiler's chrome format (field layout of libkineto's ChromeTraceLogger: host events on
# pid/tid of the process/thread, device events on pid = device, tid = stream, "correlation" linking a launch to
# its kernel). Two steps of 1000 us. Device intervals: gemm [1100, 1300], elementwise on stream 20 [1280, 1320],
# elementwise [1330, 1370], memcpy DtoH [1420, 1425], flash attention [2100, 2400], memset [2450, 2460]; the
# kernel at 500 was launched before the steps and the gpu_user_annotation is no work.
# Union: [1100, 1320] [1330, 1370] [1420, 1425] [2100, 2400] [2450, 2460] = 220 + 40 + 5 + 300 + 10 = 575 us busy
# of 2000 (28.75 %), idle 1425 us; gaps 10, 50, 675, 50 us: only 675 is over 50 us, and at its middle (1762.5)
# the host is in aten::to > cudaHostAlloc.
def _x(cat, name, ts, dur, pid=4242, tid=4242, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _kernel(name, ts, dur, correlation, stream=7, cat="kernel", **args):
    return _x(cat, name, ts, dur, pid=0, tid=stream, **{"device": 0, "context": 1, "stream": stream,
                                                       "correlation": correlation, **args})


BF16 = ["c10::BFloat16", "c10::BFloat16", "c10::BFloat16", "Scalar"]
GPU_TRACE = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H200"}], "record_shapes": 1,
             "displayTimeUnit": "ms", "traceName": "hand.json", "traceEvents": [
    {"ph": "M", "name": "process_name", "ts": 0, "pid": 0, "tid": 0, "args": {"name": "python"}},
    {"ph": "M", "name": "process_labels", "ts": 0, "pid": 0, "tid": 0, "args": {"labels": "GPU 0"}},
    _x("user_annotation", "ProfilerStep#0", 1000, 1000, **{"External id": 1}),
    _x("user_annotation", "ProfilerStep#1", 2000, 1000, **{"External id": 2}),
    _x("cuda_runtime", "cudaLaunchKernel", 400, 10, cbid=211, correlation=99),
    _kernel("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", 500, 100, 99),
    _x("cpu_op", "aten::linear", 1010, 100, **{"Input type": ["float", "float", "float"], "External id": 3}),
    _x("cuda_runtime", "cudaLaunchKernel", 1050, 10, cbid=211, correlation=1),
    _kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 1100, 200, 1, **{"grid": [1, 1, 1]}),
    _x("gpu_user_annotation", "ProfilerStep#0", 1099, 300, pid=0, tid=7),
    _x("cpu_op", "aten::mul", 1265, 15, **{"Input type": ["c10::BFloat16", "c10::BFloat16"]}),
    _x("cuda_runtime", "cudaLaunchKernel", 1270, 5, cbid=211, correlation=7),
    _kernel("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<mul>>", 1280, 40, 7,
            stream=20),
    _x("cpu_op", "aten::add", 1315, 20, **{"Input type": ["c10::BFloat16", "c10::BFloat16", "Scalar"]}),
    _x("cuda_runtime", "cudaLaunchKernel", 1320, 5, cbid=211, correlation=4),
    _kernel("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", 1330, 40, 4),
    _x("cpu_op", "aten::item", 1400, 200, **{"Input type": ["float"]}),
    _x("cpu_op", "aten::_local_scalar_dense", 1405, 190, **{"Input type": ["float"]}),
    _x("cuda_runtime", "cudaMemcpyAsync", 1410, 10, cbid=41, correlation=2),
    _kernel("Memcpy DtoH (Device -> Pageable)", 1420, 5, 2, cat="gpu_memcpy", bytes=4,
            **{"memory bandwidth (GB/s)": 0.0008}),
    _x("cuda_runtime", "cudaStreamSynchronize", 1425, 160, cbid=131, correlation=3),
    _x("cpu_op", "aten::to", 1600, 400, **{"Input type": ["float", "Scalar"]}),
    _x("cuda_runtime", "cudaHostAlloc", 1650, 300, cbid=13, correlation=8),
    _x("cpu_op", "aten::scaled_dot_product_attention", 2005, 60, **{"Input type": BF16}),
    _x("cpu_op", "aten::_scaled_dot_product_flash_attention", 2010, 50, **{"Input type": BF16}),
    _x("cuda_runtime", "cudaLaunchKernel", 2030, 10, cbid=211, correlation=5),
    _kernel("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", 2100, 300, 5),
    _x("cpu_op", "aten::empty", 2195, 110),
    _x("cuda_runtime", "cudaMalloc", 2200, 100, cbid=20, correlation=9),
    _x("cpu_op", "aten::zero_", 2435, 15),
    _x("cuda_runtime", "cudaMemsetAsync", 2440, 5, cbid=51, correlation=6),
    _kernel("Memset (Device)", 2450, 10, 6, cat="gpu_memset", bytes=1024),
    _x("cuda_runtime", "cudaDeviceSynchronize", 2500, 300, cbid=165, correlation=10),
    {"ph": "s", "id": 1, "pid": 4242, "tid": 4242, "ts": 1050, "cat": "ac2g", "name": "ac2g"},
    {"ph": "f", "id": 1, "pid": 0, "tid": 7, "ts": 1100, "cat": "ac2g", "name": "ac2g", "bp": "e"},
    {"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "", "ts": 3100}]}


def test_a_hand_written_gpu_trace_gives_the_hand_computed_numbers(tmp_path):
    path = tmp_path / "hand.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(GPU_TRACE, f)
    s = summarise(path)
    r = {k: v for k, (v, _) in rows(s).items()}
    per_step_ms = 1 / 1e3 / 2  # us over the two steps -> ms per step
    expected = {
        "wall time (ms)": 2000 * per_step_ms, "device busy (ms)": 575 * per_step_ms, "device busy %": 28.75,
        "device idle (ms)": 1425 * per_step_ms, "idle gaps (count)": 0.5, "idle gaps (ms)": 675 * per_step_ms,
        "device: matmul (ms)": 200 * per_step_ms, "device: elementwise/reduction (ms)": 80 * per_step_ms,
        "device: attention (ms)": 300 * per_step_ms, "device: copy/cast (ms)": 15 * per_step_ms,
        "sync call: cudaStreamSynchronize (count)": 0.5, "sync call: cudaStreamSynchronize (ms)": 160 * per_step_ms,
        "sync call: cudaDeviceSynchronize (count)": 0.5, "sync call: cudaDeviceSynchronize (ms)": 300 * per_step_ms,
        "sync-forcing op: aten::item (count)": 0.5, "sync-forcing op: aten::item that synced the device (count)": 0.5,
        "allocator: cudaMalloc (count)": 0.5, "allocator: cudaMalloc (ms)": 100 * per_step_ms,
        "allocator: cudaHostAlloc (count)": 0.5, "allocator: cudaHostAlloc (ms)": 300 * per_step_ms,
        "memcpy DtoH (count)": 0.5, "memcpy DtoH (MB)": 4 / 1e6 / 2,
        "matmul called with bfloat16 (count)": 0.5, "matmul called with float32 (count)": 0.5,
        "matmul ran: _scaled_dot_product_flash_attention bfloat16 (count)": 0.5,
        "matmul ran: linear float32 (count)": 0.5,
        "layout op: aten::to (count)": 0.5, "layout op: aten::to (ms)": 400 * per_step_ms,
    }
    assert {k: r[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert s["gaps"] == [(675, 425, "aten::to > cudaHostAlloc")]  # (us, us into the steps, host then)
    assert s["callers"]["cudaStreamSynchronize"] == {"aten::_local_scalar_dense": 1}
    assert s["callers"]["cudaDeviceSynchronize"] == {"(python)": 1}

    # a second trace with 4 more stream syncs per step: the comparison says so in a sentence
    more = copy.deepcopy(GPU_TRACE)
    more["traceEvents"] += [_x("cuda_runtime", "cudaStreamSynchronize", 2810 + 10 * i, 5, cbid=131,
                               correlation=20 + i) for i in range(8)]
    (tmp_path / "more.json").write_text(json.dumps(more))
    out = tmp_path / "summary.md"
    text = trace_summary.main([str(path), str(tmp_path / "more.json"), "--names", "hand", "more", "--out", str(out)])
    assert out.read_text() == text
    assert "| device busy (ms) | 0.287 | 0.287 | 1.00 |" in text  # 0.2875, printed to 3 places
    assert "- sync call: cudaStreamSynchronize (count): more 4.5 vs hand 0.5 (9.00x)" in text


@pytest.mark.parametrize("content, what", [
    (json.dumps(GPU_TRACE)[:500], "not a readable JSON trace"),  # truncated
    ("\x00\x01 not json", "not a readable JSON trace"),
    (json.dumps([{"ph": "X"}]), "no traceEvents list"),
    (json.dumps({"traceEvents": [{"ph": "M", "name": "process_name"}]}), "no host or device events"),
])
def test_a_file_that_is_no_trace_is_refused_naming_it(tmp_path, content, what):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TraceError, match=what):
        summarise(path)
    with pytest.raises(SystemExit, match=re.escape(f"trace_summary: {path}: ") + ".*" + re.escape(what)):
        trace_summary.main([str(path)])
    with pytest.raises(SystemExit, match="no such file"):
        trace_summary.main([str(tmp_path / "missing.json")])
