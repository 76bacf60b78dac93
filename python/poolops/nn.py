"""Drop-in nn.Module replacements. Each subclasses its torch.nn counterpart, so
constructor arguments, defaults, repr and state_dict are torch's own; only
forward runs the poolops kernels."""
import torch

from . import functional as F

__all__ = ["MaxPool2d"]


class MaxPool2d(torch.nn.MaxPool2d):
    __doc__ = torch.nn.MaxPool2d.__doc__

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


__all__ += ["Conv2d"]


class Conv2d(torch.nn.Conv2d):
    __doc__ = torch.nn.Conv2d.__doc__

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
