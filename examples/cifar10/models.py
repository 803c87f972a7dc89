"""Networks for the CIFAR-10 example (Flax linen modules only).

`Airbench94` is the network of Jordan's airbench94 (about 1.97M parameters
at the default widths): a frozen 2x2 patch-whitening convolution, three
conv-pool-BatchNorm groups and a linear head. `ResNet18` is the usual CIFAR
ResNet-18 (3x3 stem, no max-pool, 11.2M parameters) for users who want a
standard network. Both are channels-last (NHWC) and take normalised images.

References:
  Jordan, 94% on CIFAR-10 in 3.29 Seconds on a Single GPU, 2024,
  https://arxiv.org/abs/2404.00498

  He et al., Deep Residual Learning for Image Recognition, 2016,
  https://arxiv.org/abs/1512.03385
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WHITEN_KERNEL = 2  # The whitening convolution's kernel size.
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # Eigenvectors of 12-dim patches and negations.


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


class ConvGroup(nn.Module):
  """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU."""

  width: int
  bn_momentum: float
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=1e-12,
      use_scale=False,  # airbench: weight fixed at 1, bias trained.
      use_fast_variance=False,  # E[(x-m)^2]: eps 1e-12 leaves no slack.
      dtype=jnp.float32,  # statistics and normalisation in float32.
      axis_name=self.axis_name,
    )
    conv = functools.partial(
      nn.Conv,
      kernel_size=(3, 3),
      padding="SAME",
      use_bias=False,
      kernel_init=dirac_init,
      dtype=self.dtype,
    )
    x = conv(self.width, name="conv1")(x)
    x = max_pool2(x)
    x = gelu(norm(name="norm1")(x).astype(self.dtype))
    x = conv(self.width, name="conv2")(x)
    x = gelu(norm(name="norm2")(x).astype(self.dtype))
    return x


class Airbench94(nn.Module):
  """airbench94's network: whitening conv, three conv groups, linear head.

  The whitening kernel (`whiten/kernel`) is set from the data by
  `whitening_kernel` and never trained; its bias trains for the first epochs
  only (the optimizer handles both, see train.py).

  Attributes:
    widths: channels of the three groups (airbench94: 64, 256, 256).
    bn_momentum: Flax BatchNorm momentum, the weight on the old running
      value (airbench's PyTorch momentum 0.4 -> 0.6 here).
    scaling_factor: the logits' scale (airbench: 1/9).
    num_classes: output classes.
    dtype: compute dtype of the convolutions (float32 or bfloat16);
      parameters and BatchNorm stay float32.
    axis_name: pmap axis name for cross-device BatchNorm statistics (None
      under jit, where the compiler reduces over the global batch).
  """

  widths: Sequence[int] = (64, 256, 256)
  bn_momentum: float = 0.6
  scaling_factor: float = 1 / 9
  num_classes: int = 10
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True, whiten_bias_trainable: bool = True):
    """Logits; `whiten_bias_trainable=False` stops the gradient below group 1.

    The whitening kernel never gets a gradient (it is set from the data);
    once its bias is frozen nothing below the first conv group trains, and
    stopping the gradient there skips that work in the backward pass (as
    PyTorch's autograd does for airbench's `requires_grad=False`).
    """
    x = x.astype(self.dtype)
    x = _WhiteningConv(name="whiten", dtype=self.dtype)(x)
    x = gelu(x)
    if not whiten_bias_trainable:
      x = jax.lax.stop_gradient(x)
    for i, width in enumerate(self.widths):
      x = ConvGroup(
        width, self.bn_momentum, self.dtype, self.axis_name, name=f"group{i + 1}"
      )(x, train)
    x = jnp.max(x, axis=(1, 2))  # MaxPool2d(3) of the 3x3 map, then flatten.
    x = nn.Dense(
      self.num_classes,
      use_bias=False,
      kernel_init=torch_uniform_init,
      dtype=self.dtype,
      name="head",
    )(x)
    return x.astype(jnp.float32) * self.scaling_factor


class _WhiteningConv(nn.Module):
  """The 2x2 "VALID" whitening conv; its kernel gets no gradient."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = (WHITEN_KERNEL, WHITEN_KERNEL, x.shape[-1], WHITEN_WIDTH)
    kernel = self.param("kernel", torch_uniform_init, shape)
    bias = self.param("bias", nn.initializers.zeros_init(), (WHITEN_WIDTH,))
    kernel = jax.lax.stop_gradient(kernel).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias.astype(self.dtype)


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
    The (2, 2, 3, 24) float32 kernel for `whiten/kernel`.
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


class BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 convs with BN, identity or 1x1 shortcut."""

  width: int
  strides: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=jnp.float32,
      axis_name=self.axis_name,
    )
    conv = functools.partial(
      nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_uniform_init
    )
    y = conv(self.width, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="norm1")(y)).astype(self.dtype)
    y = conv(self.width, (3, 3), padding=1, name="conv2")(y)
    y = norm(name="norm2")(y)
    if self.strides != 1 or x.shape[-1] != self.width:
      x = conv(self.width, (1, 1), self.strides, name="shortcut_conv")(x)
      x = norm(name="shortcut_norm")(x)
    return nn.relu(y + x).astype(self.dtype)


class ResNet18(nn.Module):
  """CIFAR ResNet-18: 3x3 stem, four stages of two basic blocks, linear head."""

  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.astype(self.dtype)
    x = nn.Conv(
      self.widths[0],
      (3, 3),
      padding=1,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=torch_uniform_init,
      name="stem_conv",
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=jnp.float32,
      axis_name=self.axis_name,
      name="stem_norm",
    )(x)
    x = nn.relu(x).astype(self.dtype)
    for stage, width in enumerate(self.widths):
      for block in range(2):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(
          width, strides, self.dtype, self.axis_name, name=f"stage{stage + 1}_{block}"
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


def create_model(config) -> nn.Module:
  """The network named by `config.model` ("airbench94" or "resnet18")."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.compute_dtype]
  if config.model == "airbench94":
    return Airbench94(
      widths=tuple(config.widths),
      bn_momentum=config.bn_momentum,
      scaling_factor=config.scaling_factor,
      dtype=dtype,
    )
  if config.model == "resnet18":
    return ResNet18(dtype=dtype)
  raise ValueError(
    f"config.model must be 'airbench94' or 'resnet18', got {config.model!r}"
  )


def param_count(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
