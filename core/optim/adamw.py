"""AdamW (Loshchilov & Hutter) as a chain of three transformations, as optax builds it:

    adamw(lr, b1, b2, eps, wd, mask) = chain(scale_by_adam(b1, b2, eps),
                                             add_decayed_weights(wd, mask),
                                             scale_by_learning_rate(lr))

With u_t = m^_t / (sqrt(v^_t) + eps) the Adam direction (core/optim/adam.py), alpha the learning
rate and lambda the weight decay, one step followed by `apply_updates` is

    theta_t = theta_{t-1} - alpha (u_t + lambda theta_{t-1}) = (1 - alpha lambda) theta_{t-1} - alpha u_t,

which is torch.optim.AdamW's update (tests check the two agree over many steps, to float32 rounding).

How this differs from the handout's Algorithm 1, which does, with b_k,t = 1 - beta_k^t,

    alpha_t = alpha sqrt(b_2,t) / b_1,t
    theta'  = theta_{t-1} - alpha_t m_t / (sqrt(v_t) + eps_H)
    theta_t = theta' - alpha lambda theta'

1. Where eps sits. alpha_t m_t / (sqrt(v_t) + eps_H) = alpha m^_t / (sqrt(v^_t) + eps_H / sqrt(b_2,t)),
   so the handout's Adam step equals alpha u_t computed with eps = eps_H / sqrt(b_2,t). Put the
   other way: ours with eps is the handout with eps_H = eps sqrt(1 - beta2^t), a step-dependent
   eps that is smaller early on (by sqrt(1 - 0.999) ~ 1/31.6 at t = 1 for beta2 = 0.999) and tends
   to eps. With eps = 0 the two Adam steps are the same.
2. What the decay multiplies. The handout decays theta', the parameter after the Adam step; we
   decay theta_{t-1}, the parameter before it (as torch does). From the same theta_{t-1}, m and v
   (and eps matched as in 1.), theta_t(handout) = (1 - alpha lambda)(theta_{t-1} - alpha u_t), so

       theta_t(handout) - theta_t(ours) = alpha^2 lambda u_t,

   a term second order in alpha. Equivalently, ours is Algorithm 1 with its two parameter updates
   swapped: decay first, then the Adam step (which does not depend on theta). Over a run with the
   same gradients the gap d_t = theta_t(handout) - theta_t(ours) follows
   d_t = (1 - alpha lambda) d_{t-1} + alpha^2 lambda u_t.

Both relations are tested in float64 against Algorithm 1 written out literally (tests/test_optimizer.py).
"""

from core.optim.adam import scale_by_adam
from core.optim.base import GradientTransformation, chain
from core.optim.foreach import Scalar
from core.optim.learning_rate import Schedule, scale_by_learning_rate
from core.optim.weight_decay import Mask, add_decayed_weights


def adamw(
    learning_rate: Scalar | Schedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.01,
    mask: Mask | None = None,
) -> GradientTransformation:
    """AdamW; the state is (ScaleByAdamState, EmptyState, ScaleByLearningRateState). A mask limits
    the decay to some leaves (`decay_matrices` spares the 1-D RMSNorm gains). Each hyperparameter
    may be a (K,) tensor, one value per stacked variant (core/optim/foreach.py): variant k is then
    updated as adamw with variant k's numbers would update it alone."""
    return chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
