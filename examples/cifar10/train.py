"""airbench94 on CIFAR-10 with nag_optax.nesterov, in Flax NNX.

Read top to bottom: the optimizer (`create_optimizer`), the pure functions
(`loss_fn`, per device; `eval_step`; `ema_reset`), the distributed, compiled
pieces built from a config and a mesh (`create_train_step`,
`create_eval_step`), then the loop (`train_and_evaluate`). Before any of
it runs, `validate_config` checks the configuration.

`nag_optax.parallel.jit_data_parallel` writes the training step from
`loss_fn`: the batch split across the devices, each device's slice split
into `accum_steps` micro-batches inside the one compiled step, the gradient
averaged across devices in float32 once per optimizer step, the state
replicated (or the optimizer state split, ZeRO-1). BatchNorm averages its
statistics over the mesh axis: over the global (micro-)batch, as on one
device.
"""

import ast
import contextlib
import difflib
import functools
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import input_pipeline
import jax
import jax.numpy as jnp
import metrics as metrics_lib
import ml_collections
import models
import numpy as np
import optax
import orbax.checkpoint as ocp
import progress as progress_lib
from configs import default as default_config
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import nag_optax
from nag_optax import parallel

# --------------------------------------------------------------------------
# The configuration, checked before anything runs.


class ConfigError(ValueError):
  """An invalid configuration: `problems` holds one line per problem, each
  `<field>: <what is wrong and what to do>`."""

  def __init__(self, problems):
    self.problems = list(problems)
    super().__init__("\n".join(self.problems))


class WorkdirError(RuntimeError):
  """The run cannot write to its workdir: a folder or a checkpoint (the
  message names the path and says what to do)."""


class Interrupted(Exception):
  """Training stopped on a signal (SIGINT, SIGTERM) after saving the
  checkpoint of `step`."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    super().__init__(f"signal {signum} at step {step}")


def _is_int(value) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (_is_int(value) or isinstance(value, float | np.floating)) and bool(
    math.isfinite(value)
  )


def _integer(low, high=None):
  def check(value):
    return _is_int(value) and low <= value and (high is None or value <= high)

  if high is not None:
    return check, f"an integer from {low} to {high}"
  return check, "a positive integer" if low == 1 else f"an integer >= {low}"


def _number(low, high=None, *, above=False, below=False):
  def check(value):
    return (
      _is_number(value)
      and (value > low if above else value >= low)
      and (high is None or (value < high if below else value <= high))
    )

  if high is None:
    return check, f"a number {'>' if above else '>='} {low}"
  opening, closing = "(" if above else "[", ")" if below else "]"
  return check, f"a number in {opening}{low}, {high}{closing}"


def _boolean():
  return lambda value: isinstance(value, bool | np.bool_), "True or False"


def _string(nonempty=False):
  def check(value):
    return isinstance(value, str) and bool(value or not nonempty)

  return check, "a non-empty string" if nonempty else "a string"


def _one_of(*choices):
  return lambda value: isinstance(value, str) and value in choices, " or ".join(
    repr(c) for c in choices
  )


def _widths():
  def check(value):
    return (
      isinstance(value, tuple | list)
      and len(value) == 3
      and all(_is_int(w) and w > 0 for w in value)
    )

  return check, "three positive integers, the channels of the conv groups"


# What each field of configs/default.py takes.
_FIELDS = {
  "data_dir": _string(nonempty=True),
  "download": _boolean(),
  "validation_images": _integer(0),
  "train_subset": _integer(0),
  "eval_subset": _integer(0),
  "crop_padding": _integer(0, 32),
  "alternating_flip": _boolean(),
  "widths": _widths(),
  "bn_momentum": _number(0, 1),
  "scaling_factor": _number(0, above=True),
  "compute_dtype": _one_of("float32", "bfloat16"),
  "whiten_images": _integer(1),
  "whiten_eps": _number(0, above=True),
  "batch_size": _integer(1),
  "num_epochs": _number(0, above=True),
  "learning_rate": _number(0),
  "momentum": _number(0, 1, below=True),
  "weight_decay": _number(0),
  "bias_scaler": _number(0, above=True),
  "warmup_fraction": _number(0, 1),
  "warmup_from": _number(0),
  "final_lr_factor": _number(0),
  "label_smoothing": _number(0, 1),
  "whiten_bias_epochs": _number(0),
  "ema_every": _integer(0),
  "ema_decay": _number(0, 1),
  "accum_steps": _integer(1),
  "num_devices": _integer(0),
  "zero1": _boolean(),
  "cpu_devices": _integer(0),
  "xla_flags": _string(),
  "tta_level": (
    lambda value: _is_int(value) and value in (0, 1, 2),
    "0 (one view), 1 (mirror) or 2 (mirror and shifts)",
  ),
  "eval_batch_size": _integer(1),
  "eval_every_epochs": _integer(0),
  "seed": _integer(0, 2**32 - 1),
  "deterministic": _boolean(),
  "checkpoint_every_steps": _integer(0),
  "checkpoint_every_seconds": _number(0),
  "checkpoints_to_keep": _integer(1),
  "stop_after_steps": _integer(0),
  "progress_every_seconds": _number(0, above=True),
  "plot": _boolean(),
  "tensorboard": _boolean(),
}


def _multiples(value: int, of: int) -> str:
  """The multiples of `of` nearest to `value`, as advice."""
  below, above = value // of * of, (value // of + 1) * of
  return f"{below} or {above}" if below else f"{above}"


def validate_config(config, num_devices: int | None = None) -> list[str]:
  """Every problem of `config`, one line each: `<field>: <what to do>`.

  Checks that each field of configs/default.py is there with a value of its
  type and range, that no field is unknown (a misspelling), that the
  packages of `plot` and `tensorboard` are installed and, given
  `num_devices` (the devices JAX has, `len(jax.devices())`), that
  `num_devices` fits and both batch sizes divide over the devices used
  (`batch_size` into `accum_steps` micro-batches each). What depends on the
  data (the batch against the number of training images) is checked by
  `train_and_evaluate` once the data is read.

  Returns:
    The problems; [] when the configuration is valid.
  """
  defaults = default_config.get_config()
  problems = []
  valid = {}
  for name, (check, requirement) in _FIELDS.items():
    if name not in config:
      problems.append(
        f"{name}: missing; add it (configs/default.py has {defaults[name]!r})"
      )
    elif not check(config[name]):
      problems.append(
        f"{name}: {config[name]!r} is not {requirement}; set --config.{name} "
        f"(configs/default.py has {defaults[name]!r})"
      )
    else:
      valid[name] = config[name]
  for name in config:
    if name not in _FIELDS:
      close = difflib.get_close_matches(name, list(_FIELDS), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      problems.append(f"{name}: unknown field{hint}; remove it or correct its name")
  packages = (("plot", "matplotlib"), ("tensorboard", "tensorboardX"))
  for name, package in packages:
    if valid.get(name) and importlib.util.find_spec(package) is None:
      problems.append(
        f"{name}: needs {package}: pip install {package}, or set --config.{name}=False"
      )
  if num_devices is None or "num_devices" not in valid:
    return problems
  if valid["num_devices"] > num_devices:
    problems.append(
      f"num_devices: {valid['num_devices']} but JAX has {num_devices} devices; set "
      f"--config.num_devices to at most {num_devices} (0: all of them)"
    )
    return problems
  devices = valid["num_devices"] or num_devices
  if "batch_size" in valid and "accum_steps" in valid:
    per_step = devices * valid["accum_steps"]
    if valid["batch_size"] % per_step:
      problems.append(
        f"batch_size: {valid['batch_size']} does not split over {devices} devices "
        f"x accum_steps {valid['accum_steps']}; set --config.batch_size to a "
        f"multiple of {per_step}: {_multiples(valid['batch_size'], per_step)}"
      )
  if "eval_batch_size" in valid and valid["eval_batch_size"] % devices:
    problems.append(
      f"eval_batch_size: {valid['eval_batch_size']} does not split over "
      f"{devices} devices; set --config.eval_batch_size to a multiple of "
      f"{devices}: {_multiples(valid['eval_batch_size'], devices)}"
    )
  return problems


# --------------------------------------------------------------------------
# The optimizer (built in this one place).


def _lr_knots(total_steps: int, config) -> tuple[list, list]:
  """The schedule's corners: (steps, factors) to interpolate between."""
  warmup = max(int(total_steps * config.warmup_fraction), 1)
  steps = [0.0, warmup, max(total_steps, warmup + 1)]
  return steps, [config.warmup_from, 1.0, config.final_lr_factor]


