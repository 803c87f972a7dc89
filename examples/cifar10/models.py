"""airbench94's network as a Flax NNX module.

`Airbench94` (about 1.97M parameters at the default widths): a frozen 2x2
patch-whitening convolution, three conv-pool-BatchNorm groups and a linear
head, channels-last (NHWC), on normalised images.

References:
  Jordan, 94% on CIFAR-10 in 3.29 Seconds on a Single GPU, 2024,
  https://arxiv.org/abs/2404.00498
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

WHITEN_KERNEL = 2  # The whitening convolution's kernel size.
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # Eigenvectors of 12-dim patches and negations.


class Whitening(nnx.Variable):
  """The whitening filters: set from the data (`whitening_kernel`), never
  trained. A variable type of its own, so `nnx.split(model, nnx.Param, ...)`
  keeps them out of the trained parameters."""


def torch_uniform_init(key, shape, dtype=jnp.float32):
  """PyTorch's default conv/linear init, U(+-1/sqrt(fan_in)) (HWIO or IO)."""
  fan_in = math.prod(shape[:-1])
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def dirac_init(key, shape, dtype=jnp.float32):
  """`torch_uniform_init`, then the first `in_channels` filters the identity.

  As airbench's `Conv.reset_parameters` (`torch.nn.init.dirac_` on the first
  `in_channels` output filters): the convolution starts out passing its input
  through, plus random extra channels.
  """
  kernel = torch_uniform_init(key, shape, dtype)
  kh, kw, cin, cout = shape
  n = min(cin, cout)
  identity = jnp.zeros((kh, kw, cin, n), dtype)
  identity = identity.at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1)
  return kernel.at[..., :n].set(identity)


def max_pool2(x):
  """2x2 max-pool, stride 2, floor mode, as a reshape (cheaper to differentiate
  on CPU than reduce_window's select-and-scatter)."""
  b, h, w, c = x.shape
  h, w = h // 2, w // 2
  x = x[:, : 2 * h, : 2 * w].reshape(b, h, 2, w, 2, c)
  return jnp.max(x, axis=(2, 4))


def gelu(x):
  """GELU in its exact (erf) form, as PyTorch's `nn.GELU()`."""
  return jax.nn.gelu(x, approximate=False)


class ConvGroup(nnx.Module):
  """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU."""

  def __init__(self, in_features, width, *, bn_momentum, dtype, axis_name, rngs):
    def conv(cin):
      return nnx.Conv(
        cin,
        width,
        (3, 3),
        padding="SAME",
        use_bias=False,
        kernel_init=dirac_init,
        dtype=dtype,
        rngs=rngs,
      )

    def norm():
      return nnx.BatchNorm(
        width,
        momentum=bn_momentum,
        epsilon=1e-12,
        use_scale=False,  # airbench: weight fixed at 1, bias trained.
        use_fast_variance=False,  # E[(x-m)^2]: eps 1e-12 leaves no slack.
        dtype=jnp.float32,  # statistics and normalisation in float32.
        axis_name=axis_name,
        rngs=rngs,
      )

    self.dtype = dtype
    self.conv1, self.norm1 = conv(in_features), norm()
    self.conv2, self.norm2 = conv(width), norm()

  def __call__(self, x, *, train: bool):
    x = max_pool2(self.conv1(x))
    x = gelu(self.norm1(x, use_running_average=not train).astype(self.dtype))
    x = self.conv2(x)
    return gelu(self.norm2(x, use_running_average=not train).astype(self.dtype))


