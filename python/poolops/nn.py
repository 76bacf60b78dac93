"""Drop-in nn.Module replacements. Each subclasses its torch.nn counterpart, so
constructor arguments, defaults, repr and state_dict are torch's own; only
forward runs the poolops kernels."""
import torch
from torch.nn.modules.utils import _pair

from . import functional as F
from ._args import same_padding
from ._convert import Swap, convert  # noqa: F401

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "GlobalAvgPool2d", "GlobalMaxPool2d",
           "Conv2d", "convert", "Swap"]


class MaxPool2d(torch.nn.MaxPool2d):
    __doc__ = torch.nn.MaxPool2d.__doc__

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    __doc__ = torch.nn.AvgPool2d.__doc__
    dilation = 1  # also for modules converted from torch.nn.AvgPool2d, which have none

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, dilation=1):
        # poolops extras: dilation, and padding 'same' / 'valid' / [top, bottom, left, right].
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.dilation = dilation

    __init__.__annotations__ = {**torch.nn.AvgPool2d.__init__.__annotations__,
                                "dilation": torch.nn.MaxPool2d.__init__.__annotations__["dilation"]}

    def extra_repr(self):
        extra = "" if self.dilation == 1 else f", dilation={self.dilation}"
        return super().extra_repr() + extra

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, self.dilation)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    __doc__ = torch.nn.AdaptiveAvgPool2d.__doc__

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    __doc__ = torch.nn.AdaptiveMaxPool2d.__doc__

    def forward(self, input):
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class GlobalAvgPool2d(torch.nn.Module):
    """Mean over the spatial dims: (N, C, H, W) -> (N, C, 1, 1), or (C, H, W) -> (C, 1, 1)."""

    def forward(self, input):
        return F.global_avg_pool2d(input)


class GlobalMaxPool2d(torch.nn.Module):
    """Max over the spatial dims: (N, C, H, W) -> (N, C, 1, 1), or (C, H, W) -> (C, 1, 1).
    With return_indices, also the flat argmax within each H×W plane."""

    def __init__(self, return_indices: bool = False):
        super().__init__()
        self.return_indices = return_indices

    def extra_repr(self):
        return f"return_indices={self.return_indices}"

    def forward(self, input):
        return F.global_max_pool2d(input, self.return_indices)


class Conv2d(torch.nn.Conv2d):
    __doc__ = torch.nn.Conv2d.__doc__

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        # torch rejects padding='same' with stride > 1; poolops takes it (TensorFlow's 'same').
        same = isinstance(padding, str) and padding == "same"
        super().__init__(in_channels, out_channels, kernel_size, 1 if same else stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        if same:
            self.stride = _pair(stride)

    __init__.__annotations__ = dict(torch.nn.Conv2d.__init__.__annotations__)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            pads = self._reversed_padding_repeated_twice
            if self.padding == "same":
                top, bottom, left, right = same_padding(input.shape[-2:], self.kernel_size, self.stride,
                                                        self.dilation)
                pads = [left, right, top, bottom]
            padded = torch.nn.functional.pad(input, pads, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