def lr_factor(step, total_steps: int, config) -> jax.Array:
  """airbench's schedule: linear warm-up_from -> 1 over warmup_fraction of
  the steps, then linear to final_lr_factor at the last step."""
  steps, factors = _lr_knots(total_steps, config)
  return jnp.interp(
    jnp.asarray(step, jnp.float32),
    jnp.array(steps, jnp.float32),
    jnp.array(factors, jnp.float32),
  )


def per_step_hyperparameters(config) -> tuple[float, float]:
  """airbench's per-1024-example lr and weight decay -> per-step values.

  Both are divided by 1024 * (1 + 1 / (1 - momentum)), the steady-state gain
  of Nesterov momentum; the loss is summed over the batch, so the step size
  per example does not depend on the batch size.
  """
  kilostep_scale = 1024 * (1 + 1 / (1 - config.momentum))
  lr = config.learning_rate / kilostep_scale
  wd = config.weight_decay * config.batch_size / kilostep_scale
  return lr, wd


def param_labels(params) -> dict:
  """Optimizer group of each trained parameter: "whiten_bias" (trains for
  whiten_bias_epochs), "bn_bias" (BatchNorm biases, bias_scaler x lr) or
  "other"."""

  def label(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[0] == "whiten_bias":
      return "whiten_bias"
    if names[-2].startswith("norm") and names[-1] == "bias":
      return "bn_bias"
    return "other"

  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(
  config, total_steps: int, steps_per_epoch: int
) -> optax.GradientTransformation:
  """nag_optax.nesterov in PyTorch form with coupled L2, as airbench94.

  airbench94 uses `torch.optim.SGD(nesterov=True)` with per-group lr and
  `weight_decay = wd / lr`: coupled L2 inside the momentum buffer, so the
  decay per step is `lr_t * wd / lr = wd * factor_t` (it follows the
  schedule). `form="pytorch"` with `decoupled_weight_decay=False` is exactly
  that update. Each group gets its own `nesterov`: BatchNorm biases have
  `bias_scaler` times the lr and `wd / (bias_scaler * lr)` as coefficient
  (the same decay per step); the whitening bias's lr drops to 0 after
  `whiten_bias_epochs` (its update masked, as `requires_grad=False` does).
  Gradient accumulation (`config.accum_steps`) happens inside the training
  step (`create_train_step`): the optimizer sees one gradient per step.
  """
  lr, wd = per_step_hyperparameters(config)
  whiten_bias_steps = config.whiten_bias_epochs * steps_per_epoch

  def group(base_lr, until=None):
    def schedule(step):
      value = base_lr * lr_factor(step, total_steps, config)
      return value if until is None else jnp.where(step < until, value, 0.0)

    return nag_optax.nesterov(
      schedule,
      config.momentum,
      # The coefficient that makes the decay per step lr_t * wd / lr; with
      # lr 0 nothing moves and the decay is 0 too.
      weight_decay=wd / base_lr if base_lr else 0.0,
      decoupled_weight_decay=False,
      form="pytorch",
    )

  tx = optax.multi_transform(
    {
      "other": group(lr),
      "bn_bias": group(lr * config.bias_scaler),
      "whiten_bias": group(lr, until=whiten_bias_steps),
    },
    param_labels,
  )
  return tx


# --------------------------------------------------------------------------
# The steps: pure functions of arrays.


def loss_fn(params, batch, model_state, *, graphdef, config, whiten_bias_trainable):
  """airbench's loss, on one device's slice of one micro-batch.

  airbench's loss is the label-smoothed cross-entropy summed over the
  optimizer step's whole batch. `jit_data_parallel` runs this function per
  device and per micro-batch and averages the gradients over devices and
  micro-batches (a mean over equal slices), so this returns the slice's mean
  loss times `config.batch_size`, the global batch per optimizer step: the
  mean of that over the slices is the sum over the whole batch, whatever the
  number of devices and micro-batches, and the learning rate and weight
  decay keep their per-example meaning (`per_step_hyperparameters`).
  BatchNorm takes its statistics over the micro-batch on all devices (the
  model's `axis_name`).

  Returns:
    `(loss, (model_state, metrics))`: the new BatchNorm statistics, and the
    slice's mean loss and accuracy.
  """
  model = nnx.merge(graphdef, params, model_state)
  images, labels = batch
  logits = model(images, train=True, whiten_bias_trainable=whiten_bias_trainable)
  targets = optax.smooth_labels(
    jax.nn.one_hot(labels, logits.shape[-1]), config.label_smoothing
  )
  losses = optax.softmax_cross_entropy(logits, targets)
  metrics = {
    "train_loss": jnp.mean(losses),
    "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
  }
  _, _, model_state = nnx.split(model, nnx.Param, ...)
  return config.batch_size * jnp.mean(losses), (nnx.as_pure(model_state), metrics)


def eval_step(params, model_state, images, *, graphdef, tta_level: int):
  """Predicted classes for normalised images: (one view, test-time augmented).

  tta_level 0: one view (both equal); 1: the image and its mirror; 2: half
  that plus half the mean over the two 1-pixel (reflect-padded) diagonal
  shifts of their mirror averages (airbench's 6 views). The plain view is
  one of the TTA views, so one call gives both.
  """
  model = nnx.merge(graphdef, params, model_state)
  net = functools.partial(model, train=False)
  plain = net(images)
  tta = plain
  if tta_level >= 1:
    tta = mirror = 0.5 * plain + 0.5 * net(images[:, :, ::-1])
  if tta_level >= 2:
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    shifted = 0.0
    for x in (padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]):
      shifted = shifted + 0.25 * (net(x) + net(x[:, :, ::-1]))
    tta = 0.5 * mirror + 0.5 * shifted
  return jnp.argmax(plain, -1), jnp.argmax(tta, -1)


