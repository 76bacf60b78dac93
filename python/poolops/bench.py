"""Benchmark every poolops op against torch's native op, side by side.

    python -m poolops.bench [--quick] [--device cpu|cuda|all] [--ops max_pool2d,...]
                            [--dtypes float32,bfloat16] [--out results.json]

Prints a table of median times, the speedup over torch (measured in the same
run), the achieved GB/s from the minimum bytes moved, and the largest difference
from torch's result; saves everything as JSON.
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
    mine: Callable  # x -> output (tensor or tuple, first element is compared)
    theirs: Callable
    out_bytes: Callable  # (x, output) -> bytes written by the forward, indices included
    with_backward: bool = True
    copy_bytes: Callable | None = None  # x -> bytes of the padded copy `theirs` makes (padding='same' cases)


def _elt(x):
    return x.numel() * x.element_size()


def _max(args, indices=False):
    def out_bytes(x, y):
        return _elt(y) + (y.numel() * 8 if indices else 0)

    mine = (lambda x: P.max_pool2d(x, *args, return_indices=True)) if indices else (lambda x: P.max_pool2d(x, *args))
    theirs = (lambda x: F.max_pool2d(x, *args, return_indices=True)) if indices else (lambda x: F.max_pool2d(x, *args))
    return mine, theirs, out_bytes


def cases(quick: bool) -> list[Case]:
    shapes = {
        "ResNet stem maxpool 3/2/1": ((32, 64, 112, 112) if not quick else (8, 64, 112, 112), (3, 2, 1)),
        "ResNet stem maxpool 3/2/1, N=1": ((1, 64, 112, 112), (3, 2, 1)),
        "VGG maxpool 2/2": ((16, 128, 112, 112) if not quick else (4, 128, 112, 112), (2, 2, 0)),
        "VGG late maxpool 2/2": ((32, 512, 28, 28) if not quick else (8, 512, 28, 28), (2, 2, 0)),
    }
    out = []
    for name, (shape, args) in shapes.items():
        out.append(Case("max_pool2d", name, shape, *_max(args)))
        out.append(Case("max_pool2d+indices", name, shape, *_max(args, indices=True), with_backward=False))
    out_elt = lambda x, y: _elt(y)  # noqa: E731
    with_idx = lambda x, y: _elt(y) + y.numel() * 8  # noqa: E731
    avg = {
        "DenseNet transition avgpool 2/2": ((32, 256, 56, 56) if not quick else (4, 256, 56, 56), (2, 2, 0)),
        "avgpool 3/2/1": ((32, 64, 56, 56) if not quick else (8, 64, 56, 56), (3, 2, 1)),
    }
    for name, (shape, args) in avg.items():
        out.append(Case("avg_pool2d", name, shape, lambda x, a=args: P.avg_pool2d(x, *a),
                        lambda x, a=args: F.avg_pool2d(x, *a), out_elt))
    head = (32, 2048, 7, 7) if not quick else (8, 2048, 7, 7)
    out.append(Case("global_avg_pool2d", "ResNet-50 head GAP", head, P.global_avg_pool2d,
                    lambda x: F.adaptive_avg_pool2d(x, 1), out_elt))
    out.append(Case("global_max_pool2d", "ResNet-50 head global max", head, P.global_max_pool2d,
                    lambda x: F.adaptive_max_pool2d(x, 1), with_idx))
    adaptive = (32, 512, 14, 14) if not quick else (8, 512, 14, 14)
    out.append(Case("adaptive_avg_pool2d", "VGG head adaptive avg 7", adaptive, lambda x: P.adaptive_avg_pool2d(x, 7),
                    lambda x: F.adaptive_avg_pool2d(x, 7), out_elt))
    out.append(Case("adaptive_max_pool2d", "adaptive max 7", adaptive, lambda x: P.adaptive_max_pool2d(x, 7),
                    lambda x: F.adaptive_max_pool2d(x, 7), with_idx))
    return out


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def _median_ms(fn, min_run_time):
    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def copy_bandwidth(device, min_run_time):
    """GB/s of a large same-device copy (bytes read + written), the roofline."""
    src = torch.empty(64 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), min_run_time)
    return 2 * _elt(src) / ms / 1e6


def run_case(case, device, dtype, layout, mode, min_run_time):
    x = torch.randn(case.shape, device=device).to(dtype).contiguous(memory_format=layout)
    if mode == "forward":
        with torch.no_grad():
            y_mine, y_theirs = case.mine(x), case.theirs(x)
            t_mine = _median_ms(lambda: case.mine(x), min_run_time)
            t_theirs = _median_ms(lambda: case.theirs(x), min_run_time)
        moved = _elt(x) + case.out_bytes(x, _first(y_mine))
        diff = (_first(y_mine).double() - _first(y_theirs).double()).abs().nan_to_num().max().item()
    else:
        xm, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        ym, yt = _first(case.mine(xm)), _first(case.theirs(xt))
        g = torch.randn_like(ym)
        t_mine = _median_ms(lambda: torch.autograd.grad(ym, xm, g, retain_graph=True), min_run_time)
        t_theirs = _median_ms(lambda: torch.autograd.grad(yt, xt, g, retain_graph=True), min_run_time)
        gm = torch.autograd.grad(ym, xm, g, retain_graph=True)[0]
        gt = torch.autograd.grad(yt, xt, g, retain_graph=True)[0]
        moved = _elt(g) + case.out_bytes(x, g) - _elt(g) + _elt(g) + _elt(x)  # grad_out + saved state + grad_in
        diff = (gm.double() - gt.double()).abs().max().item()
    row = dict(op=case.op, case=case.name, shape=list(case.shape), device=device, dtype=str(dtype).replace("torch.", ""),
               layout="NHWC" if layout == torch.channels_last else "NCHW", mode=mode, torch_ms=t_theirs,
               poolops_ms=t_mine, speedup=t_theirs / t_mine, gbps=moved / t_mine / 1e6, max_abs_diff=diff)
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


def format_table(rows, copy_gbps):
    head = ["device", "op", "mode", "case", "layout", "dtype", "torch ms", "poolops ms", "speedup", "GB/s", "% copy",
            "max |diff|", "memory torch/poolops"]
    lines = [head]
    for r in rows:
        mem = f"{r['peak_torch'] / 2**20:.1f} / {r['peak_mine'] / 2**20:.1f} MiB ({r['peak_how']})" if "peak_how" in r else ""
        lines.append([r["device"], r["op"], r["mode"], r["case"], r["layout"], r["dtype"], f"{r['torch_ms']:.3f}",
                      f"{r['poolops_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['gbps']:.1f}",
                      f"{100 * r['gbps'] / copy_gbps[r['device']]:.0f}%", f"{r['max_abs_diff']:.1e}", mem])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines[1:]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, shorter timing (a smoke run)")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--ops", default="", help="comma-separated op names to run (default: all)")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--layouts", default="NCHW,NHWC")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/latest-<device>.json)")
    args = ap.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = [{"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}[l] for l in args.layouts.split(",")]
    wanted = set(filter(None, args.ops.split(",")))
    selected = [c for c in cases(args.quick) if not wanted or c.op in wanted or c.op.split("+")[0] in wanted]
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.3)

    jobs = [(c, dev, dt, lay, mode) for dev in devices for c in selected for lay in layouts for dt in dtypes
            for mode in (["forward", "backward"] if c.with_backward else ["forward"])]
    copy_gbps = {dev: copy_bandwidth(dev, min_run_time) for dev in devices}
    rows = []
    for n, (c, dev, dt, lay, mode) in enumerate(jobs, 1):
        print(f"[{n}/{len(jobs)}] {dev} {c.op} {mode} {c.name} {tuple(c.shape)} "
              f"{'NHWC' if lay == torch.channels_last else 'NCHW'} {str(dt)[6:]}", file=sys.stderr, flush=True)
        rows.append(run_case(c, dev, dt, lay, mode, min_run_time))

    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                poolops=poolops.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if "cuda" in devices else None, copy_gbps=copy_gbps)
    out = args.out or os.path.join("benchmarks", "results", f"latest-{'-'.join(devices)}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    print(f"\npoolops {poolops.__version__} vs torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
          f"copy bandwidth " + ", ".join(f"{d} {g:.1f} GB/s" for d, g in copy_gbps.items()))
    print(format_table(rows, copy_gbps))
    print(f"\nsaved {out}")
    return rows


# --- conv2d: appended cases (the weights are fixed per case; the timed input is x) ---

def _conv(cin, cout, k, s, p, groups):
    g = torch.Generator().manual_seed(0)
    weights = {}

    def weight(x):
        key = (x.device, x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        if key not in weights:
            w = torch.randn(cout, cin // groups, k, k, generator=g) / (cin // groups * k * k) ** 0.5
            weights[key] = w.to(x.device, x.dtype)
        return weights[key]

    mine = lambda x: P.conv2d(x, weight(x), None, s, p, 1, groups)  # noqa: E731
    theirs = lambda x: F.conv2d(x, weight(x), None, s, p, 1, groups)  # noqa: E731
    return mine, theirs, lambda x, y: _elt(y)


_max_pool_cases = cases


def cases(quick: bool) -> list[Case]:  # noqa: F811
    n = 8 if quick else 32
    conv = [
        ("MobileNet depthwise 3x3 s2", (n, 96, 112, 112) if not quick else (n, 96, 56, 56), (96, 96, 3, 2, 1, 96)),
        ("ResNet 3x3 s2 64->128", (n, 64, 56, 56), (64, 128, 3, 2, 1, 1)),
        ("ResNet 1x1 s2 256->512", (n, 256, 56, 56) if not quick else (n, 256, 28, 28), (256, 512, 1, 2, 0, 1)),
    ]
    return _max_pool_cases(quick) + [Case("conv2d", name, shape, *_conv(*args)) for name, shape, args in conv] + \
        _same_cases(quick)


# --- padding='same' at stride 2 (EfficientNet-like): poolops pads inside the kernels; `theirs` is
# timm's MaxPool2dSame / Conv2dSame approach, F.pad to TensorFlow's padding, then torch's op ---

def _tf_pad(x, k, s, value=0.0):
    top, bottom, left, right = same_padding(x.shape[-2:], [k], [s], [1])
    return F.pad(x, [left, right, top, bottom], value=value)


def _same_cases(quick: bool) -> list[Case]:
    n = 8 if quick else 32
    shape = (n, 64, 56, 56) if quick else (n, 64, 112, 112)
    copy = lambda x: _elt(_tf_pad(x[:1], 3, 2)) * x.shape[0]  # noqa: E731
    out = [Case("max_pool2d same", "EfficientNet-like maxpool 3/2 'same'", shape,
                lambda x: P.max_pool2d(x, 3, 2, "same"), lambda x: F.max_pool2d(_tf_pad(x, 3, 2, float("-inf")), 3, 2),
                lambda x, y: _elt(y), copy_bytes=copy)]
    w = torch.randn(64, 1, 3, 3, generator=torch.Generator().manual_seed(0)) / 3
    out.append(Case("conv2d same", "EfficientNet depthwise 3x3 s2 'same'", shape,
                    lambda x: P.conv2d(x, w.to(x.device, x.dtype), None, 2, "same", 1, 64),
                    lambda x: F.conv2d(_tf_pad(x, 3, 2), w.to(x.device, x.dtype), None, 2, 0, 1, 64),
                    lambda x, y: _elt(y), copy_bytes=copy))
    return out


if __name__ == "__main__":
    main()
