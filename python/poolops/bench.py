"""Benchmark every poolops op against torch's native op, side by side.

    python -m poolops.bench [--quick] [--device cpu|cuda|all] [--ops max_pool2d,conv2d]
                            [--dtypes float32,bfloat16] [--layouts NCHW,NHWC] [--no-sweep] [--out PREFIX]

For each op, shape (from real networks), layout, dtype and pass (forward,
backward) it prints torch's and poolops' median times measured in the same run,
the speedup, the GB/s achieved from the minimum bytes moved and its share of
the copy bandwidth measured in the same run, the bytes autograd saves for the
backward (torch vs poolops), and the largest difference from torch's result.
A sweep of input sizes shows how time grows with size. Writes PREFIX.json,
PREFIX.md and PREFIX.png (default benchmarks/results/latest-<devices>).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import poolops
import poolops.functional as P
from poolops._args import same_padding


@dataclass
class Case:
    op: str
    name: str  # where the shape comes from
    shape: tuple
    mine: Callable  # x -> output (a tensor, or a tuple whose first element is compared)
    theirs: Callable
    out_bytes: Callable  # (x, y) -> bytes the forward writes (indices included)
    backward: bool = True
    copy_bytes: Callable | None = None  # x -> bytes of the padded copy `theirs` makes ('same' cases)
    params: Callable | None = None  # x -> parameters whose gradients the backward also computes (conv weights)


def _elt(t):
    return t.numel() * t.element_size()


def _values(x, y):
    return _elt(y)


def _values_and_indices(x, y):
    return _elt(y) + 8 * y.numel()


def _pool(op, mine, theirs, out_bytes=_values):
    return dict(mine=mine, theirs=theirs, out_bytes=out_bytes)


def _weight_for(w):
    """x -> w as one leaf per device, dtype and layout of x, so a conv's backward can ask for its gradient."""
    weights = {}

    def weight(x):
        key = (x.device, x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        if key not in weights:
            weights[key] = w.to(x.device, x.dtype).clone().requires_grad_()
        return weights[key]

    return weight


def _conv(cin, cout, k, s, p, groups):
    """Conv cases use one fixed weight per device, dtype and layout."""
    w = torch.randn(cout, cin // groups, k, k, generator=torch.Generator().manual_seed(0))
    weight = _weight_for(w / (cin // groups * k * k) ** 0.5)

    return dict(mine=lambda x: P.conv2d(x, weight(x), None, s, p, 1, groups),
                theirs=lambda x: F.conv2d(x, weight(x), None, s, p, 1, groups), out_bytes=_values,
                params=lambda x: [weight(x)])


def cases(quick: bool) -> list[Case]:
    n = 8 if quick else 32
    stem = (n, 64, 112, 112)
    c = [
        Case("max_pool2d", "ResNet stem maxpool 3/2/1", stem,
             **_pool("max", lambda x: P.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1))),
        Case("max_pool2d", "ResNet stem maxpool 3/2/1, N=1", (1, 64, 112, 112),
             **_pool("max", lambda x: P.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1))),
        Case("max_pool2d+indices", "ResNet stem maxpool 3/2/1", stem, backward=False,
             **_pool("max", lambda x: P.max_pool2d(x, 3, 2, 1, return_indices=True),
                     lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), _values_and_indices)),
        Case("max_pool2d", "VGG maxpool 2/2", (n // 2, 128, 112, 112),
             **_pool("max", lambda x: P.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2))),
        Case("max_pool2d", "VGG late maxpool 2/2", (n, 512, 28, 28),
             **_pool("max", lambda x: P.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2))),
        Case("avg_pool2d", "DenseNet transition avgpool 2/2", (n, 256, 56, 56),
             **_pool("avg", lambda x: P.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2))),
        Case("avg_pool2d", "avgpool 3/2/1", (n, 64, 56, 56),
             **_pool("avg", lambda x: P.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1))),
        Case("global_avg_pool2d", "ResNet-50 head GAP", (n, 2048, 7, 7),
             **_pool("gap", P.global_avg_pool2d, lambda x: F.adaptive_avg_pool2d(x, 1))),
        Case("global_max_pool2d", "ResNet-50 head global max", (n, 2048, 7, 7),
             **_pool("gmp", P.global_max_pool2d, lambda x: F.adaptive_max_pool2d(x, 1))),
        Case("adaptive_avg_pool2d", "VGG head adaptive avg 7", (n, 512, 14, 14),
             **_pool("aap", lambda x: P.adaptive_avg_pool2d(x, 7), lambda x: F.adaptive_avg_pool2d(x, 7))),
        Case("adaptive_max_pool2d", "adaptive max 7", (n, 512, 14, 14),
             **_pool("amp", lambda x: P.adaptive_max_pool2d(x, 7), lambda x: F.adaptive_max_pool2d(x, 7))),
        Case("conv2d", "MobileNet depthwise 3x3 s2", (n, 96, 112, 112) if not quick else (n, 96, 56, 56),
             **_conv(96, 96, 3, 2, 1, 96)),
        Case("conv2d", "ResNet 3x3 s2 64->128", (n, 64, 56, 56), **_conv(64, 128, 3, 2, 1, 1)),
        Case("conv2d", "ResNet 1x1 s2 256->512", (n, 256, 56, 56) if not quick else (n, 256, 28, 28),
             **_conv(256, 512, 1, 2, 0, 1)),
    ]
    return c + _same_cases(quick)


