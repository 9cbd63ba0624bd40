"""Starting a model from another run's weights: stems follow the channels, heads the classes."""

from __future__ import annotations

import pytest
import torch

from cellloc.errors import InputError
from cellloc.models import create_model
from cellloc.transfer import adapt_stem, transfer_state

SIX = ("w1", "w2", "w3", "w4", "w5", "w6")


def test_a_kept_channel_keeps_its_filter_scaled_and_a_new_one_gets_the_mean():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)  # filters per out: [0,1,2], [3,4,5]
    out = adapt_stem(w, ("a", "b", "c"), ("c", "a"))
    assert out.shape == (2, 2, 1, 1)
    # c and a, each times 3/2
    assert out[:, :, 0, 0].tolist() == [[3.0, 0.0], [7.5, 4.5]]
    wide = adapt_stem(w, ("a", "b", "c"), ("a", "b", "c", "new"))
    assert wide[:, 3, 0, 0].tolist() == pytest.approx([1.0 * 0.75, 4.0 * 0.75])  # the mean filter, times 3/4
    with pytest.raises(ValueError):
        adapt_stem(w, ("a", "b"), ("a",))


def test_an_equally_bright_input_drives_the_stem_as_before_when_a_channel_is_dropped():
    torch.manual_seed(0)
    w = torch.randn(8, 6, 3, 3)
    kept = adapt_stem(w, SIX, SIX[:5])
    # sum over input channels: 6/5 * (sum of five filters); equal to the six-sum when the filters are alike
    alike = w[:, :1].repeat(1, 6, 1, 1)
    torch.testing.assert_close(adapt_stem(alike, SIX, SIX[:5]).sum(1), alike.sum(1))
    assert kept.shape == (8, 5, 3, 3)


def test_head_rows_of_shared_classes_are_copied_the_rest_stay_fresh():
    source = {"stem": torch.ones(4, 6, 3, 3), "body": torch.full((4, 4), 2.0), "head.weight": torch.full((5, 4), 3.0),
              "head.bias": torch.arange(5, dtype=torch.float32)}
    target = {"stem": torch.zeros(4, 5, 3, 3), "body": torch.zeros(4, 4), "head.weight": torch.zeros(7, 4),
              "head.bias": torch.full((7,), -1.0), "extra": torch.zeros(2)}
    state, report = transfer_state(source, target, SIX, SIX[1:], 5, 7)
    assert (report.copied, report.stem, report.head, report.fresh) == (["body"], ["stem"], ["head.weight", "head.bias"], ["extra"])
    assert state["head.bias"].tolist() == [0, 1, 2, 3, 4, -1, -1]
    assert (state["head.weight"][:5] == 3).all() and (state["head.weight"][5:] == 0).all()
    assert torch.allclose(state["stem"], torch.full((4, 5, 3, 3), 6 / 5))
    assert "stem adapted (stem)" in report.line() and "head resized" in report.line()
    with pytest.raises(InputError, match="init-from: body has shape"):
        transfer_state({**source, "body": torch.zeros(3, 3)}, target, SIX, SIX[1:], 5, 7)


def test_a_real_backbone_moves_from_six_channels_to_five_and_another_class_count():
    torch.manual_seed(0)
    src = create_model("efficientnet-b0", 6, 12, "none", image_size=32)
    dst = create_model("efficientnet-b0", 5, 9, "none", image_size=32)
    state, report = transfer_state(src.state_dict(), dst.state_dict(), SIX, ("w1", "w2", "w3", "w5", "w6"), 12, 9)
    dst.load_state_dict(state)
    assert len(report.stem) == 1 and report.head and not report.fresh
    stem = report.stem[0]
    torch.testing.assert_close(dst.state_dict()[stem][:, 3], src.state_dict()[stem][:, 4] * 6 / 5)
    for name in report.copied:
        torch.testing.assert_close(dst.state_dict()[name], src.state_dict()[name])
