"""two_head.py: pools over a field's cells on hand-made features, and the two losses of the module."""

from __future__ import annotations

import math

import pytest
import torch

from cellloc.losses import create_loss
from cellloc.models import classify, create_model, embed, num_features
from cellloc.two_head import POOLS, ImageHead, TwoHeadModule, pool_cells

H = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
GROUP = torch.tensor([7, 7, 9])  # cells 0 and 1 from one field, cell 2 from another


def test_pools_on_hand_made_features():
    mean, inverse = pool_cells("mean", H, GROUP)
    assert inverse.tolist() == [0, 0, 1]
    torch.testing.assert_close(mean, torch.tensor([[2.0, 3.0], [5.0, 0.0]]))
    torch.testing.assert_close(pool_cells("max", H, GROUP)[0], torch.tensor([[3.0, 4.0], [5.0, 0.0]]))
    scores = torch.tensor([0.0, math.log(3.0), 5.0])  # cell 1 weighs 3/4 of its field
    torch.testing.assert_close(pool_cells("attention", H, GROUP, scores)[0], torch.tensor([[2.5, 3.5], [5.0, 0.0]]))
    assert sorted(POOLS) == ["attention", "max", "mean"]
    with pytest.raises(ValueError, match="needs a score per cell"):
        pool_cells("attention", H, GROUP)


def test_attention_is_shift_invariant_and_learns():
    head = ImageHead(2, 3, "attention")
    h = H.clone().requires_grad_(True)
    logits, _ = head(h, GROUP)
    logits.sum().backward()
    assert logits.shape == (2, 3) and head.attention.weight.grad.abs().sum() > 0
    s = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(pool_cells("attention", H, GROUP, s)[0], pool_cells("attention", H, GROUP, s + 100)[0])


def test_module_adds_the_image_loss_to_the_cell_loss():
    torch.manual_seed(0)
    net = create_model("efficientnet-b0", 4, 5, "none", image_size=32).eval()  # eval: dropout off, same features twice
    loss_fn = create_loss("bce", "multilabel")
    x = torch.randn(3, 4, 32, 32)
    field_labels = torch.tensor([[1.0, 0, 1, 0, 0], [1.0, 0, 1, 0, 0], [0, 1.0, 0, 0, 0]])
    cell_targets = field_labels * 0.5
    optimized: list[torch.nn.Module] = []
    module = TwoHeadModule(net, loss_fn, optimized.append, num_classes=5, pool="mean", image_loss_weight=2.0).eval()
    logits, loss, _ = module(x, cell_targets, group=GROUP, image_targets=field_labels)
    with torch.no_grad():
        h = embed(net, x)
        torch.testing.assert_close(logits, net(x))
        torch.testing.assert_close(logits, classify(net, h))
        image_logits, _ = module.image_head(h, GROUP)
        expected = loss_fn(logits, cell_targets) + 2.0 * loss_fn(image_logits, field_labels[[0, 2]])
    torch.testing.assert_close(loss, expected)
    _, cell_only, _ = module(x, cell_targets)  # validation batches carry no fields: the cell loss alone
    torch.testing.assert_close(cell_only, loss_fn(logits, cell_targets))
    module.optimizer_scheduler()  # the optimizer sees the backbone and the image head
    params = {id(p) for p in optimized[0].parameters()}
    assert {id(p) for p in module.image_head.parameters()} <= params and {id(p) for p in net.parameters()} <= params


@pytest.mark.parametrize("name", ["efficientnet-b0", "resnet18", "densenet121"])
def test_features_and_head_apart_match_the_whole_net(name):
    """Every backbone family: its own head on :func:`embed`'s features gives its logits."""
    torch.manual_seed(0)
    net = create_model(name, 4, 5, "none", image_size=32).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        h = embed(net, x)
        assert h.shape == (2, num_features(net))
        torch.testing.assert_close(classify(net, h), net(x))
