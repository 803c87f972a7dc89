"""The full Nesterov optimizer: learning rate, weight decay and both forms."""

import jax
import optax

from nag_optax import _nesterov
from nag_optax import _validation


def nesterov(
  learning_rate: optax.ScalarOrSchedule,
  momentum: optax.ScalarOrSchedule = 0.9,
  *,
  dampening: jax.typing.ArrayLike = 0.0,
  weight_decay: jax.typing.ArrayLike = 0.0,
  decoupled_weight_decay: bool = False,
  weight_decay_mask: optax.MaskOrFn = None,
  form: str = "pytorch",
  accumulator_dtype: jax.typing.DTypeLike | None = None,
  restart: str | None = None,
  restart_every: int | None = None,
  stochastic_rounding: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Stochastic gradient descent with Nesterov momentum, in two exact forms.

  Notation: :math:`p` the stored parameters, :math:`g_t` the gradient at step
  :math:`t` (counted from 0), :math:`\alpha_t` = ``learning_rate``,
  :math:`\lambda` = ``weight_decay``, :math:`\tau` = ``dampening``,
  :math:`\mu_k` = ``momentum`` at the momentum count :math:`k` (updates since
  the start or the last restart; equal to :math:`t` without restarts), and
  :math:`\delta_k = 1 - \tau [k > 0]`. Coupled weight decay first sets
  :math:`g_t \leftarrow g_t + \lambda p`.

  ``form="pytorch"`` (learning rate outside the buffer; exactly
  ``torch.optim.SGD(nesterov=True)``, and ``optax.sgd(lr, momentum,
  nesterov=True)`` when there is no weight decay):

  .. math::

    m_{k+1} = \mu_k m_k + \delta_k g_t, \qquad
    p \leftarrow p - \alpha_t (g_t + \mu_{k+1} m_{k+1})

  ``form="sutskever"`` (learning rate inside the velocity; Sutskever et al.
  2013, Keras 3 and TF2 ``SGD(nesterov=True)``):

  .. math::

    v_{k+1} = \mu_k v_k - \alpha_t \delta_k g_t, \qquad
    p \leftarrow p + \mu_{k+1} v_{k+1} - \alpha_t g_t

  With ``decoupled_weight_decay=True`` (SGDW) the update also subtracts
  :math:`\alpha_t \lambda p` instead, and ``weight_decay_mask`` selects the
  leaves decay applies to, in both modes.

  Both forms store the look-ahead point :math:`\Theta_t = \theta_t + \mu_t
  v_t` of textbook NAG, :math:`v_{t+1} = \mu_t v_t - \alpha_t \nabla
  f(\Theta_t)`, :math:`\theta_{t+1} = \theta_t + v_{t+1}`; recover
  :math:`\theta_t` with :func:`nag_optax.nesterov_eval_params`. The
  "sutskever" form is exact NAG under any learning-rate schedule; the
  "pytorch" form rescales past velocity by today's learning rate and is exact
  only for a constant one.

  **Momentum schedules.** The buffer uses :math:`\mu_k` and the look-ahead
  :math:`\mu_{k+1}`, which is exact time-varying NAG: :math:`\Theta_{t+1} =
  \Theta_t + \mu_{t+1}\mu_t v_t - (1 + \mu_{t+1}) \alpha_t \nabla
  f(\Theta_t)`. optax, PyTorch and Keras use the same :math:`\mu_t` in both
  places. A momentum injected through ``optax.inject_hyperparams`` is a
  constant to this function at each step, so it too is used in both places.

  **Adaptive restart** (O'Donoghue and Candes 2015). ``restart="gradient"``
  restarts when the step just taken by :math:`\theta` goes uphill for the
  gradient that produced it; ``restart="function"`` when the loss passed as
  ``update(..., value=loss)`` exceeds the previous one (both losses are taken
  where the gradients were, at the stored parameters); ``restart_every=K``
  restarts every K momentum steps. A restart keeps the gradient step, zeroes
  the momentum and sends the momentum schedule back to count 0;
  ``state.restarts`` counts them.

  **Precision.** Arithmetic runs in float32 (or the gradient's dtype if
  wider) and hyperparameters are never stored narrower than float32; updates
  come out in the gradient's dtype and the buffer in ``accumulator_dtype``
  (default: the params'). With a bfloat16/float16 buffer,
  ``stochastic_rounding=True`` rounds it stochastically so that a momentum of
  0.999 still reaches its steady state.

  **Complex parameters** are supported: the rule is linear in the gradient
  and in :math:`p`, and the gradient restart tests the real part of the
  conjugated inner product, so a complex parameter moves exactly as the pair
  of its real and imaginary parts would. As for any optax optimizer, pass the
  conjugate of ``jax.grad``'s gradient. A complex buffer has the precision
  of ``accumulator_dtype`` (float32: complex64); there is no complex
  bfloat16.

  The state is a :class:`nag_optax.NesterovState` (the same class as
  :class:`nag_optax.ScaleByNesterovState`, with ``lookahead_includes_lr``
  True), the same with and without weight decay and under
  ``optax.inject_hyperparams``.

  Args:
    learning_rate: a non-negative float or an optax schedule of the step.
    momentum: momentum in [0, 1) or a schedule of the momentum count (see
      :mod:`nag_optax.momentum_schedules`).
    dampening: PyTorch's dampening in [0, 1); the first gradient after the
      start or a restart enters undamped.
    weight_decay: non-negative decay coefficient :math:`\lambda`.
    decoupled_weight_decay: False for coupled L2 (PyTorch, follows the
      learning-rate schedule through the gradient), True for SGDW.
    weight_decay_mask: which leaves decay: a tree of booleans like the
      params, a prefix of it (``{"encoder": True, "decoder": False}`` over
      nested params), or a callable of the params returning either; None
      decays every leaf. With ``optax.inject_hyperparams`` pass a callable
      mask as a static argument.
    form: "pytorch" or "sutskever".
    accumulator_dtype: float dtype of the momentum buffer; None uses the
      params'.
    restart: None, "gradient" or "function".
    restart_every: restart every this many momentum steps (None: never).
    stochastic_rounding: round a buffer narrower than float32 stochastically.
    seed: seed of the stochastic rounding.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`nag_optax.NesterovState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.nesterov(0.1, momentum=0.9, weight_decay=1e-4)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params["w"]  # 1 - 0.1 * (1 + 0.9) * (2 + 1e-4): gradient plus look-ahead
    Array([0.61998105, 0.61998105, 0.61998105], dtype=float32)

  References:
    Nesterov, A method of solving a convex programming problem with
    convergence rate O(1/k^2), 1983.

    Sutskever et al., On the importance of initialization and momentum in deep
    learning, 2013, https://proceedings.mlr.press/v28/sutskever13.html

    Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019,
    https://arxiv.org/abs/1711.05101

    O'Donoghue and Candes, Adaptive Restart for Accelerated Gradient Schemes,
    2015, https://arxiv.org/abs/1204.3982
  """
  _validation.check_learning_rate("nesterov", learning_rate)
  return _nesterov.nesterov_transform(
    learning_rate=learning_rate,
    momentum=momentum,
    dampening=dampening,
    weight_decay=weight_decay,
    decoupled_weight_decay=decoupled_weight_decay,
    weight_decay_mask=weight_decay_mask,
    form=form,
    accumulator_dtype=accumulator_dtype,
    restart=restart,
    restart_every=restart_every,
    stochastic_rounding=stochastic_rounding,
    seed=seed,
  )
