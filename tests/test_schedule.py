"""The cosine learning-rate schedule with linear warm-up (handout §4.4), under the project's names."""

import math

import pytest
import torch

from core.optim import scale_by_learning_rate
from core.schedule import cosine_schedule, warmup_cosine

LR, FINAL, WARMUP, DECAY = 1.0, 0.1, 7, 21
schedule = warmup_cosine(LR, FINAL, WARMUP, DECAY)


def test_warmup_is_linear_from_zero():
    assert [schedule(t) for t in range(WARMUP)] == pytest.approx([t / WARMUP * LR for t in range(WARMUP)])


def test_cosine_phase_goes_from_lr_through_the_midpoint_to_final_lr():
    assert schedule(WARMUP) == pytest.approx(LR)
    assert schedule((WARMUP + DECAY) // 2) == pytest.approx((LR + FINAL) / 2)
    assert schedule(10) == pytest.approx(FINAL + 0.5 * (1 + math.cos(math.pi * 3 / 14)) * (LR - FINAL))
    assert schedule(DECAY) == pytest.approx(FINAL)
    cosine = [schedule(t) for t in range(WARMUP, DECAY + 1)]
    assert all(a > b for a, b in zip(cosine, cosine[1:]))


def test_after_decay_steps_the_rate_stays_at_final_lr():
    assert [schedule(t) for t in range(DECAY + 1, DECAY + 10)] == [FINAL] * 9


def test_the_factory_is_the_function_with_its_arguments_bound():
    for t in range(30):
        assert schedule(t) == cosine_schedule(t, lr=LR, final_lr=FINAL, warmup_steps=WARMUP, decay_steps=DECAY)


def test_no_warmup_and_an_empty_decay_phase():
    assert cosine_schedule(0, 1.0, 0.1, 0, 10) == 1.0
    assert cosine_schedule(5, 1.0, 0.1, 5, 5) == 1.0
    assert cosine_schedule(6, 1.0, 0.1, 5, 5) == 0.1


@pytest.mark.parametrize("args", [(-1.0, 0.1, 0, 10), (1.0, -0.1, 0, 10), (1.0, 0.1, -1, 10), (1.0, 0.1, 11, 10)])
def test_the_factory_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="warmup_cosine"):
        warmup_cosine(*args)


def test_the_first_update_uses_step_zero_so_warmup_starts_at_zero():
    transform = scale_by_learning_rate(warmup_cosine(1.0, 0.1, warmup_steps=2, decay_steps=4))
    state = transform.init({"w": torch.ones(1)})
    got = []
    for _ in range(6):
        updates, state = transform.update({"w": torch.ones(1)}, state)
        got.append(-updates["w"].item())
    assert got == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1, 0.1])
