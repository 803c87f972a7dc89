"""nag_optax: exact Nesterov-accelerated optimisation for JAX, as optax transforms."""

from nag_optax import momentum_schedules
from nag_optax import parallel
from nag_optax._accumulation import AccumulateGradients
from nag_optax._accumulation import AccumulateGradientsState
from nag_optax._accumulation import accumulate_gradients
from nag_optax._accumulation import accumulation_emitted
from nag_optax._accumulation import accumulation_gradient_step
from nag_optax._adan import ScaleByAdanState
from nag_optax._adan import adan
from nag_optax._adan import scale_by_adan
from nag_optax._alias import nesterov
from nag_optax._eval_params import nesterov_eval_params
from nag_optax._nadam import ScaleByNadamState
from nag_optax._nadam import nadam
from nag_optax._nadam import scale_by_nadam
from nag_optax._nesterov import NesterovState
from nag_optax._nesterov import ScaleByNesterovState
from nag_optax._nesterov import scale_by_nesterov

__version__ = "0.1.0"

__all__ = (
  "AccumulateGradients",
  "AccumulateGradientsState",
  "NesterovState",
  "ScaleByAdanState",
  "ScaleByNadamState",
  "ScaleByNesterovState",
  "accumulate_gradients",
  "accumulation_emitted",
  "accumulation_gradient_step",
  "adan",
  "momentum_schedules",
  "nadam",
  "nesterov",
  "nesterov_eval_params",
  "parallel",
  "scale_by_adan",
  "scale_by_nadam",
  "scale_by_nesterov",
)