# padding='same' at stride 2 (EfficientNet-like): poolops pads inside the kernels;
# `theirs` is timm's MaxPool2dSame / Conv2dSame approach: F.pad to TensorFlow's
# padding, then torch's op.
def _tf_pad(x, k, s, value=0.0):
    top, bottom, left, right = same_padding(x.shape[-2:], [k], [s], [1])
    return F.pad(x, [left, right, top, bottom], value=value)


def _same_cases(quick: bool) -> list[Case]:
    shape = (8, 64, 56, 56) if quick else (32, 64, 112, 112)
    copy = lambda x: _elt(_tf_pad(x[:1], 3, 2)) * x.shape[0]  # noqa: E731
    weight = _weight_for(torch.randn(64, 1, 3, 3, generator=torch.Generator().manual_seed(0)) / 3)
    return [
        Case("max_pool2d same", "EfficientNet-like maxpool 3/2 'same'", shape,
             mine=lambda x: P.max_pool2d(x, 3, 2, "same"),
             theirs=lambda x: F.max_pool2d(_tf_pad(x, 3, 2, float("-inf")), 3, 2), out_bytes=_values, copy_bytes=copy),
        Case("conv2d same", "EfficientNet depthwise 3x3 s2 'same'", shape,
             mine=lambda x: P.conv2d(x, weight(x), None, 2, "same", 1, 64),
             theirs=lambda x: F.conv2d(_tf_pad(x, 3, 2), weight(x), None, 2, 0, 1, 64),
             out_bytes=_values, copy_bytes=copy, params=lambda x: [weight(x)]),
        # timm's AvgPool2dSame counts the zero padding in the divisor; TensorFlow's 'same' (poolops) does not,
        # so `theirs` divides by a pooled zero-padded ones tensor to give the same values.
        Case("avg_pool2d same", "EfficientNet-like avgpool 3/2 'same' (F.pad + avg / real count)", shape,
             mine=lambda x: P.avg_pool2d(x, 3, 2, "same"),
             theirs=lambda x: F.avg_pool2d(_tf_pad(x, 3, 2), 3, 2)
             / F.avg_pool2d(_tf_pad(x[:1, :1] * 0 + 1, 3, 2), 3, 2),
             out_bytes=_values, copy_bytes=copy),
    ]


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def _median_ms(fn, min_run_time):
    # Timer runs on one thread unless told otherwise: measure with the threads the header reports.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _paired_ms(mine, theirs, min_run_time, rounds=2):
    """Medians of both, measured in alternation `rounds` times; the lower of
    each is kept, so a burst of load from elsewhere on a shared machine
    affects neither side alone."""
    t_mine, t_theirs = float("inf"), float("inf")
    for _ in range(rounds):
        t_mine = min(t_mine, _median_ms(mine, min_run_time))
        t_theirs = min(t_theirs, _median_ms(theirs, min_run_time))
    return t_mine, t_theirs