def ema_reset(ema, state, decay):
  """airbench's weight averaging ("lookahead" there): an exponential moving
  average of the weights and BatchNorm statistics, copied back into the
  network: ema <- decay * ema + (1 - decay) * net; net <- ema. The momentum
  buffers are left alone."""
  net = (state.params, state.model_state)
  ema = jax.tree.map(lambda e, n: e + (1 - decay) * (n - e), ema, net)
  return ema, state._replace(params=ema[0], model_state=ema[1])


def ema_decay(config, step: int, total_steps: int) -> float:
  """airbench's decay: ema_decay^ema_every * (step / total)^3; 1 at the end."""
  if step == total_steps:
    return 0.0
  return config.ema_decay**config.ema_every * (step / total_steps) ** 3


# --------------------------------------------------------------------------
# The distributed, compiled functions: built from a config and a mesh, with
# neither data nor devices touched, so that the same code trains and
# compiles ahead of time for other devices (a mesh of compile-only TPU or
# GPU devices, abstract inputs).


def create_train_step(
  config, mesh: jax.sharding.Mesh, total_steps: int, steps_per_epoch: int
) -> tuple[parallel.DataParallel, nnx.GraphDef, nnx.State, nnx.State]:
  """The training step of `config` on `mesh`, and the model it trains.

  `dp.step(state, batch, whiten_bias_trainable=...)` is one optimizer step
  on a global batch of `config.batch_size` images sharded over the mesh's
  one axis (`dp.shard_batch`, or an array with `parallel.batch_sharding`):
  each device splits its slice into `config.accum_steps` micro-batches and
  takes the gradient of `loss_fn` on each, then the gradients are averaged
  across devices in float32, once, and `create_optimizer`'s update applied.
  Each value of `whiten_bias_trainable` compiles once. `dp.init(params,
  model_state)` places the state; `dp.step.lower(dp.abstract_state(params,
  model_state), batch_shapes, whiten_bias_trainable=...)` lowers the step
  from shapes alone.

  The model is initialised on the default backend, its whitening filters
  random until set from the data (`models.whitening_kernel`).

  Returns:
    `(dp, graphdef, params, model_state)`: the `parallel.DataParallel`, the
    model's graph, and its initial parameters and non-trained state.

  Raises:
    ValueError: if `config.batch_size` is not a multiple of the number of
      devices times `config.accum_steps`.
  """
  (axis_name,) = mesh.axis_names
  if config.batch_size % (mesh.size * config.accum_steps):
    raise ValueError(
      f"batch_size {config.batch_size} must be a multiple of the {mesh.size} "
      f"devices times accum_steps {config.accum_steps}"
    )
  model = models.create_model(config, axis_name=axis_name, seed=config.seed)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  dp = parallel.jit_data_parallel(
    functools.partial(loss_fn, graphdef=graphdef, config=config),
    create_optimizer(config, total_steps, steps_per_epoch),
    mesh,
    micro_batches=config.accum_steps,
    zero1=config.zero1,
    has_aux=True,
  )
  return dp, graphdef, nnx.as_pure(params), nnx.as_pure(model_state)


def abstract_train_step(config, mesh: jax.sharding.Mesh, num_train: int = 50_000):
  """`create_train_step` for `num_train` training images, with the shapes of
  its state and of one batch: what compiling ahead of time for other devices
  needs (`dp.step.lower(state, batch, whiten_bias_trainable=...)`).

  Returns:
    `(dp, graphdef, state, batch)`: `state` and `batch` of
    `jax.ShapeDtypeStruct` with the shardings `dp` uses.
  """
  steps_per_epoch = num_train // config.batch_size
  total_steps = math.ceil(steps_per_epoch * config.num_epochs)
  dp, graphdef, params, model_state = create_train_step(
    config, mesh, total_steps, steps_per_epoch
  )
  sharded = parallel.batch_sharding(mesh)
  batch = (
    jax.ShapeDtypeStruct((config.batch_size, 32, 32, 3), jnp.float32, sharding=sharded),
    jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=sharded),
  )
  return dp, graphdef, dp.abstract_state(params, model_state), batch