class Airbench94(nnx.Module):
  """airbench94's network: whitening conv, three conv groups, linear head.

  The whitening kernel (a `Whitening` variable) is set from the data by
  `whitening_kernel`; its bias trains for the first epochs only (the
  optimizer's learning rate for it drops to 0, see train.py).

  Args:
    widths: channels of the three groups (airbench94: 64, 256, 256).
    bn_momentum: the BatchNorm momentum, the weight on the old running value
      (airbench's PyTorch momentum 0.4 -> 0.6 here).
    scaling_factor: the logits' scale (airbench: 1/9).
    num_classes: output classes.
    dtype: compute dtype of the convolutions (float32 or bfloat16);
      parameters and BatchNorm stay float32.
    axis_name: the mesh or pmap axis over which BatchNorm averages its
      statistics (None: each device's own batch).
    rngs: the initialisation's random streams.
  """

  def __init__(
    self,
    widths: Sequence[int] = (64, 256, 256),
    *,
    bn_momentum: float = 0.6,
    scaling_factor: float = 1 / 9,
    num_classes: int = 10,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    rngs: nnx.Rngs,
  ):
    shape = (WHITEN_KERNEL, WHITEN_KERNEL, 3, WHITEN_WIDTH)
    self.whiten_kernel = Whitening(torch_uniform_init(rngs.params(), shape))
    self.whiten_bias = nnx.Param(jnp.zeros(WHITEN_WIDTH))
    channels = (WHITEN_WIDTH, *widths)
    self.groups = nnx.List(
      [
        ConvGroup(
          cin,
          cout,
          bn_momentum=bn_momentum,
          dtype=dtype,
          axis_name=axis_name,
          rngs=rngs,
        )
        for cin, cout in zip(channels[:-1], channels[1:], strict=True)
      ]
    )
    self.head = nnx.Linear(
      widths[-1],
      num_classes,
      use_bias=False,
      kernel_init=torch_uniform_init,
      dtype=dtype,
      rngs=rngs,
    )
    self.scaling_factor = scaling_factor
    self.dtype = dtype

  def __call__(self, x, *, train: bool, whiten_bias_trainable: bool = True):
    """Logits; `whiten_bias_trainable=False` stops the gradient below group 1.

    Once the whitening bias is frozen nothing below the first conv group
    trains, and stopping the gradient there skips that work in the backward
    pass (as PyTorch's autograd does for airbench's `requires_grad=False`).
    """
    kernel = jax.lax.stop_gradient(self.whiten_kernel[...]).astype(self.dtype)
    x = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel,
      (1, 1),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = gelu(x + self.whiten_bias[...].astype(self.dtype))
    if not whiten_bias_trainable:
      x = jax.lax.stop_gradient(x)
    for group in self.groups:
      x = group(x, train=train)
    x = jnp.max(x, axis=(1, 2))  # MaxPool2d(3) of the 3x3 map, then flatten.
    return self.head(x).astype(jnp.float32) * self.scaling_factor


def whitening_kernel(images: jax.Array, eps: float = 5e-4) -> jax.Array:
  """airbench's whitening filters from normalised NHWC images.

  The 2x2x3 patches' covariance has eigenvectors e_i and eigenvalues l_i;
  the filters are e_i / sqrt(l_i + eps) (largest eigenvalue first) followed
  by their negations, as an HWIO kernel of shape (2, 2, 3, 24).

  Args:
    images: (N, H, W, 3) normalised images (airbench uses the first 5000
      training images, before augmentation).
    eps: added to the eigenvalues.

  Returns:
    The (2, 2, 3, 24) float32 kernel of `Airbench94.whiten_kernel`.
  """
  x = images.astype(jnp.float32)
  k = WHITEN_KERNEL
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  # Patches flattened in (kh, kw, c) order, the order of an HWIO kernel.
  patches = jnp.stack(
    [x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=3
  ).reshape(-1, k * k * x.shape[-1])
  cov = patches.T @ patches / patches.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(cov)
  eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
  filters = eigenvectors / jnp.sqrt(eigenvalues + eps)  # columns are filters
  kernel = filters.reshape(k, k, x.shape[-1], -1)
  return jnp.concatenate([kernel, -kernel], axis=-1)


def create_model(config, *, axis_name: str | None = None, seed: int = 0) -> Airbench94:
  """The network of `config` (widths, BatchNorm momentum, compute dtype)."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.compute_dtype]
  return Airbench94(
    tuple(config.widths),
    bn_momentum=config.bn_momentum,
    scaling_factor=config.scaling_factor,
    dtype=dtype,
    axis_name=axis_name,
    rngs=nnx.Rngs(seed),
  )


def param_count(params) -> int:
  return int(sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params)))
