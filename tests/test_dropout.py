"""The fast path's dropout (xlnet_ref/fast/dropout.py): 15 random bits per element, two elements per draw.

Checked against what nn.Dropout promises: each element dropped independently with probability p (here
p rounded to a multiple of 2^-15), kept elements scaled so that the expectation is x."""

import math

import pytest
import torch

from xlnet_ref.fast.dropout import drop_threshold, fast_dropout, keep_mask, keep_scale, residual_dropout

N = 400_000


def sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3, 0.5, 0.9])
def test_drop_rate_is_p_rounded_to_2_to_the_minus_15(p):
    p_exact = drop_threshold(p) / 2**15
    assert abs(p_exact - p) <= 2**-16  # the rounding
    torch.manual_seed(1)
    dropped = keep_mask(torch.empty(N), p, True) == 0
    # each half of a 32-bit draw on its own: a biased half (e.g. the draw's sign bit used as a random bit,
    # or the int16 sign read as a number) shows up as a rate off by far more than 6 sigma on one of them
    for half in (dropped[0::2], dropped[1::2]):
        rate = float(half.float().mean())
        assert abs(rate - p_exact) < 6 * sigma(p_exact, half.numel()), (p, rate)


def test_the_two_elements_of_one_draw_are_independent():
    torch.manual_seed(2)
    p = 0.5
    dropped = (keep_mask(torch.empty(N), p, True) == 0).float()
    both = float((dropped[0::2] * dropped[1::2]).mean())  # P(both dropped) = p^2 if independent
    assert abs(both - p * p) < 6 * sigma(p * p, N // 2), both
    # and neighbours across draws, and along rows of a 2-D tensor
    grid = (keep_mask(torch.empty(400, 1000), p, True) == 0).float()
    assert abs(float((grid[:, 1:-1:2] * grid[:, 2::2]).mean()) - p * p) < 6 * sigma(p * p, 400 * 499)
    assert abs(float((grid[1:] * grid[:-1]).mean()) - p * p) < 6 * sigma(p * p, 399 * 1000)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_kept_values_are_scaled_so_that_the_expectation_is_x(p):
    torch.manual_seed(3)
    y = fast_dropout(torch.ones(N), p, True)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - drop_threshold(p) / 2**15)))
    assert keep_scale(p) == pytest.approx(1 / (1 - p), rel=1e-4)
    assert abs(float(y.mean()) - 1) < 6 * math.sqrt(p / (1 - p) / N)  # std of y is sqrt(p / (1 - p))
    r = residual_dropout(torch.full((N,), 2.0), torch.ones(N), p, True)
    values = torch.unique(r).tolist()
    assert len(values) == 2 and values[0] == 2.0 and values[1] == pytest.approx(2 + keep_scale(p))


def test_identity_in_eval_mode_or_without_dropout_and_clear_errors():
    x = torch.ones(10)
    assert fast_dropout(x, 0.3, False) is x and fast_dropout(x, 0.0, True) is x
    assert keep_mask(x, 0.3, False) is None
    assert keep_mask(torch.empty(7, 3), 0.3, True).shape == (7, 3)  # an odd number of elements
    with pytest.raises(ValueError, match="dropout p: expected 0 <= p < 1, got 1"):
        keep_mask(x, 1.0, True)


def test_the_same_seed_gives_the_same_mask():
    torch.manual_seed(5)
    a = keep_mask(torch.empty(1001), 0.2, True)
    torch.manual_seed(5)
    assert torch.equal(a, keep_mask(torch.empty(1001), 0.2, True))