def create_eval_step(
  config, mesh: jax.sharding.Mesh, graphdef: nnx.GraphDef, tta_level: int
) -> jax.stages.Wrapped:
  """`eval_step` at `tta_level`, jitted over `mesh`.

  `fn(params, model_state, images) -> (plain, tta)` predicted classes:
  `images` (`config.eval_batch_size` of them) split over the mesh's axis,
  the weights and the predictions replicated. `fn.lower(...)` takes
  `jax.ShapeDtypeStruct` inputs.

  Raises:
    ValueError: if `config.eval_batch_size` is not a multiple of the number
      of devices.
  """
  if config.eval_batch_size % mesh.size:
    raise ValueError(
      f"eval_batch_size {config.eval_batch_size} must be a multiple of the "
      f"{mesh.size} devices"
    )
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(
    functools.partial(eval_step, graphdef=graphdef, tta_level=tta_level),
    in_shardings=(replicated, replicated, parallel.batch_sharding(mesh)),
    out_shardings=replicated,
  )


# --------------------------------------------------------------------------
# The loop.


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stop=None
) -> dict:
  """Trains, checkpoints, evaluates; writes metrics.jsonl and results.json.

  Evaluates on the test set, or with `config.validation_images` on that
  many held-out training images (for tuning). Returns the results, plus
  "params" and "model_state" (host NumPy) when training ran to its end, or
  {"stopped_at_step": step} when it stopped early.

  Each step's row of metrics.jsonl is written as soon as its metrics reach
  the host, and all of them before a checkpoint is saved; a resumed run
  drops the rows after its checkpoint. Whatever stops the run (an error,
  Ctrl-C), the checkpoint manager and the metric writer are closed.

  `stop`, if given, is the signal handler's record (main.py): while the
  loop trains, `stop.deferred` is True and a signal only sets
  `stop.signum`; the loop then finishes the step, writes its rows, saves a
  checkpoint and raises `Interrupted`.

  Raises:
    ConfigError: a field of `config` is invalid (`validate_config`), does
      not fit the data, or differs from the one that wrote the workdir's
      checkpoints in a way they cannot be resumed with (RESUME_FIELDS).
    WorkdirError: the workdir, its checkpoints/ or a checkpoint cannot be
      written.
    input_pipeline.DataError: the data is missing or unreadable.
    Interrupted: a signal stopped the training (checkpointed).
  """
  wall_start = time.perf_counter()
  clock = _Clock()
  problems = validate_config(config, len(jax.devices()))
  if problems:
    raise ConfigError(problems)
  created = _check_writable(workdir)
  _check_checkpoints(workdir, config)

  # Until training starts, a run that fails or is interrupted removes the
  # folders it created if they are still empty.
  with _removed_if_empty_on_error(created):
    # ---- Data: on the host, then the padded training set on every device.
    with clock("data"):
      data = _load_data(config)
      devices = _devices(config)
      mesh = parallel.data_mesh(devices)
      replicated = NamedSharding(mesh, PartitionSpec())
      num_train = len(data["train_labels"])
      if config.batch_size > num_train:
        raise ConfigError(
          [
            f"batch_size: {config.batch_size} is more than the {num_train} "
            "training images (after validation_images and train_subset); set "
            f"--config.batch_size to at most {num_train}"
          ]
        )
      steps_per_epoch = num_train // config.batch_size  # drop last, as airbench
      total_steps = math.ceil(steps_per_epoch * config.num_epochs)
      pad = config.crop_padding
      train_images = _place(
        np.pad(
          data["train_images"], ((0, 0), (pad, pad), (pad, pad), (0, 0)), "reflect"
        ),
        replicated,
      )
      train_labels = _place(data["train_labels"], replicated)
    _say(
      f"data: {num_train} training and {len(data['eval_labels'])} evaluation images "
      f"in {clock.totals['data']:.1f} s"
    )
    _raise_if_signalled(stop)

    # ---- Model, optimizer, and the distributed, compiled functions.
    dp, graphdef, params, model_state = create_train_step(
      config, mesh, total_steps, steps_per_epoch
    )
    evaluate = _evaluator(config, mesh, graphdef, data)
    plan_fn = jax.jit(
      functools.partial(
        input_pipeline.epoch_plan,
        num_images=num_train,
        crop_padding=pad,
        alternating=config.alternating_flip,
      ),
      out_shardings=replicated,
    )
    batch_fn = jax.jit(
      functools.partial(input_pipeline.augment_batch, batch=config.batch_size),
      out_shardings=parallel.batch_sharding(mesh),
    )
    ema_fn = jax.jit(ema_reset)
    # Every process computes the same filters on its own first device.
    whiten_fn = jax.jit(
      functools.partial(models.whitening_kernel, eps=config.whiten_eps)
    )
    whiten_images = input_pipeline.normalize(
      data["train_images"][: config.whiten_images]
    )
    whiten_bias_steps = config.whiten_bias_epochs * steps_per_epoch
    data_key = jax.random.key(config.seed)

    def fresh_state():
      """Initial weights, with the whitening filters from the data."""
      model = nnx.merge(graphdef, params, model_state)
      model.whiten_kernel[...] = whiten_fn(whiten_images)
      _, fresh_params, fresh_model_state = nnx.split(model, nnx.Param, ...)
      return dp.init(nnx.as_pure(fresh_params), nnx.as_pure(fresh_model_state))

    def step_fn(state, step, plan):
      """Optimizer step `step` (from 0) on its batch of the epoch's plan."""
      start = (step % steps_per_epoch) * config.batch_size
      trainable = step < whiten_bias_steps
      batch = batch_fn(train_images, train_labels, plan, start)
      return dp.step(state, batch, whiten_bias_trainable=trainable)

    # ---- Compile every function before the clock (airbench's protocol): a
    # throwaway call of each, in both states of the whitening bias.
    _say("compiling the training and evaluation steps ...")
    with clock("compile"):
      warm = fresh_state()
      plan = plan_fn(data_key, 0)
      for step in sorted({0, min(whiten_bias_steps, total_steps - 1)}):
        warm, _ = step_fn(warm, step, plan)
      ema, warm = ema_fn(_copy(warm), warm, 0.5)
      for level in {
        config.tta_level,
        0 if config.eval_every_epochs else config.tta_level,
      }:
        evaluate(warm, level)
      jax.block_until_ready((warm, ema))
      del warm, ema, plan
    _say(f"compiled in {clock.totals['compile']:.1f} s")
    _raise_if_signalled(stop)

  # ---- State: fresh (the whitening init is part of the timed run) or
  # restored from the newest intact checkpoint.
  checkpoints = _Checkpoints(workdir, config, dp, params, model_state)
  writer = progress = None
  try:
    with clock("train"):
      state = fresh_state()
      ema = _copy(state)
    start_step, state, ema, data_key = checkpoints.restore(state, ema, data_key, clock)
    writer = metrics_lib.MetricWriter(
      workdir,
      tensorboard=config.tensorboard,
      resume_step=start_step,
      enabled=jax.process_index() == 0,
    )
    lr0, _ = per_step_hyperparameters(config)
    lr_steps, lr_factors = _lr_knots(total_steps, config)
    stop_at = total_steps
    if config.stop_after_steps:
      stop_at = min(total_steps, start_step + config.stop_after_steps)
    in_flight = []  # (step, metrics) of the steps not yet recorded
    rows = []  # the recorded metrics of this epoch's steps
    progress = progress_lib.Progress(
      total_steps=total_steps,
      steps_per_epoch=steps_per_epoch,
      batch_size=config.batch_size,
      start_step=start_step,
      every_s=config.progress_every_seconds,
      enabled=jax.process_index() == 0,
    )
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    last_save, saved = time.monotonic(), start_step if start_step else None

    def record():
      """Writes the oldest step in flight's row, once its metrics are on the
      host (waiting for that step to finish)."""
      done, metrics = in_flight.pop(0)
      rows.append(_train_metrics(metrics))
      # The learning rate on the host: computed on a device, it would wait
      # for the step queued after this one.
      lr = lr0 * float(np.interp(done - 1, lr_steps, lr_factors))
      writer.write(done, {**rows[-1], "lr": lr})
      progress.update(done, rows[-1]["train_loss"])

    def save(done):
      """Every row up to step `done` on disk, then its checkpoint."""
      nonlocal last_save, saved
      while in_flight:
        record()
      if saved == done:
        return
      jax.block_until_ready(state)
      checkpoints.save(done, state, ema, data_key, clock)
      last_save, saved = time.monotonic(), done

    def stop_if_signalled(done):
      """After a signal (SIGINT, SIGTERM): the checkpoint of step `done`,
      then Interrupted."""
      if stop is not None and stop.signum is not None:
        save(done)
        raise Interrupted(stop.signum, done)

    # ---- Training: epoch by epoch. A signal now only asks the loop to
    # stop after its step (stop_if_signalled).
    if stop is not None:
      stop.deferred = True
    step = start_step
    while step < stop_at:
      epoch = step // steps_per_epoch
      epoch_end = min((epoch + 1) * steps_per_epoch, stop_at)
      trained_before = clock.totals.get("train", 0.0)
      rows.clear()
      with clock("train"):
        plan = plan_fn(data_key, epoch)
        for step in range(step, epoch_end):  # noqa: B020 (step carries on)
          state, metrics = step_fn(state, step, plan)
          in_flight.append((step + 1, metrics))
          if len(in_flight) > 1:
            # Recording the previous step waits for it: the host stays at
            # most one step ahead of the devices. With dozens of steps in
            # flight, an all-reduce of the step deadlocked on two CPU
            # devices (XLA:CPU, jax 0.10.2).
            record()
          done = step + 1
          if config.ema_every and (done % config.ema_every == 0 or done == total_steps):
            ema, state = ema_fn(ema, state, ema_decay(config, done, total_steps))
          every, every_s = (
            config.checkpoint_every_steps,
            config.checkpoint_every_seconds,
          )
          if (every and done % every == 0) or (
            every_s and time.monotonic() - last_save >= every_s
          ):
            save(done)
          stop_if_signalled(done)
        while in_flight:
          record()
        jax.block_until_ready(state)
      step = epoch_end
      seconds = clock.totals["train"] - trained_before
      summary = {k: np.mean([row[k] for row in rows]) for k in rows[0]}
      if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0:
        if step < total_steps:  # the final evaluation comes below
          with clock("eval"):
            summary["eval_accuracy"] = evaluate(state, 0)[0]
          writer.write(step, {"eval_accuracy": summary["eval_accuracy"]})
      eta = progress.eta(step)
      whole = step == total_steps or step == (epoch + 1) * steps_per_epoch
      progress.print(
        f"epoch {epoch + 1}/{num_epochs} {'done' if whole else 'stopped'}  "
        f"step {step}/{total_steps}  "
        + "  ".join(f"{k} {v:.4g}" for k, v in summary.items())
        + f"  {seconds:.1f} s"
        + (f"  ETA {progress_lib.duration(eta)}" if eta and step < total_steps else "")
      )
      stop_if_signalled(step)

    if step == total_steps:
      # ---- The final evaluation with test-time augmentation: part of the
      # timed run, as in airbench.
      with clock("train"):
        accuracy, accuracy_tta = evaluate(state, config.tta_level)
      writer.write(step, {"eval_accuracy": accuracy, "eval_accuracy_tta": accuracy_tta})
    save(step)
    stop_if_signalled(step)
    if stop is not None:
      stop.deferred = False
  except BaseException:
    if stop is not None:
      stop.deferred = False
    if progress is not None:
      progress.close()
    # The error in flight is the one to report: closing after it is best
    # effort (after a failed save, closing the manager fails too).
    for opened in (writer, checkpoints):
      if opened is not None:
        with contextlib.suppress(Exception):
          opened.close()
    raise
  writer.close()
  checkpoints.close()
  if step < total_steps:  # stopped early, checkpointed
    _say(
      f"stopped at step {step} of {total_steps} (stop_after_steps), "
      f"checkpointed in {os.path.join(workdir, 'checkpoints')}; run the same "
      "command again to resume"
    )
    return {"stopped_at_step": step}

  split = "validation" if config.validation_images else "test"
  host = parallel.to_host({"params": state.params, "model_state": state.model_state})
  results = {
    f"{split}_accuracy": accuracy,
    f"{split}_accuracy_tta": accuracy_tta,
    "tta_level": config.tta_level,
    **{f"{k}_seconds": v for k, v in clock.totals.items()},
    "wall_seconds": time.perf_counter() - wall_start,
    "epochs": total_steps / steps_per_epoch,
    "steps": total_steps,
    "params": models.param_count(host["params"]),
    "data_md5": data["md5"],
    "environment": _environment(devices),
    "config": config.to_dict(),
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "results.json")
    _write_json(path, results)
    written = [path]
    if config.plot:
      written.append(metrics_lib.plot(workdir))
    written.append(os.path.join(workdir, "checkpoints", ""))
    _say(
      f"done: {split} accuracy {accuracy:.4f}, with TTA {accuracy_tta:.4f}; "
      f"{results['wall_seconds']:.1f} s ("
      + ", ".join(f"{k} {v:.1f} s" for k, v in clock.totals.items())
      + "); wrote "
      + ", ".join(written)
    )
  return dict(results, **host)


