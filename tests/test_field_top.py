"""--field-top: each class a field names is trained only on the field's cells the model scores highest for it."""

import pytest
import torch

from cellloc.field_top import FieldTopTargets
from cellloc.losses import create_loss

# two fields: cells 0-3 in field 7, cells 4-5 in field 9
GROUPS = [7, 7, 7, 7, 9, 9]


def _field_top(fraction: float, start_batches: int = 0) -> FieldTopTargets:
    bce = create_loss("bce", "multilabel")
    return FieldTopTargets(bce, GROUPS, num_classes=2, fraction=fraction, start_batches=start_batches)


def test_cells_least_like_a_class_of_their_field_are_not_trained_on_it():
    """Field 7 names class 0 and lacks class 1: the half of its cells the model scores lowest for class 0 get
    no gradient for it (their target is their own score); the others are pushed to 1, and class 1 stays 0 for all."""
    loss_fn = _field_top(0.5)
    logits = torch.tensor([[3.0, 0.5], [1.0, 0.5], [-1.0, 0.5], [-3.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0]] * 4)
    loss_fn(logits, targets, index=torch.arange(4)).backward()
    p = torch.sigmoid(logits.detach())
    grad = logits.grad * 8  # mean over 4 cells and 2 classes
    kept = torch.stack([p[0, 0] - 1, p[1, 0] - 1, torch.tensor(0.0), torch.tensor(0.0)])
    torch.testing.assert_close(grad[:, 0], kept)
    torch.testing.assert_close(grad[:, 1], p[:, 1])  # a class the field lacks: every cell towards 0
    assert torch.equal(loss_fn.memory[:4], p) and loss_fn.memory[4:].isnan().all()


def test_the_cut_uses_the_remembered_scores_of_the_fields_other_cells():
    """A batch of one cell is judged against its field's cells seen in earlier batches, not against itself alone."""
    loss_fn = _field_top(0.5)
    targets = torch.tensor([[1.0, 0.0]])
    for i, z in enumerate([2.0, 3.0, 4.0]):
        loss_fn(torch.tensor([[z, 0.0]]), targets, index=torch.tensor([i]))
    weak = torch.tensor([[-2.0, 0.0]], requires_grad=True)
    loss_fn(weak, targets, index=torch.tensor([3])).backward()
    assert weak.grad[0, 0] == 0  # lowest of its field for class 0
    alone = torch.tensor([[-2.0, 0.0]], requires_grad=True)
    loss_fn(alone, targets, index=torch.tensor([4])).backward()  # field 9: no other cell seen yet, so it is kept
    assert alone.grad[0, 0] < 0


def test_field_top_is_plain_training_during_the_warm_up_in_validation_and_at_fraction_one():
    bce = create_loss("bce", "multilabel")
    logits = torch.tensor([[3.0, -1.0], [-3.0, 1.0], [0.0, 0.0], [1.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    plain = float(bce(logits, targets))
    index = torch.arange(4)
    warm = _field_top(0.5, start_batches=2)
    assert [float(warm(logits, targets, index=index)) for _ in range(2)] == pytest.approx([plain, plain])
    assert float(warm(logits, targets, index=index)) < plain and warm.batches_done == 3
    warm.eval()
    assert float(warm(logits, targets, index=index)) == pytest.approx(plain) and warm.batches_done == 3
    assert float(_field_top(1.0)(logits, targets, index=index)) == pytest.approx(plain)
    assert float(_field_top(0.5)(logits, targets)) == pytest.approx(plain)  # no index: nothing to rank
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    assert float(_field_top(1.0)(logits, targets, w, index=index)) == pytest.approx(float(bce(logits, targets, w)))
    with pytest.raises(ValueError, match="field top fraction must be in"):
        _field_top(0.0)


def test_remembered_scores_travel_with_the_state_dict():
    a = _field_top(0.5)
    a(torch.randn(3, 2), torch.ones(3, 2), index=torch.tensor([0, 2, 5]))
    b = _field_top(0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.memory.isnan(), b.memory.isnan()) and torch.equal(a.memory.nan_to_num(), b.memory.nan_to_num())
    with pytest.raises(ValueError, match="remembered scores of shape"):
        FieldTopTargets(create_loss("bce", "multilabel"), [1, 2], 2, 0.5).load_state_dict(a.state_dict())

