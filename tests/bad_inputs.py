"""The bad-input suite: every argument of every op and module, invalid in each
way. Run as a script it executes each case in this process, printing one JSON
line per case (flushed before the call, so a crash names its case);
tests/test_bad_inputs.py runs it in a subprocess, so a segfault is a failure."""
import json
import sys

import torch

import poolops
import poolops.functional as P
import poolops.nn as pnn

ops = torch.ops.poolops
X = torch.randn(2, 3, 8, 8)
CASES = []  # (name, fn, exception types, message pattern)


def case(name, fn, exc, pattern):
    CASES.append((name, fn, exc, pattern))


def pool_param_cases(op, fn, params):
    for p in params:
        if p != "padding":
            case(f"{op} {p}=0", lambda p=p: fn(**{"kernel_size": 2, p: 0}), RuntimeError,
                 {"kernel_size": "stride should not be zero", "stride": "stride should not be zero",
                  "dilation": "dilation should be greater than zero"}[p])
        case(f"{op} {p}=-1", lambda p=p: fn(**{"kernel_size": 3, p: -1}), RuntimeError,
             {"kernel_size": "kernel size should be greater than zero", "stride": "stride should be greater than zero",
              "padding": "pad must be non-negative, but got pad: -1", "dilation": "dilation should be greater than zero"}[p])
        case(f"{op} {p} too large", lambda p=p: fn(**{"kernel_size": 2, p: 2**31}), RuntimeError,
             f"{p}=2147483648: value cannot be converted to type int without overflow")
        case(f"{op} {p} float", lambda p=p: fn(**{"kernel_size": 2, p: 1.5}), TypeError, f"'{p}' must be an int")
        case(f"{op} {p} str", lambda p=p: fn(**{"kernel_size": 2, p: "2"}), TypeError, f"'{p}' must be an int")
        case(f"{op} {p} wrong length", lambda p=p: fn(**{"kernel_size": 2, p: (1, 1, 1)}), RuntimeError,
             f"{op}: {p} must")
    case(f"{op} kernel larger than input", lambda: fn(kernel_size=9), RuntimeError, "Output size is too small")
    case(f"{op} padding over half the kernel", lambda: fn(kernel_size=3, padding=2), RuntimeError, "pad should be")


def input_cases(op, fn, dtype_ok_ints=False):
    case(f"{op} not a tensor", lambda: fn([[1.0]]), TypeError, f"{op}\\(\\): argument 'input' must be a Tensor, not list")
    case(f"{op} 1-D", lambda: fn(torch.randn(8)), (RuntimeError, IndexError), "3D or 4D|Dimension out of range")
    case(f"{op} 5-D", lambda: fn(torch.randn(1, 2, 3, 8, 8)), RuntimeError, "3D or 4D")
    case(f"{op} empty C", lambda: fn(torch.randn(2, 0, 8, 8)), RuntimeError, r"\[2, 0, 8, 8\]")
    case(f"{op} empty H", lambda: fn(torch.randn(2, 3, 0, 8)), RuntimeError, r"\[2, 3, 0, 8\]")
    case(f"{op} empty W", lambda: fn(torch.randn(2, 3, 8, 0)), RuntimeError, r"\[2, 3, 8, 0\]")
    case(f"{op} bool", lambda: fn(X > 0), NotImplementedError, "not implemented for 'Bool'")
    case(f"{op} complex", lambda: fn(X.to(torch.complex64)), NotImplementedError, "not implemented for 'ComplexFloat'")
    if not dtype_ok_ints:
        case(f"{op} int64", lambda: fn(X.long()), NotImplementedError, "not implemented for 'Long'")


