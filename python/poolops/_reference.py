"""Slow, independent reference implementations used by the tests.

Written from the definitions (window enumeration, explicit scans) in plain
Python loops over output positions; they share no code with the kernels or with
torch.nn.functional's pooling.
"""
import torch


def window_starts(size, k, s, p, d, ceil_mode):
    """Window start positions along one dim (in input coordinates, may be < 0).

    Floor mode keeps windows that fit in the padded input; ceil mode keeps any
    window that starts before the padded end would be passed by a full stride,
    except windows starting in the right padding."""
    eff = d * (k - 1) + 1
    starts, o = [], 0
    while True:
        start = o * s
        fits = start + eff <= size + 2 * p
        if ceil_mode:
            keep = start <= size + 2 * p - eff + s - 1 and start < size + p
        else:
            keep = fits
        if not keep:
            return starts
        starts.append(start - p)
        o += 1


def _opmath(x):
    return x.double() if x.is_floating_point() else x.long()


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Returns (values, indices) for a 4-D input."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    N, C, H, W = x.shape
    rows = window_starts(H, kh, sh, ph, dh, ceil_mode)
    cols = window_starts(W, kw, sw, pw, dw, ceil_mode)
    xd = _opmath(x)
    low = float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
    out = torch.empty(N, C, len(rows), len(cols), dtype=xd.dtype)
    idx = torch.empty(N, C, len(rows), len(cols), dtype=torch.int64)
    for i, h0 in enumerate(rows):
        for j, w0 in enumerate(cols):
            taps = [(h, w) for h in range(h0, h0 + dh * (kh - 1) + 1, dh) if 0 <= h < H
                    for w in range(w0, w0 + dw * (kw - 1) + 1, dw) if 0 <= w < W]
            best = torch.full((N, C), low, dtype=xd.dtype)
            arg = torch.full((N, C), taps[0][0] * W + taps[0][1] if taps else -1, dtype=torch.int64)
            for h, w in taps:
                v = xd[:, :, h, w]
                take = (v > best) | torch.isnan(v) if x.is_floating_point() else v > best
                best = torch.where(take, v, best)
                arg = torch.where(take, torch.full_like(arg, h * W + w), arg)
            out[:, :, i, j] = best
            idx[:, :, i, j] = arg
    return out.to(x.dtype), idx


def max_pool2d_backward(grad_out, indices, input_shape):
    """Scatter-add of grad_out to the argmax, in output row-major order (float64)."""
    N, C, H, W = input_shape
    g = torch.zeros(N, C, H * W, dtype=torch.float64)
    go = grad_out.double().reshape(N, C, -1)
    ix = indices.reshape(N, C, -1)
    for o in range(go.shape[-1]):
        valid = ix[:, :, o] >= 0
        g.scatter_add_(2, ix[:, :, o : o + 1].clamp_min(0), torch.where(valid, go[:, :, o], 0).unsqueeze(-1))
    return g.reshape(N, C, H, W)


def _avg_windows(H, W, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """(i, j, row range, col range, divisor) for every avg_pool2d output, in row-major order."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    for i, h0 in enumerate(window_starts(H, kh, sh, ph, 1, ceil_mode)):
        for j, w0 in enumerate(window_starts(W, kw, sw, pw, 1, ceil_mode)):
            # The padded extent stops at H + p / W + p: the ceil-mode overhang is not counted.
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
            rows, cols = range(max(h0, 0), min(h1, H)), range(max(w0, 0), min(w1, W))
            if divisor_override is not None:
                div = divisor_override
            elif count_include_pad:
                div = (h1 - h0) * (w1 - w0)
            else:
                div = len(rows) * len(cols)
            yield i, j, rows, cols, div


def avg_pool2d(x, *params):
    """4-D input, params as for the op (pairs); float64 result."""
    N, C, H, W = x.shape
    wins = list(_avg_windows(H, W, *params))
    out = torch.zeros(N, C, wins[-1][0] + 1, wins[-1][1] + 1, dtype=torch.float64)
    xd = x.double()
    for i, j, rows, cols, div in wins:
        total = torch.zeros(N, C, dtype=torch.float64)
        for h in rows:
            for w in cols:
                total = total + xd[:, :, h, w]
        out[:, :, i, j] = total / div
    return out


def avg_pool2d_backward(grad_out, input_shape, *params):
    """Scatter of grad/divisor over each window, in output row-major order (float64)."""
    N, C, H, W = input_shape
    g = torch.zeros(N, C, H, W, dtype=torch.float64)
    go = grad_out.double()
    for i, j, rows, cols, div in _avg_windows(H, W, *params):
        for h in rows:
            for w in cols:
                g[:, :, h, w] += go[:, :, i, j] / div
    return g


def adaptive_windows(size, out_size):
    """[floor(o*I/O), ceil((o+1)*I/O)) for each output o."""
    return [((o * size) // out_size, -((-(o + 1) * size) // out_size)) for o in range(out_size)]


def adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    rows, cols = adaptive_windows(H, output_size[0]), adaptive_windows(W, output_size[1])
    out = torch.zeros(N, C, len(rows), len(cols), dtype=torch.float64)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            total = torch.zeros(N, C, dtype=torch.float64)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    total = total + x[:, :, h, w].double()
            out[:, :, i, j] = total / (h1 - h0) / (w1 - w0)
    return out


def adaptive_max_pool2d(x, output_size):
    N, C, H, W = x.shape
    rows, cols = adaptive_windows(H, output_size[0]), adaptive_windows(W, output_size[1])
    xd = x.double()
    out = torch.empty(N, C, len(rows), len(cols), dtype=torch.float64)
    idx = torch.empty(N, C, len(rows), len(cols), dtype=torch.int64)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            best = torch.full((N, C), float("-inf"), dtype=torch.float64)
            arg = torch.full((N, C), h0 * W + w0, dtype=torch.int64)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    v = xd[:, :, h, w]
                    take = (v > best) | torch.isnan(v)
                    best = torch.where(take, v, best)
                    arg = torch.where(take, torch.full_like(arg, h * W + w), arg)
            out[:, :, i, j] = best
            idx[:, :, i, j] = arg
    return out.to(x.dtype), idx


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    N, C, H, W = input_shape
    rows, cols = adaptive_windows(H, grad_out.shape[-2]), adaptive_windows(W, grad_out.shape[-1])
    g = torch.zeros(N, C, H, W, dtype=torch.float64)
    go = grad_out.double()
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            g[:, :, h0:h1, w0:w1] += (go[:, :, i, j] / (h1 - h0) / (w1 - w0))[:, :, None, None]
    return g


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """Float64 conv2d of a 4-D input from the definition: for every kernel tap,
    the strided slice of the zero-padded input it reads, times that tap's
    weights, summed per group."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    OC, cg, kh, kw = weight.shape
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = torch.zeros(N, C, H + 2 * ph, W + 2 * pw, dtype=torch.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x.double()
    wd = weight.double()
    out = torch.zeros(N, OC, OH, OW, dtype=torch.float64)
    ocg = OC // groups
    for i in range(kh):
        for j in range(kw):
            taps = xp[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh, j * dw:j * dw + sw * (OW - 1) + 1:sw]
            for g in range(groups):
                xs = taps[:, g * cg:(g + 1) * cg]
                ws = wd[g * ocg:(g + 1) * ocg, :, i, j]
                out[:, g * ocg:(g + 1) * ocg] += torch.einsum("nchw,oc->nohw", xs, ws)
    if bias is not None:
        out += bias.double().view(1, OC, 1, 1)
    return out
