"""The cosine learning-rate schedule with linear warm-up (handout §4.4)."""

import math

import pytest

from tests.adapters import run_get_lr_cosine_schedule

MAX, MIN, WARMUP, CYCLE = 1.0, 0.1, 7, 21


def lr(it: int) -> float:
    return run_get_lr_cosine_schedule(
        it=it, max_learning_rate=MAX, min_learning_rate=MIN, warmup_iters=WARMUP, cosine_cycle_iters=CYCLE
    )


def test_warmup_is_linear_from_zero():
    assert [lr(t) for t in range(WARMUP)] == pytest.approx([t / WARMUP * MAX for t in range(WARMUP)])


def test_cosine_phase_goes_from_max_through_the_midpoint_to_min():
    assert lr(WARMUP) == pytest.approx(MAX)
    assert lr((WARMUP + CYCLE) // 2) == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi * 7 / 14)) * (MAX - MIN))
    assert lr(14) == pytest.approx((MAX + MIN) / 2)
    assert lr(CYCLE) == pytest.approx(MIN)
    cosine = [lr(t) for t in range(WARMUP, CYCLE + 1)]
    assert all(a > b for a, b in zip(cosine, cosine[1:]))


def test_after_the_cycle_the_rate_stays_at_min():
    assert [lr(t) for t in range(CYCLE + 1, CYCLE + 10)] == [MIN] * 9


def test_reference_values():
    # The values the assignment's reference test expects for these arguments.
    expected = [
        0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
        0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
        0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414,
        0.55, 0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
        0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1,
    ]
    assert [lr(t) for t in range(25)] == pytest.approx(expected)


def test_no_warmup_and_an_empty_cycle():
    assert run_get_lr_cosine_schedule(0, 1.0, 0.1, 0, 10) == pytest.approx(1.0)
    assert run_get_lr_cosine_schedule(5, 1.0, 0.1, 5, 5) == pytest.approx(1.0)
    assert run_get_lr_cosine_schedule(6, 1.0, 0.1, 5, 5) == pytest.approx(0.1)