pool_param_cases("max_pool2d", lambda **kw: P.max_pool2d(X, **kw), ["kernel_size", "stride", "padding", "dilation"])
pool_param_cases("avg_pool2d", lambda **kw: P.avg_pool2d(X, **kw), ["kernel_size", "stride", "padding"])
input_cases("max_pool2d", lambda x: P.max_pool2d(x, 2), dtype_ok_ints=True)
input_cases("avg_pool2d", lambda x: P.avg_pool2d(x, 2))
case("avg_pool2d divisor_override=0", lambda: P.avg_pool2d(X, 2, divisor_override=0), RuntimeError, "divisor must be not zero")
case("avg_pool2d divisor_override float", lambda: P.avg_pool2d(X, 2, divisor_override=0.5), TypeError, "'divisor_override' must be an int")
for op, fn in [("adaptive_avg_pool2d", P.adaptive_avg_pool2d), ("adaptive_max_pool2d", P.adaptive_max_pool2d)]:
    input_cases(op, lambda x, fn=fn: fn(x, 2))
    case(f"{op} output_size -1", lambda fn=fn: fn(X, -1), RuntimeError, "-1")
    case(f"{op} output_size 3-tuple", lambda fn=fn: fn(X, (1, 2, 3)), RuntimeError, r"output_size(.size\(\))? must be 2")
    case(f"{op} output_size float", lambda fn=fn: fn(X, 1.5), TypeError, "'output_size' must be an int")
    case(f"{op} output_size too large", lambda fn=fn: fn(X, 2**31), RuntimeError, "value cannot be converted")
for op, fn in [("global_avg_pool2d", P.global_avg_pool2d), ("global_max_pool2d", P.global_max_pool2d)]:
    input_cases(op, fn)

# Backward ops called directly with inconsistent arguments.
G, I = torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long)
case("_max_pool2d_backward wrong grad shape", lambda: ops._max_pool2d_backward(torch.randn(2, 3, 5, 4), I, [2, 3, 8, 8], [2], [], [0], [1], False), RuntimeError, "expected grad_output of size")
case("_max_pool2d_backward float indices", lambda: ops._max_pool2d_backward(G, I.float(), [2, 3, 8, 8], [2], [], [0], [1], False), RuntimeError, "indices must be int64")
case("_max_pool2d_backward index outside plane", lambda: ops._max_pool2d_backward(G, I + 64, [2, 3, 8, 8], [2], [], [0], [1], False), RuntimeError, "invalid max index")
case("_max_pool2d_backward input_size rank", lambda: ops._max_pool2d_backward(G, I, [8, 8], [2], [], [0], [1], False), RuntimeError, "input_size must have 3 or 4 elements")
case("_max_pool2d_backward devices", lambda: ops._max_pool2d_backward(G, I.to("meta"), [2, 3, 8, 8], [2], [], [0], [1], False), RuntimeError, "same device|meta")
case("_avg_pool2d_backward wrong grad shape", lambda: ops._avg_pool2d_backward(torch.randn(2, 3, 5, 4), [2, 3, 8, 8], [2], [], [0], False, True, None), RuntimeError, "expected grad_output of size")
for cl in (False, True):
    fmt = torch.channels_last if cl else torch.contiguous_format
    case(f"_adaptive_max_pool2d_backward index outside plane{' NHWC' if cl else ''}",
         lambda fmt=fmt: ops._adaptive_max_pool2d_backward(G.contiguous(memory_format=fmt), (I + 64).contiguous(memory_format=fmt), [2, 3, 8, 8]),
         RuntimeError, "adaptive_max_pool2d_backward: found an invalid max index")
case("_adaptive_avg_pool2d_backward wrong grad shape", lambda: ops._adaptive_avg_pool2d_backward(G, [2, 3, 8]), RuntimeError, "")

# Modules: bad constructor arguments surface at call time, as in torch.nn.
for name, mod in [("MaxPool2d(0)", lambda: pnn.MaxPool2d(0)), ("MaxPool2d(2, padding=2)", lambda: pnn.MaxPool2d(2, padding=2)),
                  ("AvgPool2d(2, stride=0)", lambda: pnn.AvgPool2d(2, stride=0)),
                  ("AvgPool2d(2, divisor_override=0)", lambda: pnn.AvgPool2d(2, divisor_override=0)),
                  ("AdaptiveAvgPool2d(-2)", lambda: pnn.AdaptiveAvgPool2d(-2)), ("AdaptiveMaxPool2d((1, 2, 3))", lambda: pnn.AdaptiveMaxPool2d((1, 2, 3)))]:
    case(f"module {name}", lambda mod=mod: mod()(X), RuntimeError, "")
case("module GlobalAvgPool2d 2-D", lambda: pnn.GlobalAvgPool2d()(torch.randn(8, 8)), RuntimeError, "3D or 4D")
case("module GlobalMaxPool2d int", lambda: pnn.GlobalMaxPool2d()(X.long()), NotImplementedError, "Long")

