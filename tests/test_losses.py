"""Losses by name on hand-made logits: perfect, constant and known-value cases."""

from __future__ import annotations

import math

import pytest
import torch

from cellloc.errors import InputError
from cellloc.losses import LOSSES, Bootstrapped, FocalLoss, create_loss, probabilities

Y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # one-hot rows: valid for every loss


def loss(name: str, logits, targets=Y, **kw) -> float:
    kind = "multiclass" if name == "ce" else "multilabel"
    return float(create_loss(name, kind, **kw)(torch.as_tensor(logits, dtype=torch.float32), targets))


def test_perfect_logits_cost_almost_nothing():
    sure = Y * 40 - 20  # +20 where the target is 1, -20 elsewhere
    for name in ("bce", "focal", "ce"):
        assert loss(name, sure) < 1e-6, name


def test_constant_logits():
    zeros = torch.zeros_like(Y)
    assert loss("bce", zeros) == pytest.approx(math.log(2))  # p = 0.5 everywhere
    assert loss("focal", zeros, focal_gamma=2.0) == pytest.approx(0.25 * math.log(2))  # (1 - 0.5)^2 * ln 2
    assert loss("ce", zeros) == pytest.approx(math.log(3))  # uniform over 3 classes


def test_known_values():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    p = torch.sigmoid(logits)
    bce = -(Y * p.log() + (1 - Y) * (1 - p).log()).mean()
    assert loss("bce", logits) == pytest.approx(float(bce), rel=1e-6)
    p_t = Y * p + (1 - Y) * (1 - p)
    focal = (-(p_t.log()) * (1 - p_t) ** 2).mean()
    assert loss("focal", logits) == pytest.approx(float(focal), rel=1e-5)
    assert loss("focal", logits, focal_gamma=0.0) == pytest.approx(float(bce), rel=1e-6)  # gamma 0 is bce
    # ce with smoothing 0.3 over 3 classes: target row (0.8, 0.1, 0.1) for class 0
    logp = torch.log_softmax(logits, dim=1)
    smooth = Y * 0.7 + 0.1
    assert loss("ce", logits, label_smoothing=0.3) == pytest.approx(float(-(smooth * logp).sum(1).mean()), rel=1e-6)
    assert loss("ce", logits) == pytest.approx(float(-(Y * logp).sum(1).mean()), rel=1e-6)


def test_focal_alpha_weights_positives():
    logits = torch.zeros(1, 2)
    t = torch.tensor([[1.0, 0.0]])
    # alpha 0.75 on the positive, 0.25 on the negative; both terms 0.25 * ln 2 before weighting
    assert float(FocalLoss(2.0, alpha=0.75)(logits, t)) == pytest.approx(0.25 * math.log(2) * (0.75 + 0.25) / 2)


def test_kinds_are_checked_and_names_listed():
    assert sorted(LOSSES) == ["bce", "ce", "focal"]
    with pytest.raises(InputError, match="loss ce is for multiclass tasks, not multilabel"):
        create_loss("ce", "multilabel")
    with pytest.raises(InputError, match="unknown loss 'hinge'; known: bce, ce, focal"):
        create_loss("hinge", "multilabel")
    with pytest.raises(ValueError, match="label smoothing must be in"):
        create_loss("ce", "multiclass", label_smoothing=1.0)


def test_probabilities_of_each_kind():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(probabilities(logits, "multiclass"), torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(probabilities(logits, "multilabel"), torch.tensor([[0.5, 0.75]]))


def test_sample_weights_average_per_sample_losses():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    for name in ("bce", "focal", "ce"):
        fn = create_loss(name, "multiclass" if name == "ce" else "multilabel")
        first, second = float(fn(logits[:1], Y[:1])), float(fn(logits[1:], Y[1:]))
        assert float(fn(logits, Y)) == pytest.approx((first + second) / 2, rel=1e-6), name
        w = torch.tensor([3.0, 1.0])
        assert float(fn(logits, Y, w)) == pytest.approx((3 * first + second) / 4, rel=1e-6), name
        assert float(fn(logits, Y, torch.tensor([0.0, 2.0]))) == pytest.approx(second, rel=1e-6), name  # weight 0 drops a sample
        assert float(fn(logits, Y, torch.ones(2))) == pytest.approx(float(fn(logits, Y)), rel=1e-6), name


def test_bootstrapped_targets_mix_in_the_models_own_scores_after_the_warm_up():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    field = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # field labels: the second row's class 2 is noise
    bce = create_loss("bce", "multilabel")
    boot = Bootstrapped(bce, 0.5, start_batches=2)
    plain = float(bce(logits, field))
    assert [float(boot(logits, field)) for _ in range(2)] == pytest.approx([plain, plain])  # warm-up: field labels
    mixed = field * (0.5 + 0.5 * torch.sigmoid(logits))
    assert float(boot(logits, field)) == pytest.approx(float(bce(logits, mixed)), rel=1e-6)
    assert boot.batches_done == 3
    boot.eval()  # validation scores against the plain labels and does not count
    assert float(boot(logits, field)) == pytest.approx(plain) and boot.batches_done == 3
    w = torch.tensor([1.0, 3.0])
    boot.train()
    assert float(boot(logits, field, w)) == pytest.approx(float(bce(logits, mixed, w)), rel=1e-6)
    assert float(Bootstrapped(bce, 0.0)(logits, field)) == pytest.approx(plain)  # weight 0: plain training
    with pytest.raises(ValueError, match="bootstrap weight must be in"):
        Bootstrapped(bce, 1.5)


def test_bootstrapped_targets_keep_absent_classes_at_zero():
    """Only a class the field has can be lowered: a class it lacks stays 0 whatever the model says."""
    logits = torch.full((1, 3), 5.0, requires_grad=True)
    field = torch.tensor([[1.0, 0.0, 0.0]])
    loss = Bootstrapped(create_loss("bce", "multilabel"), 1.0)(logits, field)
    loss.backward()
    # target (1 * sigmoid(5), 0, 0), the model's score detached: gradient sigmoid(5) - target per class / 3
    p = torch.sigmoid(torch.tensor(5.0))
    torch.testing.assert_close(logits.grad, torch.stack([p - p, p, p]).reshape(1, 3) / 3)