# --------------------------------------------------------------------------
# Helpers of the loop.


def describe_run(
  config, workdir: str, config_file: str | None, overrides=()
) -> list[str]:
  """The run's banner: what it runs, on what, from which data, into which
  folder, fresh or resumed; paths as given. Reads only folder listings:
  printed before the data is read or anything compiled."""
  devices = jax.devices()
  used = config.num_devices or len(devices)
  kinds = sorted({f"{d.platform} ({d.device_kind})" for d in devices[:used]})
  of = f" (of {len(devices)})" if used < len(devices) else ""
  processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
  folder = os.path.join(config.data_dir, input_pipeline.FOLDER)
  archive = os.path.join(config.data_dir, input_pipeline.ARCHIVE)
  if os.path.isdir(folder):
    data = folder
  elif os.path.isfile(archive):
    data = archive
  elif config.download:
    data = (
      f"none in {config.data_dir}: downloads "
      f"{input_pipeline.ARCHIVE} ({input_pipeline.ARCHIVE_SIZE}) from "
      f"{input_pipeline.source_url()}"
    )
  else:
    data = f"none in {config.data_dir} (download off)"
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = []
  if os.path.isdir(checkpoints):
    steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()]
  start = (
    f"resumes from the newest intact checkpoint in {checkpoints} (newest: step "
    f"{max(steps)})"
    if steps
    else "starts fresh (no checkpoint)"
  )
  return [
    "CIFAR-10: airbench94 with nag_optax",
    f"  config:  {config_file or 'given in code'}"
    + (f" with {' '.join(overrides)}" if overrides else ""),
    f"  devices: {used}{of} x {', '.join(kinds)}{processes}",
    f"  data:    {data}",
    f"  workdir: {workdir}",
    f"  run:     {start}",
  ]


