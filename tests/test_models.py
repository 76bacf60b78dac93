"""Drop-in use in real models: convert(), torchvision models, torch.compile,
torch.export, autocast, DDP and the training example."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import poolops
import poolops.nn as pnn
from poolops._convert import KINDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.AvgPool2d(2, ceil_mode=True),
        torch.nn.AdaptiveMaxPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


# --- convert() ---------------------------------------------------------------------------------

def test_convert_swaps_every_kind_and_keeps_state():
    model = small_cnn()
    converted, report = pnn.convert(model, return_report=True)
    assert converted is not model
    assert [s.name for s in report] == ["0", "3", "4", "5", "6", "7"]
    assert all(type(m).__module__ == "poolops.nn" for m in (converted[i] for i in (0, 3, 4, 5, 6, 7)))
    assert type(model[3]) is torch.nn.MaxPool2d  # original untouched
    assert model.state_dict().keys() == converted.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, converted.state_dict()[k])
    assert repr(model) == repr(converted)
    assert "0: torch.nn.modules.conv.Conv2d -> poolops.nn.Conv2d" == str(report[0])


def test_convert_options():
    model = small_cnn()
    same, report = pnn.convert(model, kinds=("MaxPool2d",), inplace=True, return_report=True)
    assert same is model and type(model[3]) is pnn.MaxPool2d and type(model[0]) is torch.nn.Conv2d
    assert len(report) == 1
    assert pnn.convert(model, kinds=("MaxPool2d",), return_report=True)[1] == []  # already converted

    class MyPool(torch.nn.MaxPool2d):
        pass

    net = torch.nn.Sequential(MyPool(2))
    assert type(pnn.convert(net)[0]) is MyPool
    assert type(pnn.convert(net, include_subclasses=True)[0]) is pnn.MaxPool2d
    with pytest.raises(ValueError, match="unknown kinds \\['Linear'\\]"):
        pnn.convert(net, kinds=("Linear",))
    with pytest.raises(TypeError, match="expected an nn.Module, got int"):
        pnn.convert(3)


def test_convert_keeps_shared_modules_shared():
    pool = torch.nn.MaxPool2d(2)
    net = torch.nn.Sequential(pool, pool)
    out = pnn.convert(net)
    assert out[0] is out[1] and type(out[0]) is pnn.MaxPool2d


# --- torchvision models ------------------------------------------------------------------------

MODELS = ["resnet18", "vgg11", "mobilenet_v2", "densenet121"]


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_eval_and_training_gradients(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    converted, report = pnn.convert(model, return_report=True)
    kinds = {s.new.split(".")[-1] for s in report}
    assert kinds & {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Conv2d"}
    x = torch.randn(2, 3, 64, 64)
    model.eval(), converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)
    # Training gradients in float64: batch norm over a batch of two amplifies fp32
    # summation-order noise, float64 leaves only the algorithms to compare.
    model.train().double(), converted.train().double()
    target = torch.tensor([1, 7])
    for m in (model, converted):
        torch.manual_seed(1)  # the same dropout masks
        torch.nn.functional.cross_entropy(m(x.double()), target).backward()
    scale = max(p.grad.abs().max().item() for p in model.parameters())
    for (k, a), b in zip(model.named_parameters(), converted.parameters()):
        atol = 1e-9 * scale
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-7, atol=atol, msg=lambda m: f"{name} {k}: {m}")


# --- compile, export, autocast -----------------------------------------------------------------

def test_compile_fullgraph_aot_eager_converted_model():
    torch._dynamo.reset()
    model = pnn.convert(small_cnn()).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_compile_inductor_cpu_converted_model():
    torch._dynamo.reset()
    model = pnn.convert(small_cnn()).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_export_converted_model():
    model = pnn.convert(small_cnn()).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("poolops.") for t in targets), targets
    torch.testing.assert_close(exported.module()(x), model(x))
    y = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(exported.module()(y), model(y))


def test_autocast_cpu_bfloat16_dtypes_match_torch():
    model = small_cnn().eval()
    converted = pnn.convert(model)

    def dtypes(m, x):
        seen = []
        hooks = [c.register_forward_hook(lambda mod, inp, out: seen.append((type(mod).__name__, out.dtype)))
                 for c in m.children()]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        for h in hooks:
            h.remove()
        return seen, out

    x = torch.randn(2, 3, 32, 32)
    theirs, out_t = dtypes(model, x)
    mine, out_m = dtypes(converted, x)
    assert mine == theirs
    assert ("Conv2d", torch.bfloat16) in mine
    torch.testing.assert_close(out_m, out_t, rtol=2e-2, atol=2e-2)


# --- DDP ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_gloo_two_processes_gradients_match(tmp_path):
    script = os.path.join(ROOT, "tests", "ddp_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.ok").read_text() == "ok"


# --- the training example ----------------------------------------------------------------------

@pytest.mark.slow
def test_train_digits_example_reaches_95_percent():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import train_digits
    finally:
        sys.path.pop(0)
    accuracy = train_digits.main(["--epochs", "15"])
    assert accuracy["poolops"] >= 0.95
    assert abs(accuracy["poolops"] - accuracy["torch.nn"]) < 0.02
