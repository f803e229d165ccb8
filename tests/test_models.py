"""Model zoo: every registered model on every compatible data-set shape, plus exact parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from drt.errors import DrtError
from drt.models import MODELS, create, model_options

# one sample's shape per data set (imagefolder: an odd, non-square size; signal2: a 2-channel signal)
SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "imagefolder": (3, 45, 37),
    "mnist1d": (1, 40),
    "signal2": (2, 100),
}
KIND = {"digits": "image", "mnist": "image", "cifar10": "image", "imagefolder": "image",
        "mnist1d": "signal", "signal2": "signal"}
TOO_SMALL = {("lenet5", "digits")}  # LeNet-5 needs at least 12x12
NUM_CLASSES = 7


def _compatible(model: str, data: str) -> bool:
    return MODELS.meta(model)["inputs"] in ("any", KIND[data]) and (model, data) not in TOO_SMALL


CASES = [(m, d) for m in MODELS.names() for d in SHAPES if _compatible(m, d)]
BAD_CASES = [(m, d) for m in MODELS.names() for d in SHAPES if not _compatible(m, d)]


def _weight_count(model: nn.Module) -> int:
    """Conv + Linear weights and biases (BatchNorm not counted)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return sum(p.numel() for m in layers for p in m.parameters(recurse=False))


def _total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_all_models_with_help():
    expected = {"mlp", "lenet5", "conv4", "conv6", "conv1d", "vgg11", "vgg13", "vgg16", "vgg19",
                "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "vit"}
    assert set(MODELS.names()) == expected
    for name in MODELS:
        meta = MODELS.meta(name)
        assert meta["inputs"] in ("any", "image", "signal")
        assert meta["help"] and "\n" not in meta["help"]


@pytest.mark.parametrize(("name", "data"), CASES)
def test_forward_backward(name, data):
    torch.manual_seed(0)
    model = create(name, SHAPES[data], NUM_CLASSES)
    x = torch.randn(3, *SHAPES[data])
    out = model(x)
    assert out.shape == (3, NUM_CLASSES)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(("name", "data"), CASES)
def test_fx_trace_and_stage_hooks(name, data):
    torch.manual_seed(0)
    model = create(name, SHAPES[data], NUM_CLASSES).eval()
    x = torch.randn(2, *SHAPES[data])
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))

    modules = dict(model.named_modules())
    names = [n for stage in model.drt_stages for n in stage]
    assert names and all(stage for stage in model.drt_stages)
    assert len(set(names)) == len(names)
    assert len({id(modules[n]) for n in names}) == len(names)  # no shared module instances
    seen: dict[str, torch.Tensor] = {}
    for n in names:
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out))
    model(x)
    assert set(seen) == set(names)
    for out in seen.values():  # a convnet's stage output is after a ReLU; a transformer's is its residual stream
        assert out.shape[0] == 2 and (name == "vit" or (out >= 0).all())


@pytest.mark.parametrize(("name", "data"), BAD_CASES)
def test_incompatible_shape_raises(name, data):
    with pytest.raises(DrtError, match=rf"model '{name}' needs .*data set gives \(") as err:
        create(name, SHAPES[data], NUM_CLASSES)
    assert "\n" not in str(err.value)


def test_error_messages_are_specific():
    msg = r"model 'conv1d' needs 1-D signals \(C, L\); data set gives \(3, 32, 32\)"
    with pytest.raises(DrtError, match=msg):
        create("conv1d", (3, 32, 32), 10)
    msg = r"'lenet5' needs images of at least 12x12; data set gives \(1, 8, 8\)"
    with pytest.raises(DrtError, match=msg):
        create("lenet5", (1, 8, 8), 10)
    with pytest.raises(DrtError, match=r"unknown model 'vgg17'; valid: .*vgg16"):
        create("vgg17", (3, 32, 32), 10)
    with pytest.raises(DrtError, match="num_classes"):
        create("mlp", (1, 28, 28), 0)


@pytest.mark.parametrize("name", MODELS.names())
def test_unknown_option_raises_and_lists_options(name):
    takes = model_options(name)
    with pytest.raises(DrtError, match="does not take option") as err:
        create(name, (1, 40) if MODELS.meta(name)["inputs"] == "signal" else (3, 32, 32), 10, colour=3)
    assert all(opt in str(err.value) for opt in takes)
    if not takes:
        assert "it takes: none" in str(err.value)


@pytest.mark.parametrize(("name", "options", "field"), [
    ("lenet5", {"width": 0}, "width"),
    ("vgg16", {"shortcut": "pad"}, "shortcut"),
    ("resnet20", {"width": 0}, "width"),
    ("resnet20", {"width": True}, "width"),
    ("resnet20", {"shortcut": "identity"}, "shortcut"),
    ("mlp", {"hidden": [300, -1]}, "hidden"),
    ("mlp", {"hidden": "300"}, "hidden"),
])
def test_bad_option_values_raise(name, options, field):
    with pytest.raises(DrtError, match=field):
        create(name, (3, 32, 32), 10, **options)