def _load_data(config) -> dict:
  """CIFAR-10 (process 0 downloads it if needed, the others wait), the
  validation split and the subsets of `config`; ConfigError if
  `validation_images` leaves no image to train on."""
  if jax.process_index() == 0 and not input_pipeline.has_cifar10(config.data_dir):
    if config.download:
      input_pipeline.download(config.data_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("cifar10 on disk")
  data = input_pipeline.load_cifar10(config.data_dir, download=False)
  available = len(data["train_labels"])
  if config.validation_images >= available:
    raise ConfigError(
      [
        f"validation_images: {config.validation_images} leaves none of the "
        f"{available} training images to train on; set "
        f"--config.validation_images below {available} (0: evaluate on the "
        "test set)"
      ]
    )
  data = input_pipeline.split_validation(data, config.validation_images)
  for split, count in (("train", config.train_subset), ("eval", config.eval_subset)):
    if count:
      data[f"{split}_images"] = data[f"{split}_images"][:count]
      data[f"{split}_labels"] = data[f"{split}_labels"][:count]
  return data


def _check_writable(workdir: str) -> list[str]:
  """Raises WorkdirError unless files can be created in `workdir` and its
  checkpoints/ (before anything is computed: Orbax reports a folder it
  cannot write only from its background threads, at the first save).

  Returns:
    The folders it created, outermost first.
  """
  created = []
  for folder in (workdir, os.path.join(workdir, "checkpoints")):
    folder = os.path.abspath(folder)
    probe = os.path.join(folder, f".writable-{jax.process_index()}-{os.getpid()}")
    try:
      created += _new_folders(folder)
      os.makedirs(folder, exist_ok=True)
      with open(probe, "w", encoding="utf-8"):
        pass
      os.remove(probe)
    except OSError as error:
      raise WorkdirError(
        f"{folder}: cannot write there ({error.strerror or error}); make it "
        "writable, or give another --workdir"
      ) from error
  return created


def _new_folders(path: str) -> list[str]:
  """The folders `os.makedirs(path)` would create, outermost first."""
  missing = []
  path = os.path.abspath(path)
  while not os.path.exists(path):
    missing.insert(0, path)
    path = os.path.dirname(path)
  return missing


@contextlib.contextmanager
def _removed_if_empty_on_error(folders):
  """Removes `folders` (innermost first) if the block fails and they are
  still empty: a run that stops before it wrote anything (no data, a failed
  download, Ctrl-C) leaves no empty workdir behind."""
  try:
    yield
  except BaseException:
    for folder in reversed(folders):
      with contextlib.suppress(OSError):
        os.rmdir(folder)  # only if empty
    raise


def _raise_if_signalled(stop) -> None:
  """KeyboardInterrupt if a signal came in and was lost: the handler's
  KeyboardInterrupt is swallowed when it lands in a garbage-collector
  callback (JAX has one), and the run would go on."""
  if stop is not None and stop.signum is not None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
  """A line of the run's report on stdout (the first process only)."""
  if jax.process_index() == 0:
    print(line, flush=True)


def _devices(config) -> list:
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise ValueError(
        f"config.num_devices={config.num_devices} but only {len(devices)} devices"
      )
    devices = devices[: config.num_devices]
  return devices


def _place(x, sharding):
  """A host array, identical on every process, as a global array."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _train_metrics(metrics) -> dict:
  """A step's metrics on the host: each device's mean over its micro-batches,
  averaged over the devices (equal slices: the mean over the global batch)."""
  return {k: float(np.mean(v)) for k, v in parallel.to_host(metrics["aux"]).items()}


@jax.jit
def _copy(state):
  """A copy of the weights and statistics (the EMA starts as the network)."""
  return jax.tree.map(jnp.copy, (state.params, state.model_state))


def _evaluator(config, mesh, graphdef, data):
  """`evaluate(state, tta_level) -> (accuracy, accuracy with TTA)` on the
  evaluation images, in chunks of eval_batch_size sharded over the devices."""
  size = config.eval_batch_size
  images = input_pipeline.normalize(data["eval_images"])
  labels = data["eval_labels"]
  sharding = parallel.batch_sharding(mesh)
  compiled = {}

  def evaluate(state, tta_level):
    if tta_level not in compiled:
      compiled[tta_level] = create_eval_step(config, mesh, graphdef, tta_level)
    correct = []
    for i in range(0, len(labels), size):
      chunk = images[i : i + size]
      valid = len(chunk)
      chunk = np.pad(chunk, ((0, size - valid), (0, 0), (0, 0), (0, 0)))
      predictions = compiled[tta_level](
        state.params, state.model_state, _place(chunk, sharding)
      )
      predictions = parallel.to_host(predictions)
      correct.append([p[:valid] == labels[i : i + valid] for p in predictions])
    return tuple(float(np.mean(np.concatenate(c))) for c in zip(*correct, strict=True))

  return evaluate


class _Clock:
  """Seconds per phase ("data", "compile", "train", "eval", "checkpoint").

  `with clock(name):` adds the block's time to `name`; time goes to the
  innermost phase, so a checkpoint saved during training counts as
  "checkpoint", not "train".
  """

  def __init__(self):
    self.totals: dict[str, float] = {}
    self._stack: list[list] = []  # [phase, since]

  def _add(self, name, seconds):
    self.totals[name] = self.totals.get(name, 0.0) + seconds

  @contextlib.contextmanager
  def __call__(self, name):
    now = time.perf_counter()
    if self._stack:
      outer, since = self._stack[-1]
      self._add(outer, now - since)
    self._stack.append([name, now])
    try:
      yield
    finally:
      now = time.perf_counter()
      inner, since = self._stack.pop()
      self._add(inner, now - since)
      if self._stack:
        self._stack[-1][1] = now


class _Checkpoints:
  """Orbax checkpoints of everything a resumed run needs (the sharded train
  state, the weight average, the data key, the step and the training time)
  and of the configuration that wrote them.

  `restore` takes the newest checkpoint that reads back whole. Each one it
  skips (an empty folder, a missing or damaged file, an older format
  without the stored configuration or one of its fields) gets a line
  saying why, and its step folder moves to `<workdir>/checkpoints_damaged/`:
  kept for a look, out of Orbax's way (Orbax would take it as the latest
  step and skip every later save up to it). A checkpoint written with other
  values of RESUME_FIELDS is a configuration error, not damage.
  """

  def __init__(self, workdir, config, dp, params, model_state):
    self._directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._shown = os.path.join(workdir, "checkpoints")  # in messages: as given
    self._damaged = os.path.join(workdir, "checkpoints_damaged")
    self._config = config
    self._manager = ocp.CheckpointManager(
      self._directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep),
    )
    self._target_state = dp.abstract_state(params, model_state)

  def save(self, step, state, ema, data_key, clock):
    """Saves and waits for the write (none if `step` is saved already)."""
    with clock("checkpoint"):
      train = {
        "state": state,
        "ema": ema,
        "data_key": np.asarray(jax.random.key_data(data_key)),
        "step": np.asarray(step, np.int64),
        "train_seconds": np.asarray(clock.totals.get("train", 0.0)),
      }
      try:
        self._manager.save(
          step,
          args=ocp.args.Composite(
            train=ocp.args.StandardSave(train),
            config=ocp.args.JsonSave(self._config.to_dict()),
          ),
        )
        self._manager.wait_until_finished()
      except Exception as error:
        raise WorkdirError(
          f"{self._shown}: cannot write the checkpoint of step {step} "
          f"({_reason(error)}); check that the folder is writable and has free "
          "space, or give another --workdir"
        ) from error

  def restore(self, state, ema, data_key, clock):
    """(step, state, ema, data_key): from the newest intact checkpoint, or as
    given (step 0) when there is none."""
    target = {
      "state": self._target_state,
      "ema": jax.tree.map(ocp.utils.to_shape_dtype_struct, ema),
      "data_key": np.asarray(jax.random.key_data(data_key)),
      "step": np.zeros([], np.int64),
      "train_seconds": np.zeros([]),
    }
    skipped, restored = [], None
    with _quiet_read_failures():
      for step in sorted(self._manager.all_steps(), reverse=True):
        restored, reason = self._read(step, target)
        if restored is not None:
          break
        skipped.append((step, reason))
    self._set_aside(skipped)
    if restored is None:
      if skipped and jax.process_index() == 0:
        print(
          f"No intact checkpoint in {self._shown}: training starts at step 0.",
          file=sys.stderr,
          flush=True,
        )
      return 0, state, ema, data_key
    clock.totals["train"] = float(restored["train_seconds"])
    print(f"Resumed from {self._shown} at step {step}.", flush=True)
    return (
      int(restored["step"]),
      parallel.TrainState(*restored["state"]),
      restored["ema"],
      jax.random.wrap_key_data(np.asarray(restored["data_key"])),
    )

  def _read(self, step, target):
    """(the restored tree, None), or (None, why step cannot be restored)."""
    folder = os.path.join(self._directory, str(step))
    reason = None
    if os.path.isdir(folder) and not os.listdir(folder):
      reason = "its folder is empty"
    else:
      try:
        args = ocp.args.Composite(config=ocp.args.JsonRestore())
        saved = self._manager.restore(step, args=args)["config"]
        reason = _older_format(saved)
      except Exception as error:
        if not os.path.isdir(os.path.join(folder, "config")):
          reason = "an older checkpoint format: no stored configuration"
        else:
          reason = f"its configuration cannot be read: {_reason(error)}"
    if not _on_every_process(reason is None):
      return None, reason or "unreadable on another process"
    _check_resumable(saved, self._config, self._shown)
    try:
      args = ocp.args.Composite(train=ocp.args.StandardRestore(target))
      restored = self._manager.restore(step, args=args)["train"]
    except Exception as error:
      # Orbax's message for a missing metadata file is about pytrees.
      missing = [
        name
        for name in ("_CHECKPOINT_METADATA", os.path.join("train", "_METADATA"))
        if not os.path.exists(os.path.join(folder, name))
      ]
      restored = None
      absent = [] if missing else _items_absent(folder, target)
      if missing:
        reason = f"{' and '.join(missing)} missing"
      elif absent:
        reason = f"an older checkpoint format: no {', '.join(absent)}"
      else:
        reason = _reason(error)
    if not _on_every_process(restored is not None):
      return None, reason or "unreadable on another process"
    return restored, None

  def _set_aside(self, skipped):
    """Moves the skipped step folders to checkpoints_damaged/, each with a
    line saying which step and why."""
    if not skipped:
      return
    _sync_processes("checkpoints read")
    if jax.process_index() == 0:
      for step, reason in skipped:
        folder = os.path.join(self._shown, str(step))
        target, n = os.path.join(self._damaged, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(self._damaged, f"{step}.{n}"), n + 1
        try:
          os.makedirs(self._damaged, exist_ok=True)
          shutil.move(folder, target)
        except OSError as error:
          raise WorkdirError(
            f"{folder}: a damaged checkpoint ({reason}) that cannot be moved "
            f"aside ({error.strerror or error}); delete it"
          ) from error
        print(
          f"Skipped the checkpoint of step {step} ({reason}); moved it to {target}.",
          file=sys.stderr,
          flush=True,
        )
    _sync_processes("checkpoints set aside")
    self._manager.reload()

  def close(self):
    self._manager.close()


# The fields a checkpoint must be resumed with. widths: the shapes of the
# parameters, momentum and weight average. batch_size, train_subset,
# validation_images: the images per step and per epoch, so the data position
# the checkpoint's step stands for. num_epochs (with those): the total
# steps, so the learning-rate schedule and the weight-average decay along
# it. The others (devices, ZeRO-1, accum_steps, evaluation, checkpoint and
# progress intervals) change neither the stored arrays nor what a step
# means.
RESUME_FIELDS = (
  "widths",
  "batch_size",
  "train_subset",
  "validation_images",
  "num_epochs",
)


def _as_saved(value):
  """A config value as the checkpoint's JSON stores it (tuples as lists)."""
  return json.loads(json.dumps(value))


