"""AdamW (adamw.py) for K stacked variants, each with its own schedule, betas, eps and decay:

    stacked_adamw(schedule, b1, b2, eps, wd, mask) = chain(stacked_scale_by_adam(b1, b2, eps),
                                                           stacked_add_decayed_weights(wd, mask),
                                                           stacked_scale_by_learning_rate(schedule))

Its state has the structure of `adamw`'s, moments stacked: `unstack_tree(state, k)`
(core/stack.py) is the state `adamw(schedule_k, b1[k], b2[k], eps[k], wd[k], mask)` would hold, so
a variant's checkpoint is an ordinary one, and K ordinary states stack into this one.
"""

from core.optim.base import GradientTransformation, chain
from core.optim.stacked import VariantValues
from core.optim.stacked_adam import stacked_scale_by_adam
from core.optim.stacked_learning_rate import StackedSchedule, stacked_scale_by_learning_rate
from core.optim.stacked_weight_decay import stacked_add_decayed_weights
from core.optim.weight_decay import Mask


def stacked_adamw(
    learning_rate: VariantValues | StackedSchedule,
    b1: VariantValues,
    b2: VariantValues,
    eps: VariantValues,
    weight_decay: VariantValues,
    mask: Mask | None = None,
) -> GradientTransformation:
    return chain(
        stacked_scale_by_adam(b1, b2, eps),
        stacked_add_decayed_weights(weight_decay, mask),
        stacked_scale_by_learning_rate(learning_rate),
    )
