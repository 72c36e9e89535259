import pytest
import torch

from mcls.train.losses import LOSSES, F1Loss, FocalLoss, create_loss, inverse_frequency_weights


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_toward_the_target(name):
    torch.manual_seed(0)
    target = torch.tensor([0, 1, 2, 2, 1, 0, 2, 2])
    logits = torch.zeros(8, 3, requires_grad=True)
    fn = create_loss(name, class_weights=inverse_frequency_weights(target, 3))
    start = fn(logits, target).item()
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        fn(logits, target).backward()
        opt.step()
    assert fn(logits, target).item() < start
    assert (logits.argmax(1) == target).all()


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), ce, atol=1e-6)


def test_f1_loss_is_zero_for_perfect_predictions():
    target = torch.tensor([0, 1, 2, 1])
    logits = torch.nn.functional.one_hot(target, 3).float() * 50
    assert F1Loss()(logits, target).item() < 1e-4


def test_class_weights_favour_rare_classes():
    w = inverse_frequency_weights(torch.tensor([0] * 90 + [1] * 9 + [2]), 3)
    assert w[2] > w[1] > w[0] and abs(w.mean().item() - 1) < 1e-6


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="focal"):
        create_loss("hinge")