def _older_format(saved: dict) -> str | None:
  """Why a checkpoint's stored configuration is of an older format, or
  None."""
  missing = [name for name in RESUME_FIELDS if name not in saved]
  if missing:
    return f"an older checkpoint format: its configuration has no {', '.join(missing)}"
  return None


def _items_absent(folder: str, target: dict) -> list[str]:
  """The items of `target` (state, ema, data_key, ...) that the train item
  of the checkpoint in `folder` does not hold, by its _METADATA ([] if
  that cannot be read)."""
  try:
    with open(os.path.join(folder, "train", "_METADATA"), encoding="utf-8") as f:
      paths = json.load(f)["tree_metadata"]
    stored = {ast.literal_eval(path)[0] for path in paths}
  except (OSError, ValueError, KeyError, TypeError, SyntaxError, IndexError):
    return []
  return [name for name in target if name not in stored]


def _check_resumable(saved: dict, config, directory: str) -> None:
  """Raises ConfigError, one line naming every field of RESUME_FIELDS in
  which `config` differs from the configuration `saved` that wrote the
  checkpoints, with the flags that resume them."""
  differ = [
    name
    for name in RESUME_FIELDS
    if name in saved and _as_saved(saved[name]) != _as_saved(config[name])
  ]
  if not differ:
    return

  def shown(value):
    return (
      "(" + ",".join(str(v) for v in value) + ")"
      if isinstance(value, list)
      else (str(value))
    )

  theirs = ", ".join(f"{name}={shown(_as_saved(saved[name]))}" for name in differ)
  ours = ", ".join(f"{name}={shown(_as_saved(config[name]))}" for name in differ)
  flags = " ".join(
    f"--config.{name}='{shown(saved[name])}'"
    if isinstance(saved[name], list)
    else f"--config.{name}={saved[name]}"
    for name in differ
  )
  raise ConfigError(
    [
      f"{', '.join(differ)}: the checkpoints in {directory} were written with "
      f"{theirs}; this configuration has {ours}; set {flags} to resume them, or "
      "give another --workdir to start afresh"
    ]
  )


