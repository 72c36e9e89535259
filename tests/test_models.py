import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from mcls.model.classifier import class_log_probs, create_model, head_probs
from mcls.model.weights import REGISTRY, load_offline_weights

CAT_CLASSES = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
                                  "efficientnet_lite0", "mobilenetv2_100"])
def test_packaged_weights_recognise_a_cat(name):
    """The offline weights really load (strict, every shape checked) and classify an ImageNet picture."""
    skdata = pytest.importorskip("skimage.data")
    net = timm.create_model(name, pretrained=False)
    entry = load_offline_weights(net, name)
    x = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(entry.mean).view(1, 3, 1, 1)) / torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = net.eval()(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"{name} top-1 is ImageNet class {top}"
    assert probs[list(CAT_CLASSES)].sum() > 0.8


def test_registry_covers_the_documented_backbones():
    assert {"tf_efficientnet_lite0", "efficientnet_lite1", "mobilenetv2_100"} <= set(REGISTRY)


@pytest.mark.parametrize("heads,keys", [("multi", {"mask", "gender", "age"}), ("single", {"class"})])
def test_heads_combine_into_18_probabilities(heads, keys):
    model = create_model("test_efficientnet", heads, pretrained="none").eval()
    x = torch.randint(0, 255, (4, 3, 48, 48), dtype=torch.uint8)
    out = model(x)
    assert set(out) == keys
    p = class_log_probs(out).exp()
    assert p.shape == (4, 18) and torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    marg = head_probs(p)
    if heads == "multi":  # the product form keeps each head's own distribution as its marginal
        assert torch.allclose(marg["mask"], out["mask"].softmax(-1), atol=1e-5)
        assert torch.allclose(marg["age"], out["age"].softmax(-1), atol=1e-5)


def test_uint8_and_float_inputs_agree():
    model = create_model("test_efficientnet", "multi", pretrained="none").eval()
    x = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), model(x.float() / 255)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_no_offline_weights_warns_and_trains_from_scratch():
    with pytest.warns(UserWarning, match="from scratch"):
        create_model("test_resnet", "multi", pretrained="offline")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model("efficientnet_b99")


def test_offline_model_normalises_as_its_weights_expect():
    model = create_model("mobilenetv2_100", pretrained="offline")
    assert np.allclose(model.mean.flatten().numpy(), [0.485, 0.456, 0.406])
    model = create_model("efficientnet_lite0", pretrained="offline")
    assert np.allclose(model.std.flatten().numpy(), 0.5)