# conv2d and Conv2d.
XC, WC = torch.randn(1, 4, 9, 9), torch.randn(8, 4, 3, 3)
for name, fn, exc, pattern in [
    ("stride=0", lambda: P.conv2d(XC, WC, stride=0), RuntimeError, "non-positive stride is not supported"),
    ("stride=-1", lambda: P.conv2d(XC, WC, stride=-1), RuntimeError, "non-positive stride is not supported"),
    ("stride float", lambda: P.conv2d(XC, WC, stride=1.5), TypeError, "'stride' must be an int"),
    ("stride too large", lambda: P.conv2d(XC, WC, stride=2**40), RuntimeError, "stride=1099511627776: value cannot be converted"),
    ("stride wrong length", lambda: P.conv2d(XC, WC, stride=(1, 1, 1)), RuntimeError, "list of 2 values"),
    ("padding=-1", lambda: P.conv2d(XC, WC, padding=-1), RuntimeError, "negative padding is not supported"),
    ("padding string", lambda: P.conv2d(XC, WC, padding="foo"), RuntimeError, "Invalid padding string: 'foo'"),
    ("dilation=0", lambda: P.conv2d(XC, WC, dilation=0), RuntimeError, "dilation should be greater than zero"),
    ("groups=0", lambda: P.conv2d(XC, WC, groups=0), RuntimeError, "non-positive groups is not supported"),
    ("groups not dividing weight", lambda: P.conv2d(XC, WC, groups=3), RuntimeError, "Given groups=3, expected weight to be divisible by 3"),
    ("groups float", lambda: P.conv2d(XC, WC, groups=1.0), TypeError, "'groups' must be int, not float"),
    ("channels mismatch", lambda: P.conv2d(XC, torch.randn(4, 4, 3, 3), groups=2), RuntimeError, "to have 8 channels, but got 4 channels instead"),
    ("kernel larger than input", lambda: P.conv2d(XC, torch.randn(8, 4, 12, 12)), RuntimeError, "Kernel size can't be greater than actual input size"),
    ("empty H", lambda: P.conv2d(torch.randn(1, 4, 0, 9), WC), RuntimeError, r"\(0 x 9\)"),
    ("dtype mismatch", lambda: P.conv2d(XC.double(), WC), RuntimeError, "expected scalar type Double but found Float"),
    ("2-D input", lambda: P.conv2d(torch.randn(9, 9), WC), RuntimeError, "Expected 3D \\(unbatched\\) or 4D \\(batched\\) input to conv2d"),
    ("5-D input", lambda: P.conv2d(torch.randn(1, 1, 4, 9, 9), WC), RuntimeError, "input to conv2d, but got input of size"),
    ("3-D weight", lambda: P.conv2d(XC, torch.randn(8, 4, 3)), RuntimeError, "match the convolution dimensions"),
    ("bias of the wrong size", lambda: P.conv2d(XC, WC, torch.randn(7)), RuntimeError, "expected bias to be 1-dimensional with 8 elements"),
    ("bool", lambda: P.conv2d(XC > 0, WC > 0), NotImplementedError, "not implemented for 'Bool'"),
    ("complex", lambda: P.conv2d(XC.to(torch.complex64), WC.to(torch.complex64)), NotImplementedError, "'ComplexFloat'"),
    ("input not a tensor", lambda: P.conv2d([1.0], WC), TypeError, "argument 'input' must be a Tensor, not list"),
    ("weight not a tensor", lambda: P.conv2d(XC, [1.0]), TypeError, "argument 'weight' must be a Tensor, not list"),
    ("module padding_mode", lambda: pnn.Conv2d(4, 8, 3, padding_mode="foo"), ValueError, "padding_mode must be one of"),
    ("module reflect pad too large", lambda: pnn.Conv2d(4, 8, 3, padding=9, padding_mode="reflect")(XC), RuntimeError, "Padding size should be less than"),
    ("module in_channels", lambda: pnn.Conv2d(3, 8, 3)(XC), RuntimeError, "to have 3 channels, but got 4 channels instead"),
]:
    case(f"conv2d {name}", fn, exc, pattern)


def main():
    only = set(sys.argv[1:])
    for name, fn, exc, pattern in CASES:
        if only and name not in only:
            continue
        print(json.dumps({"case": name, "status": "started"}), flush=True)
        try:
            fn()
            result = {"case": name, "status": "no error"}
        except Exception as e:  # noqa: BLE001 - the type is what we check
            import re

            ok = isinstance(e, exc) and (pattern is None or re.search(pattern, str(e)) is not None)
            result = {"case": name, "status": "ok" if ok else "wrong error", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