def _check_checkpoints(workdir: str, config) -> None:
  """Raises ConfigError if the newest checkpoint whose configuration reads
  back is of another network than `config`'s (before any data is read;
  `_Checkpoints.restore` deals with the damaged ones)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory)
  try:
    with _quiet_read_failures():
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          args = ocp.args.Composite(config=ocp.args.JsonRestore())
          saved = manager.restore(step, args=args)["config"]
        except Exception:  # noqa: BLE001 (damaged: restore says which and why)
          continue
        if _older_format(saved):  # restore skips it, saying why
          continue
        _check_resumable(saved, config, os.path.join(workdir, "checkpoints"))
        return
  finally:
    manager.close()


def _reason(error: BaseException) -> str:
  """An exception as one short line: the type and the first line of the
  message of the exception it was raised from (Orbax wraps TensorStore's,
  which names the file), without TensorStore's spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = error.args[0] if isinstance(error, KeyError) and error.args else error
  lines = str(text).strip().splitlines()
  text = lines[0].split(" [tensorstore_spec=")[0] if lines else ""
  text = text.split(" See full TensorStore details")[0]
  if len(text) > 300:
    text = text[:297] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def _quiet_read_failures():
  """Silences what a failed Orbax read leaves behind: asyncio's "Task
  exception was never retrieved" and the TensorStore callbacks that find
  Orbax's event loop closed (unraisable exceptions), which would bury the
  line saying which checkpoint was skipped and why."""
  asyncio_logger = logging.getLogger("asyncio")
  level, hook = asyncio_logger.level, sys.unraisablehook
  asyncio_logger.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()  # the abandoned tasks report when collected: here
    sys.unraisablehook = hook
    asyncio_logger.setLevel(level)


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process (all of them must restore the same
  checkpoint)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _environment(devices) -> dict:
  """Where the run happened: code revision, versions, machine, devices."""
  import importlib.metadata

  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args):
    try:
      out = subprocess.run(
        ["git", *args], cwd=here, capture_output=True, text=True, check=True
      )
      return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return None

  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  versions["nag_optax"] = nag_optax.__version__
  status = git("status", "--porcelain", "--untracked-files=no")
  return {
    "code_revision": git("rev-parse", "HEAD"),
    "code_modified": bool(status) if status is not None else None,
    "versions": versions,
    "machine": {
      "platform": platform.platform(),
      "processor": _cpu_model(),
      "cpu_count": os.cpu_count(),
    },
    "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
    "process_count": jax.process_count(),
  }


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _write_json(path, payload):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, default=str)
