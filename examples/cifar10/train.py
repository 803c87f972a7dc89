"""airbench94 on CIFAR-10 with nag_optax.nesterov, in Flax NNX.

Read top to bottom: the optimizer (`create_optimizer`), the pure functions
(`loss_fn`, per device; `eval_step`; `ema_reset`), the distributed, compiled
pieces built from a config and a mesh (`create_train_step`,
`create_eval_step`), then the loop (`train_and_evaluate`).

`nag_optax.parallel.jit_data_parallel` writes the training step from
`loss_fn`: the batch split across the devices, each device's slice split
into `accum_steps` micro-batches inside the one compiled step, the gradient
averaged across devices in float32 once per optimizer step, the state
replicated (or the optimizer state split, ZeRO-1). BatchNorm averages its
statistics over the mesh axis: over the global (micro-)batch, as on one
device.
"""

import contextlib
import functools
import math
import os
import platform
import subprocess
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
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import nag_optax
from nag_optax import parallel

# --------------------------------------------------------------------------
# The optimizer (built in this one place).


def lr_factor(step, total_steps: int, config) -> jax.Array:
  """airbench's schedule: linear warm-up_from -> 1 over warmup_fraction of
  the steps, then linear to final_lr_factor at the last step."""
  warmup = max(int(total_steps * config.warmup_fraction), 1)
  return jnp.interp(
    jnp.asarray(step, jnp.float32),
    jnp.array([0.0, warmup, max(total_steps, warmup + 1)], jnp.float32),
    jnp.array([config.warmup_from, 1.0, config.final_lr_factor], jnp.float32),
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
      weight_decay=wd / base_lr,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints, evaluates; writes metrics.jsonl and results.json.

  Evaluates on the test set, or with `config.validation_images` on that
  many held-out training images (for tuning). Returns the results, plus
  "params" and "model_state" (host NumPy) when training ran to its end, or
  {"stopped_at_step": step} when it stopped early.
  """
  wall_start = time.perf_counter()
  clock = _Clock()
  os.makedirs(workdir, exist_ok=True)

  # ---- Data: on the host, then the padded training set on every device.
  with clock("data"):
    data = _load_data(config)
    devices = _devices(config)
    mesh = parallel.data_mesh(devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    num_train = len(data["train_labels"])
    steps_per_epoch = num_train // config.batch_size  # drop last, as airbench
    if steps_per_epoch == 0:
      raise ValueError(f"batch_size {config.batch_size} > {num_train} images")
    total_steps = math.ceil(steps_per_epoch * config.num_epochs)
    pad = config.crop_padding
    train_images = _place(
      np.pad(data["train_images"], ((0, 0), (pad, pad), (pad, pad), (0, 0)), "reflect"),
      replicated,
    )
    train_labels = _place(data["train_labels"], replicated)

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
  whiten_fn = jax.jit(functools.partial(models.whitening_kernel, eps=config.whiten_eps))
  whiten_images = input_pipeline.normalize(data["train_images"][: config.whiten_images])
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

  # ---- State: fresh (the whitening init is part of the timed run) or
  # restored from the latest checkpoint.
  checkpoints = _Checkpoints(workdir, config, dp, params, model_state)
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
  stop_at = total_steps
  if config.stop_after_steps:
    stop_at = min(total_steps, start_step + config.stop_after_steps)

  # ---- Training: epoch by epoch.
  step = start_step
  while step < stop_at:
    epoch = step // steps_per_epoch
    epoch_end = min((epoch + 1) * steps_per_epoch, stop_at)
    trained_before = clock.totals.get("train", 0.0)
    pending = []
    with clock("train"):
      plan = plan_fn(data_key, epoch)
      for step in range(step, epoch_end):  # noqa: B020 (step carries on)
        state, metrics = step_fn(state, step, plan)
        pending.append((step + 1, metrics))
        if len(pending) > 1:
          # The host stays at most one step ahead of the devices: with dozens
          # of steps in flight, an all-reduce of the step deadlocked on two
          # CPU devices (XLA:CPU, jax 0.10.2).
          jax.block_until_ready(pending[-2][1])
        done = step + 1
        if config.ema_every and (done % config.ema_every == 0 or done == total_steps):
          ema, state = ema_fn(ema, state, ema_decay(config, done, total_steps))
        if config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
          jax.block_until_ready(state)  # the steps queued so far are training
          checkpoints.save(done, state, ema, data_key, clock)
      jax.block_until_ready(state)
    step = epoch_end
    rows = [(done, _train_metrics(m)) for done, m in pending]
    for done, row in rows:
      lr = float(lr0 * lr_factor(done - 1, total_steps, config))
      writer.write(done, {**row, "lr": lr})
    summary = {
      "epoch": epoch + 1,
      "step": step,
      **{k: np.mean([row[k] for _, row in rows]) for k in rows[0][1]},
      "seconds": clock.totals["train"] - trained_before,
    }
    if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0:
      if step < total_steps:  # the final evaluation comes below
        with clock("eval"):
          summary["eval_accuracy"] = evaluate(state, 0)[0]
        writer.write(step, {"eval_accuracy": summary["eval_accuracy"]})
    if jax.process_index() == 0:
      print(" | ".join(f"{k} {v:.4g}" for k, v in summary.items()), flush=True)

  if step < total_steps:  # stopped early: checkpoint and leave
    checkpoints.save(step, state, ema, data_key, clock)
    checkpoints.close()
    writer.close()
    return {"stopped_at_step": step}

  # ---- The final evaluation with test-time augmentation: part of the timed
  # run, as in airbench.
  with clock("train"):
    accuracy, accuracy_tta = evaluate(state, config.tta_level)
  split = "validation" if config.validation_images else "test"
  writer.write(step, {"eval_accuracy": accuracy, "eval_accuracy_tta": accuracy_tta})
  writer.close()
  checkpoints.save(step, state, ema, data_key, clock)
  checkpoints.close()
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
    _write_json(os.path.join(workdir, "results.json"), results)
    print(
      f"{split} accuracy {accuracy:.4f}, with TTA {accuracy_tta:.4f}; "
      + ", ".join(f"{k} {v:.1f} s" for k, v in clock.totals.items())
    )
    if config.plot:
      metrics_lib.plot(workdir)
  return dict(results, **host)


# --------------------------------------------------------------------------
# Helpers of the loop.


def _load_data(config) -> dict:
  """CIFAR-10 (process 0 downloads it if needed, the others wait), the
  validation split and the subsets of `config`."""
  if jax.process_index() == 0 and not input_pipeline.has_cifar10(config.data_dir):
    if config.download:
      input_pipeline.download(config.data_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("cifar10 on disk")
  data = input_pipeline.load_cifar10(config.data_dir, download=False)
  data = input_pipeline.split_validation(data, config.validation_images)
  for split, count in (("train", config.train_subset), ("eval", config.eval_subset)):
    if count:
      data[f"{split}_images"] = data[f"{split}_images"][:count]
      data[f"{split}_labels"] = data[f"{split}_labels"][:count]
  return data


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
  """Orbax checkpoints of everything a resumed run needs: the sharded train
  state, the weight average, the data key, the step and the training time."""

  def __init__(self, workdir, config, dp, params, model_state):
    self._manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep),
    )
    self._target_state = dp.abstract_state(params, model_state)

  def save(self, step, state, ema, data_key, clock):
    with clock("checkpoint"):
      self._manager.save(
        step,
        args=ocp.args.StandardSave(
          {
            "state": state,
            "ema": ema,
            "data_key": np.asarray(jax.random.key_data(data_key)),
            "step": np.asarray(step, np.int64),
            "train_seconds": np.asarray(clock.totals.get("train", 0.0)),
          }
        ),
      )
      self._manager.wait_until_finished()

  def restore(self, state, ema, data_key, clock):
    """(step, state, ema, data_key): from the latest checkpoint, or as given."""
    latest = self._manager.latest_step()
    if latest is None:
      return 0, state, ema, data_key
    target = {
      "state": self._target_state,
      "ema": jax.tree.map(ocp.utils.to_shape_dtype_struct, ema),
      "data_key": np.asarray(jax.random.key_data(data_key)),
      "step": np.zeros([], np.int64),
      "train_seconds": np.zeros([]),
    }
    restored = self._manager.restore(latest, args=ocp.args.StandardRestore(target))
    clock.totals["train"] = float(restored["train_seconds"])
    print(f"Resumed from {self._manager.directory} at step {latest}.")
    return (
      int(restored["step"]),
      parallel.TrainState(*restored["state"]),
      restored["ema"],
      jax.random.wrap_key_data(np.asarray(restored["data_key"])),
    )

  def close(self):
    self._manager.close()


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
  import json

  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, default=str)