def copy_bandwidth(device, min_run_time):
    """GB/s of a large same-device copy (bytes read + written): the roofline."""
    src = torch.ones(64 * 2**20 // 4, device=device)  # touched: untouched pages would all read one zero page
    dst = torch.empty_like(src)
    return 2 * _elt(src) / _median_ms(lambda: dst.copy_(src), min_run_time) / 1e6


def saved_bytes(fn, x):
    """Bytes autograd keeps for the backward of fn(x), not counting x itself."""
    seen = []

    def pack(t):
        if t.data_ptr() != x.data_ptr():
            seen.append(_elt(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = _first(fn(x))
    return sum(seen), y


def run_case(case, device, dtype, layout, mode, min_run_time):
    x = torch.randn(case.shape, device=device).to(dtype).contiguous(memory_format=layout)
    row = dict(op=case.op, case=case.name, shape=list(case.shape), device=device, dtype=str(dtype)[6:],
               layout="NHWC" if layout == torch.channels_last else "NCHW", mode=mode)
    if mode == "forward":
        with torch.no_grad():
            y_mine, y_theirs = _first(case.mine(x)), _first(case.theirs(x))
            t_mine, t_theirs = _paired_ms(lambda: case.mine(x), lambda: case.theirs(x), min_run_time)
        moved = _elt(x) + case.out_bytes(x, y_mine)
        diff = (y_mine.double() - y_theirs.double()).abs().nan_to_num().max().item()
    else:
        xm, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        row["saved_mine"], ym = saved_bytes(case.mine, xm)
        row["saved_torch"], yt = saved_bytes(case.theirs, xt)
        g = torch.randn_like(ym)
        # The input's gradient, and the weight's for a conv (as in training).
        wrt_m = [xm, *(case.params(xm) if case.params else [])]
        wrt_t = [xt, *(case.params(xt) if case.params else [])]
        t_mine, t_theirs = _paired_ms(lambda: torch.autograd.grad(ym, wrt_m, g, retain_graph=True),
                                      lambda: torch.autograd.grad(yt, wrt_t, g, retain_graph=True), min_run_time)
        gm = torch.autograd.grad(ym, wrt_m, g, retain_graph=True)
        gt = torch.autograd.grad(yt, wrt_t, g, retain_graph=True)
        moved = _elt(g) + row["saved_mine"] + _elt(x)  # read grad_out and the saved state, write grad_in
        diff = max((a.double() - b.double()).abs().max().item() for a, b in zip(gm, gt))
    row.update(torch_ms=t_theirs, poolops_ms=t_mine, speedup=t_theirs / t_mine, gbps=moved / t_mine / 1e6,
               max_abs_diff=diff)
    if case.copy_bytes is not None and mode == "forward":
        row.update(peak_memory(case, x))
    return row


def peak_memory(case, x):
    """Memory a forward allocates beyond its input: measured on CUDA (peak
    allocated during the call); on CPU, where torch keeps no allocator
    statistics, the output plus the padded copy that `theirs` makes."""
    if x.device.type == "cuda":
        def peak(fn):
            with torch.no_grad():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn(x)
                torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base

        return dict(peak_torch=peak(case.theirs), peak_mine=peak(case.mine), peak_how="measured")
    with torch.no_grad():
        out = _elt(_first(case.mine(x)))
    return dict(peak_torch=out + case.copy_bytes(x), peak_mine=out, peak_how="output + padded copy")


def sweep(device, dtype, min_run_time, quick):
    """max_pool2d 3/2/1 forward over growing inputs (NCHW and NHWC)."""
    rows = []
    for hw in ([28, 56, 112] if quick else [14, 28, 56, 112, 224]):
        case = Case("max_pool2d", f"sweep {hw}x{hw}", (8, 64, hw, hw),
                    **_pool("max", lambda x: P.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)))
        for layout in (torch.contiguous_format, torch.channels_last):
            rows.append(run_case(case, device, dtype, layout, "forward", min_run_time))
    return rows


def _kb(n):
    return "" if n is None else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def format_table(rows, copy_gbps):
    head = ["device", "op", "pass", "case", "layout", "dtype", "torch ms", "poolops ms", "speedup", "GB/s", "% copy",
            "saved torch/poolops", "max |diff|", "memory torch/poolops"]
    lines = [head]
    for r in rows:
        saved = f"{_kb(r['saved_torch'])} / {_kb(r['saved_mine'])}" if "saved_mine" in r else ""
        mem = f"{_kb(r['peak_torch'])} / {_kb(r['peak_mine'])} ({r['peak_how']})" if "peak_how" in r else ""
        lines.append([r["device"], r["op"], r["mode"], r["case"], r["layout"], r["dtype"], f"{r['torch_ms']:.3f}",
                      f"{r['poolops_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['gbps']:.1f}",
                      f"{100 * r['gbps'] / copy_gbps[r['device']]:.0f}%", saved, f"{r['max_abs_diff']:.1e}", mem])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def fmt(line):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"

    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines[1:]])


