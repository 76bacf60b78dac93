import inspect

import pytest
import torch

import poolops
import poolops.nn as pnn

PAIRS = [
    (pnn.Conv2d, torch.nn.Conv2d),
    (pnn.MaxPool2d, torch.nn.MaxPool2d),
    (pnn.AvgPool2d, torch.nn.AvgPool2d),
    (pnn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d),
    (pnn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d),
]


@pytest.mark.parametrize("mine,theirs", PAIRS)
def test_same_signature(mine, theirs):
    ours, torchs = inspect.signature(mine.__init__), inspect.signature(theirs.__init__)
    if mine is pnn.AvgPool2d:  # plus a trailing dilation keyword
        assert list(ours.parameters)[-1] == "dilation" and ours.parameters["dilation"].default == 1
        ours = ours.replace(parameters=list(ours.parameters.values())[:-1])
    assert ours == torchs


@pytest.mark.parametrize(
    "args,kwargs",
    [((3,), {}), ((3, 2, 1), {}), ((2,), dict(ceil_mode=True, return_indices=True)), (((2, 3), (1, 2), (1, 0), (1, 2)), {}),
     ((3, None, 1, 2, True, True), {})],
)
def test_max_pool2d_module_matches_torch(args, kwargs):
    mine, theirs = pnn.MaxPool2d(*args, **kwargs), torch.nn.MaxPool2d(*args, **kwargs)
    assert repr(mine) == repr(theirs)
    assert mine.state_dict() == theirs.state_dict() == {}
    x = torch.randn(2, 3, 11, 10)
    a, b = mine(x), theirs(x)
    if isinstance(b, tuple):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    else:
        assert torch.equal(a, b)


def test_module_swaps_into_a_sequential():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
    swapped = torch.nn.Sequential(model[0], model[1], pnn.MaxPool2d(3, 2, 1))
    swapped.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), swapped(x))


@pytest.mark.parametrize(
    "mine,theirs,args",
    [(pnn.AvgPool2d, torch.nn.AvgPool2d, (3, 2, 1, True, False)), (pnn.AvgPool2d, torch.nn.AvgPool2d, (2, None, 0, False, True, -2)),
     (pnn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, ((4, None),)), (pnn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d, (3, True))],
)
def test_other_modules_match_torch(mine, theirs, args):
    a_mod, b_mod = mine(*args), theirs(*args)
    assert repr(a_mod) == repr(b_mod)
    x = torch.randn(2, 3, 11, 10)
    a, b = a_mod(x), b_mod(x)
    if isinstance(b, tuple):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("args,kwargs", [((4, 6, 3), dict(stride=2, padding=1)), ((4, 8, 3), dict(stride=2, padding=(1, 2), groups=4)),
                                         ((4, 4, (3, 2)), dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=4, bias=False)),
                                         ((4, 6, 2), dict(stride=1, padding="same", groups=2))])
def test_conv2d_module_matches_torch(args, kwargs, padding_mode):
    import warnings

    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(*args, **kwargs, padding_mode=padding_mode, dtype=torch.float64)
    torch.manual_seed(0)
    mine = pnn.Conv2d(*args, **kwargs, padding_mode=padding_mode, dtype=torch.float64)
    assert repr(mine) == repr(theirs)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)  # same initialisation under the same seed
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ya, yb = mine(x), theirs(x)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    for (na, pa), (nb, pb) in zip(mine.named_parameters(), theirs.named_parameters()):
        assert na == nb
        torch.testing.assert_close(pa.grad, pb.grad)


def test_conv2d_module_loads_torch_checkpoint_and_checks_like_torch():
    torch.manual_seed(1)
    theirs = torch.nn.Conv2d(3, 8, 3, 2, 1)
    mine = pnn.Conv2d(3, 8, 3, 2, 1)
    mine.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(mine(x), theirs(x))
    torch.testing.assert_close(mine(x[0]), theirs(x[0]))
    # Unlike torch, poolops takes 'same' at any stride (TensorFlow's; see tests/test_same_padding.py).
    assert pnn.Conv2d(3, 8, 3, 2, padding="same")(x).shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="padding_mode"):
        pnn.Conv2d(3, 8, 3, padding_mode="foo")
    m = pnn.Conv2d(3, 8, 3, padding=5, padding_mode="reflect")
    with pytest.raises(RuntimeError):
        m(torch.randn(1, 3, 4, 4))
    assert pnn.Conv2d(3, 8, 3, device="meta").weight.device.type == "meta"
