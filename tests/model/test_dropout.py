"""CPU dropout masks from 16-bit lanes: nn.Dropout's rate, scale, gradient and RNG stream."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recfm.model.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_each_lane_keeps_one_minus_p(p):
    torch.manual_seed(0)
    n = 400_000
    keep = keep_mask((n,), p).float().view(-1, 4)  # lane j = element j of each draw
    sd = (p * (1 - p) / (n / 4)) ** 0.5
    for lane in range(4):
        assert abs(float(keep[:, lane].mean()) - (1 - p)) < 5 * sd, lane
    # neighbouring elements are independent (no lane shares bits with another)
    both = float((keep[:, 0] * keep[:, 1]).mean())
    assert abs(both - (1 - p) ** 2) < 5 * sd


def test_kept_elements_are_scaled_like_nn_dropout_and_the_gradient_follows_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_the_same_seed_draws_the_same_mask_and_checkpoints_resume_it():
    x = torch.randn(5, 7, 11)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    state = torch.get_rng_state()
    b = dropout(x, 0.5)
    torch.set_rng_state(state)
    torch.testing.assert_close(dropout(x, 0.5), b)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.5), a)
    assert not torch.equal(a, b)


def test_edges_and_the_reference_path():
    x = torch.randn(4, 9)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError):
        dropout(x, 1.5)
    torch.manual_seed(2)
    ref = F.dropout(x, 0.3, True)
    torch.manual_seed(2)
    torch.testing.assert_close(dropout(x, 0.3, fast=False), ref)
    module = Dropout(0.3).eval()
    assert module(x) is x and module.state_dict() == {}