def plot(rows, sweep_rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(16, max(4, 0.28 * len(rows))), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r['op']} {r['mode'][:3]} {r['case']} {r['layout']} {r['dtype']} ({r['device']})" for r in rows]
    ys = range(len(rows))
    ax.barh(ys, [r["speedup"] for r in rows], color=["tab:green" if r["speedup"] >= 1 else "tab:red" for r in rows])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speedup over torch (same run; > 1 is faster)")
    for layout in ("NCHW", "NHWC"):
        pts = [r for r in sweep_rows if r["layout"] == layout]
        if pts:
            size = [r["shape"][0] * r["shape"][1] * r["shape"][2] * r["shape"][3] for r in pts]
            bx.plot(size, [r["poolops_ms"] for r in pts], "o-", label=f"poolops {layout}")
            bx.plot(size, [r["torch_ms"] for r in pts], "x--", label=f"torch {layout}")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("input elements (max_pool2d 3/2/1 forward)")
    bx.set_ylabel("median ms")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, shorter timing (a smoke run)")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--layouts", default="NCHW,NHWC")
    ap.add_argument("--passes", default="forward,backward")
    ap.add_argument("--no-sweep", action="store_true", help="skip the size sweep")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/latest-<devices>)")
    args = ap.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = [{"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}[l] for l in args.layouts.split(",")]
    passes = args.passes.split(",")
    wanted = set(filter(None, args.ops.split(",")))
    selected = [c for c in cases(args.quick) if not wanted or c.op in wanted or c.op.split("+")[0] in wanted]
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.3)

    jobs = [(c, dev, dt, lay, mode) for dev in devices for c in selected for lay in layouts for dt in dtypes
            for mode in passes if mode == "forward" or c.backward]
    # The copy bandwidth is taken at the start, halfway and at the end, and the median kept: on a shared
    # machine one reading alone has come out at twice the others.
    copy_samples = {dev: [] for dev in devices}

    def sample_copy():
        for d in devices:
            copy_samples[d].append(copy_bandwidth(d, min_run_time))

    sample_copy()
    rows = []
    for n, (c, dev, dt, lay, mode) in enumerate(jobs, 1):
        print(f"[{n}/{len(jobs)}] {dev} {c.op} {mode} {c.name} {tuple(c.shape)} "
              f"{'NHWC' if lay == torch.channels_last else 'NCHW'} {str(dt)[6:]}", file=sys.stderr, flush=True)
        rows.append(run_case(c, dev, dt, lay, mode, min_run_time))
        if n == len(jobs) // 2:
            sample_copy()
    sample_copy()
    copy_gbps = {dev: sorted(v)[len(v) // 2] for dev, v in copy_samples.items()}
    sweep_rows = []
    if not args.no_sweep and (not wanted or "max_pool2d" in wanted):
        for dev in devices:
            print(f"sweep on {dev}", file=sys.stderr, flush=True)
            sweep_rows += sweep(dev, dtypes[0], min_run_time, args.quick)

    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                poolops=poolops.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu=_cpu_name(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if "cuda" in devices else None, copy_gbps=copy_gbps,
                copy_gbps_samples=copy_samples,
                env={k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "POOLOPS_HUGEPAGES", "POOLOPS_GEMM")
                     if k in os.environ})
    prefix = args.out or os.path.join("benchmarks", "results", f"latest-{'-'.join(devices)}")
    prefix = prefix[:-5] if prefix.endswith(".json") else prefix
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(dict(meta=meta, results=rows, sweep=sweep_rows), f, indent=1)
    header = (f"poolops {poolops.__version__} vs torch {torch.__version__}, {meta['date']}; {meta['cpu']} "
              f"({meta['cpu_capability']}), {meta['threads']} CPU threads"
              + (f"; {meta['gpu']}" if meta["gpu"] else "") + "; copy bandwidth "
              + ", ".join(f"{d} {g:.1f} GB/s (median of {', '.join(f'{v:.1f}' for v in copy_samples[d])})"
                          for d, g in copy_gbps.items())
              + "".join(f"; {k}={v}" for k, v in meta["env"].items()))
    faster = sum(r["speedup"] >= 1.0 for r in rows)
    header += f"\n\npoolops at least as fast as torch in {faster} of {len(rows)} rows."
    table = format_table(rows, copy_gbps)
    sweep_table = format_table(sweep_rows, copy_gbps) if sweep_rows else ""
    with open(prefix + ".md", "w") as f:
        f.write(f"{header}\n\n{table}\n" + (f"\nSize sweep:\n\n{sweep_table}\n" if sweep_table else ""))
    png = plot(rows, sweep_rows, prefix + ".png")
    print(f"\n{header}")
    if sweep_table:
        print(f"\nSize sweep:\n{sweep_table}")
    print(f"\n{table}")
    print(f"\nsaved {prefix}.json, {prefix}.md" + (f", {png}" if png else ""))
    return rows


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