def test_exact_parameter_counts():
    assert _weight_count(create("vgg16", (3, 32, 32), 10)) == 14_715_594  # PCN reference
    assert _total(create("mlp", (1, 28, 28), 10)) == 266_610  # 784-300-100-10
    # CIFAR ResNet-20, width 16: option A (zero-pad) is the paper's 0.27M; the conv+BN projections
    # of stages 2 and 3 add 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters
    assert _total(create("resnet20", (3, 32, 32), 10, shortcut="pad")) == 269_722
    assert _total(create("resnet20", (3, 32, 32), 10)) == 269_722 + 2_752
    assert _total(create("resnet18", (3, 224, 224), 1000)) == 11_689_512  # torchvision's ResNet-18
    assert _total(create("mlp", (1, 28, 28), 10, hidden=[])) == 7_850  # logistic regression


def test_default_shapes_match_the_references():
    lenet = create("lenet5", (1, 28, 28), 10)
    assert lenet.conv1.padding == (2, 2) and lenet.fc1.in_features == 400
    assert create("lenet5", (3, 32, 32), 10).conv1.padding == (0, 0)
    assert create("conv1d", (1, 40), 10).fc.in_features == 125  # MNIST-1D CNN
    assert create("conv6", (3, 32, 32), 10).fc1.in_features == 256 * 4 * 4
    vgg = create("vgg16", (3, 32, 32), 10)
    assert not any(m.ceil_mode for m in vgg.modules() if isinstance(m, nn.MaxPool2d))
    assert [len(s) for s in vgg.drt_stages] == [2, 2, 3, 3, 3]
    assert vgg.drt_stages[2] == ["relu5", "relu6", "relu7"]
    assert create("vgg16", (3, 32, 32), 10, width=16).fc.in_features == 128


def test_resnet_structure_and_stages():
    conv = create("resnet32", (3, 32, 32), 10)
    assert conv.drt_stages == [[f"layer{s}.{i}" for i in range(5)] for s in (1, 2, 3)]
    assert len(conv.layer1[0].shortcut) == 0  # same width, stride 1: identity
    assert isinstance(conv.layer2[0].shortcut[0], nn.Conv2d) and conv.layer2[0].shortcut[0].stride == (2, 2)
    assert len(conv.layer2[1].shortcut) == 0  # identity inside a stage
    pad = create("resnet32", (3, 32, 32), 10, shortcut="pad")
    assert not list(pad.layer3[0].shortcut.parameters())
    assert create("resnet20", (3, 32, 32), 10, width=64).fc.in_features == 256  # the PCN reference width
    r18 = create("resnet18", (3, 64, 64), 10)
    assert r18.drt_stages == [[f"layer{s}.0", f"layer{s}.1"] for s in (1, 2, 3, 4)]
    assert r18.conv1.kernel_size == (7, 7) and r18.fc.in_features == 512


def test_block_hook_sees_output_after_residual_add_and_relu():
    torch.manual_seed(0)
    model = create("resnet20", (3, 32, 32), 10, shortcut="pad").eval()
    block = model.layer2[1]
    got = {}
    block.register_forward_hook(lambda _m, inp, out: got.update(x=inp[0], out=out))
    model(torch.randn(2, 3, 32, 32))
    x = got["x"]
    expected = torch.relu(block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x))))) + x)
    torch.testing.assert_close(got["out"], expected)


def test_pad_shortcut_subsamples_and_zero_pads():
    model = create("resnet20", (3, 32, 32), 10, shortcut="pad")
    sc = model.layer2[0].shortcut
    x = torch.randn(2, 16, 7, 7)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert (y[:, :8] == 0).all() and (y[:, 24:] == 0).all()


def test_init_is_deterministic_and_kaiming():
    torch.manual_seed(3)
    a = create("resnet20", (3, 32, 32), 10)
    torch.manual_seed(3)
    b = create("resnet20", (3, 32, 32), 10)
    torch.manual_seed(4)
    c = create("resnet20", (3, 32, 32), 10)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert (a.bn1.weight == 1).all() and (a.bn1.bias == 0).all()
    w = create("vgg16", (3, 32, 32), 10).conv13.weight  # fan_out = 512 * 9
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 0.002


def test_relus_are_not_shared():
    for name in MODELS:
        model = create(name, (1, 40) if MODELS.meta(name)["inputs"] == "signal" else (3, 32, 32), 10)
        relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
        assert len({id(m) for m in relus}) == len(relus), name
