"""airbench94 in Flax with nag_optax: the optimizer, the steps and the loop.

`create_optimizer` builds the optimizer in one place; `loss_fn`, `eval_step`
and the augmentation are pure functions; `train_and_evaluate` runs the loop
(data parallel over a `jit` + `NamedSharding` mesh through
`nag_optax.parallel`, lookahead, checkpoints, logs).
"""

import functools
import json
import math
import os
import time
import types
from typing import Any

import input_pipeline
import jax
import jax.numpy as jnp
import ml_collections
import models
import numpy as np
import optax
import orbax.checkpoint as ocp
import summaries
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import nag_optax
from nag_optax import parallel

# --------------------------------------------------------------------------
# The optimizer (the one place it is built).


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


def param_labels(params) -> Any:
  """Optimizer group of each parameter.

  "frozen": the whitening kernel (set from the data, never trained);
  "whiten_bias": its bias (trains for whiten_bias_epochs); "bn_bias":
  BatchNorm biases (bias_scaler x lr); "other": everything else.
  """

  def label(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[0] == "whiten":
      return "frozen" if names[-1] == "kernel" else "whiten_bias"
    if len(names) >= 2 and "norm" in names[-2] and names[-1] == "bias":
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
  that update. Each group gets its own `nesterov`; BatchNorm biases have
  `bias_scaler` times the lr and `wd / (bias_scaler * lr)` as coefficient
  (the same decay per step). The whitening bias's lr drops to 0 after
  `whiten_bias_epochs` (masking the update; its buffer keeps moving unseen).
  With `accum_steps > 1` the whole thing is wrapped in
  `nag_optax.accumulate_gradients`, whose schedules count emitted steps.
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
      "frozen": optax.set_to_zero(),
    },
    param_labels,
  )
  if config.accum_steps > 1:
    tx = nag_optax.accumulate_gradients(tx, config.accum_steps)
  return tx


# --------------------------------------------------------------------------
# Pure steps.


def loss_fn(model, config, params, batch, model_state, whiten_bias_trainable=True):
  """Label-smoothed cross-entropy summed over the optimizer-step batch.

  Written as the mean over the examples in `batch` times `batch_size` (the
  global batch of one optimizer step): the gradient is airbench's summed
  loss whether the batch is split over devices (mean over the global batch
  under jit) or over micro-batches (accumulate_gradients averages them).
  """
  images, labels = batch
  extra = {} if whiten_bias_trainable else {"whiten_bias_trainable": False}
  logits, updates = model.apply(
    {"params": params, "batch_stats": model_state},
    images,
    train=True,
    mutable=["batch_stats"],
    **extra,
  )
  targets = optax.smooth_labels(
    jax.nn.one_hot(labels, logits.shape[-1]), config.label_smoothing
  )
  ce = optax.softmax_cross_entropy(logits, targets).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  loss = ce * config.batch_size
  return loss, (updates["batch_stats"], {"loss": ce, "accuracy": accuracy})


def eval_step(model, variables, images, tta_level: int):
  """Predicted classes for normalised test images: (plain, with TTA).

  The plain prediction is one view; the TTA one averages logits over views.
  tta_level 0: one view (both equal); 1: the image and its mirror; 2: half
  that plus half the mean over the two 1-pixel (reflect-padded) diagonal
  shifts of their mirror averages (airbench's 6 views). The plain view is
  one of the TTA views, so one call gives both.
  """

  def net(x):
    return model.apply(variables, x, train=False)

  plain = net(images)
  if tta_level == 0:
    tta = plain
  else:
    mirror = 0.5 * plain + 0.5 * net(images[:, :, ::-1])
    tta = mirror
    if tta_level == 2:
      padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
      h, w = images.shape[1:3]
      shifted = 0.0
      for x in (padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]):
        shifted = shifted + 0.25 * (net(x) + net(x[:, :, ::-1]))
      tta = 0.5 * mirror + 0.5 * shifted
  return jnp.argmax(plain, -1), jnp.argmax(tta, -1)


def epoch_plan(data_key, epoch, num_images: int, crop_padding: int, alternating: bool):
  """The order, crop offsets and mirroring of every image in one epoch.

  A pure function of (key, epoch): resuming at any step re-creates the
  same data. Alternating flip: a random half is mirrored in epoch 0 and
  every image changes orientation each epoch.
  """
  flip_key, epoch_key = jax.random.split(data_key)
  perm_key, crop_key, coin_key = jax.random.split(
    jax.random.fold_in(epoch_key, epoch), 3
  )
  if alternating:
    base = jax.random.bernoulli(flip_key, 0.5, (num_images,))
    flips = jnp.logical_xor(base, epoch % 2 == 1)
  else:
    flips = jax.random.bernoulli(coin_key, 0.5, (num_images,))
  return {
    "perm": jax.random.permutation(perm_key, num_images).astype(jnp.int32),
    "shifts": jax.random.randint(crop_key, (num_images, 2), 0, 2 * crop_padding + 1),
    "flips": flips,
  }


def augment_batch(padded_images, labels, plan, start, batch: int, size: int):
  """One augmented, normalised batch from the padded uint8 set on the device.

  Gathers images plan["perm"][start:start + batch], crops each at its offset
  (vectorised dynamic slices), mirrors the flagged ones, normalises.
  """
  idx = jax.lax.dynamic_slice_in_dim(plan["perm"], start, batch)
  images = padded_images[idx]
  shifts = plan["shifts"][idx]

  def crop(image, shift):
    return jax.lax.dynamic_slice(image, (shift[0], shift[1], 0), (size, size, 3))

  images = jax.vmap(crop)(images, shifts)
  flips = plan["flips"][idx][:, None, None, None]
  images = jnp.where(flips, images[:, :, ::-1], images)
  mean = jnp.asarray(input_pipeline.MEAN)
  std = jnp.asarray(input_pipeline.STD)
  return (images.astype(jnp.float32) / 255.0 - mean) / std, labels[idx]


def lookahead(ema, params, model_state, decay):
  """ema <- decay * ema + (1 - decay) * net; net <- ema (params and BN stats)."""
  net = {"params": params, "batch_stats": model_state}
  ema = jax.tree.map(lambda e, n: e + (1 - decay) * (n - e), ema, net)
  return ema, ema["params"], ema["batch_stats"]


def lookahead_decay(config, step: int, total_steps: int) -> float:
  return config.lookahead_decay**config.lookahead_every * (step / total_steps) ** 3


# --------------------------------------------------------------------------
# The loop.


class _Timer:
  def __init__(self):
    self.totals: dict[str, float] = {}

  def add(self, name, seconds):
    self.totals[name] = self.totals.get(name, 0.0) + seconds


def _place(x, sharding):
  """Host array identical on every process -> global array with `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _read_jsonl(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _devices(config):
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise ValueError(
        f"config.num_devices={config.num_devices} but only {len(devices)} devices"
      )
    devices = devices[: config.num_devices]
  return devices


# Fields that change nothing compiled: runs differing only in these reuse the
# compiled functions (a resumed run in the same process compiles nothing).
_RUN_ONLY_FIELDS = (
  "data_dir",
  "download",
  "seed",
  "deterministic",
  "checkpoint_every_steps",
  "checkpoints_to_keep",
  "stop_after_steps",
  "progress_bar",
  "plot",
  "tensorboard",
  "eval_every_epochs",
)
_COMPILED: dict[str, Any] = {}


def _compiled_functions(config, devices, num_train, total_steps, steps_per_epoch):
  """The jitted model, step, augmentation and evaluation functions, cached."""
  fields = {k: v for k, v in config.to_dict().items() if k not in _RUN_ONLY_FIELDS}
  key = json.dumps(
    [fields, [str(d) for d in devices], num_train, total_steps, steps_per_epoch],
    sort_keys=True,
    default=str,
  )
  if key in _COMPILED:
    return _COMPILED[key]
  mesh = parallel.data_mesh(devices)
  replicated = NamedSharding(mesh, PartitionSpec())
  model = models.create_model(config)
  tx = create_optimizer(config, total_steps, steps_per_epoch)
  dp, dp_frozen = (
    parallel.jit_data_parallel(
      functools.partial(loss_fn, model, config, whiten_bias_trainable=trainable),
      tx,
      mesh,
      zero1=config.zero1,
      has_aux=True,
    )
    for trainable in (True, False)
  )

  def init_variables(key):
    return model.init(key, jnp.zeros((2, 32, 32, 3), jnp.float32), train=False)

  fns = types.SimpleNamespace(
    model=model,
    dp=dp,
    # After whiten_bias_epochs nothing below group 1 trains (airbench94).
    dp_frozen=dp_frozen if isinstance(model, models.Airbench94) else dp,
    init=jax.jit(init_variables, out_shardings=replicated),
    make_plan=jax.jit(
      functools.partial(
        epoch_plan,
        num_images=num_train,
        crop_padding=config.crop_padding,
        alternating=config.alternating_flip,
      ),
      out_shardings=replicated,
    ),
    make_batch=jax.jit(
      functools.partial(
        augment_batch, batch=config.batch_size // config.accum_steps, size=32
      ),
      out_shardings=parallel.batch_sharding(mesh),
    ),
    lookahead=jax.jit(lookahead, out_shardings=replicated, donate_argnums=(0, 1, 2)),
    evaluate={
      level: jax.jit(
        functools.partial(eval_step, model, tta_level=level), out_shardings=replicated
      )
      for level in ({0} if config.eval_every_epochs else set()) | {config.tta_level}
    },
    copy=jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=replicated),
    whiten=jax.jit(
      functools.partial(models.whitening_kernel, eps=config.whiten_eps),
      out_shardings=replicated,
    ),
  )
  _COMPILED.clear()  # keep one set alive
  _COMPILED[key] = fns
  return fns


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints, evaluates; writes metrics.jsonl, results.json, curves.png.

  With ``config.tensorboard`` also TensorBoard event files (``summaries.py``).

  Returns the results dict, plus "params" and "batch_stats" (host NumPy)
  when training ran to its end, "stopped_at_step" when it stopped early.
  """
  wall_start = time.perf_counter()
  timer = _Timer()
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if config.tensorboard:
    summaries.check_available()  # fail now, not after training

  # ---- Data (host), then on the devices.
  t0 = time.perf_counter()
  data = input_pipeline.load_cifar10(config.data_dir, download=config.download)
  if config.train_subset:
    data["train_images"] = data["train_images"][: config.train_subset]
    data["train_labels"] = data["train_labels"][: config.train_subset]
  if config.test_subset:
    data["test_images"] = data["test_images"][: config.test_subset]
    data["test_labels"] = data["test_labels"][: config.test_subset]
  num_train = len(data["train_labels"])
  micro_batch = config.batch_size // config.accum_steps
  if micro_batch * config.accum_steps != config.batch_size:
    raise ValueError("config.batch_size must be divisible by config.accum_steps")
  steps_per_epoch = num_train // config.batch_size  # drop last, as airbench
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {config.batch_size} > {num_train} training images")
  total_steps = math.ceil(steps_per_epoch * config.num_epochs)

  devices = _devices(config)
  mesh = parallel.data_mesh(devices)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = parallel.batch_sharding(mesh)
  if micro_batch % len(devices) or config.eval_batch_size % len(devices):
    raise ValueError(
      f"batch_size / accum_steps ({micro_batch}) and eval_batch_size must be "
      f"multiples of the {len(devices)} devices"
    )
  pad = config.crop_padding
  padded = np.pad(
    data["train_images"], ((0, 0), (pad, pad), (pad, pad), (0, 0)), "reflect"
  )
  train_padded = _place(padded, replicated)
  train_labels = _place(data["train_labels"], replicated)
  test_images = input_pipeline.normalize(data["test_images"])
  whiten_source = _place(
    input_pipeline.normalize(data["train_images"][: config.whiten_images]), replicated
  )
  jax.block_until_ready((train_padded, train_labels, whiten_source))
  timer.add("data", time.perf_counter() - t0)

  # ---- Model, optimizer, compiled functions.
  fns = _compiled_functions(
    config, tuple(devices), num_train, total_steps, steps_per_epoch
  )
  dp = fns.dp
  whiten_bias_steps = config.whiten_bias_epochs * steps_per_epoch
  make_plan, make_batch, lookahead_fn = fns.make_plan, fns.make_batch, fns.lookahead
  evaluate_fn, copy_fn, whiten_fn = fns.evaluate, fns.copy, fns.whiten
  root = jax.random.key(config.seed)
  init_key, data_key = jax.random.split(root)
  data_key_raw = np.asarray(jax.random.key_data(data_key))

  def fresh_state():
    variables = fns.init(init_key)
    params = variables["params"]
    if "whiten" in params:
      params = dict(params)
      params["whiten"] = dict(params["whiten"], kernel=whiten_fn(whiten_source))
    return dp.init(params, variables["batch_stats"])

  def evaluate(state, level):
    """(plain accuracy, TTA accuracy) on the test set."""
    variables = {"params": state.params, "batch_stats": state.model_state}
    correct = []
    n = len(data["test_labels"])
    size = config.eval_batch_size
    for i in range(0, n, size):
      chunk = test_images[i : i + size]
      valid = len(chunk)
      if valid < size:  # pad the last chunk to the compiled shape
        fill = np.zeros((size - valid, *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, fill])
      predictions = evaluate_fn[level](variables, _place(chunk, batch_sharding))
      labels = data["test_labels"][i : i + valid]
      correct.append([np.asarray(p)[:valid] == labels for p in predictions])
    return tuple(float(np.mean(np.concatenate(c))) for c in zip(*correct, strict=True))

  # Compile everything before the clock (airbench's protocol excludes it):
  # one throwaway call of each function.
  t0 = time.perf_counter()
  warm = fresh_state()
  plan = make_plan(data_key, 0)
  warm_batch = make_batch(train_padded, train_labels, plan, 0)
  warm, _ = dp.step(warm, warm_batch)
  if whiten_bias_steps < total_steps and fns.dp_frozen is not dp:
    warm, _ = fns.dp_frozen.step(warm, warm_batch)
  for level in evaluate_fn:
    jax.block_until_ready(
      evaluate_fn[level](
        {"params": warm.params, "batch_stats": warm.model_state},
        _place(test_images[: config.eval_batch_size], batch_sharding),
      )
    )
  if config.lookahead_every:
    ema = copy_fn({"params": warm.params, "batch_stats": warm.model_state})
    jax.block_until_ready(lookahead_fn(ema, warm.params, warm.model_state, 0.5))
  del warm, warm_batch, plan
  timer.add("compile", time.perf_counter() - t0)

  # ---- State: fresh (whitening init is part of the timed run) or restored.
  checkpoints = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep),
  )
  t0 = time.perf_counter()
  state = fresh_state()
  ema = copy_fn({"params": state.params, "batch_stats": state.model_state})
  start_step = 0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  steps_path = os.path.join(workdir, "steps.jsonl")
  epoch_rows, step_rows = [], []
  latest = checkpoints.latest_step()
  if latest is not None:
    target = {
      "state": state,
      "ema": ema,
      "data_key": data_key_raw,
      "step": np.zeros([], np.int64),
      "train_seconds": np.zeros([], np.float64),
    }
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract))
    state = parallel.TrainState(*restored["state"])
    ema = restored["ema"]
    data_key = jax.random.wrap_key_data(np.asarray(restored["data_key"]))
    start_step = int(restored["step"])
    timer.add("train", float(restored["train_seconds"]))
    epoch_rows = [r for r in _read_jsonl(metrics_path) if r["step"] <= start_step]
    step_rows = [r for r in _read_jsonl(steps_path) if r["step"] <= start_step]
    print(f"Resumed from {checkpoints.directory} at step {start_step}.")
  jax.block_until_ready(state)
  timer.add("train", time.perf_counter() - t0)

  def save(step):
    t = time.perf_counter()
    checkpoints.save(
      step,
      args=ocp.args.StandardSave(
        {
          "state": state,
          "ema": ema,
          "data_key": data_key_raw,
          "step": np.asarray(step, np.int64),
          "train_seconds": np.asarray(timer.totals.get("train", 0.0), np.float64),
        }
      ),
    )
    checkpoints.wait_until_finished()
    timer.add("checkpoint", time.perf_counter() - t)

  tensorboard = None
  if config.tensorboard and is_main:
    tensorboard = summaries.TensorBoardLog(workdir, resume_step=start_step)
  lr0, _ = per_step_hyperparameters(config)
  print_header = True
  stop_at = total_steps
  if config.stop_after_steps:
    stop_at = min(total_steps, start_step + config.stop_after_steps)
  progress = None
  if config.progress_bar and is_main:
    import tqdm

    progress = tqdm.tqdm(
      total=total_steps, initial=start_step, unit="step", leave=False
    )

  step = start_step
  k = config.accum_steps
  while step < stop_at:
    epoch = step // steps_per_epoch
    train_before_epoch = timer.totals.get("train", 0.0)  # excludes checkpoints
    t0 = time.perf_counter()
    plan = make_plan(data_key, epoch)
    epoch_end = min((epoch + 1) * steps_per_epoch, stop_at)
    pending = []
    first_step = step
    for step in range(step, epoch_end):  # noqa: B020 (step carries on)
      for micro in range(k):
        start = (
          step - epoch * steps_per_epoch
        ) * config.batch_size + micro * micro_batch
        batch = make_batch(train_padded, train_labels, plan, start)
        step_fn = dp.step if step < whiten_bias_steps else fns.dp_frozen.step
        state, metrics = step_fn(state, batch)
      done = step + 1
      if config.lookahead_every and done % config.lookahead_every == 0:
        decay = lookahead_decay(config, done, total_steps)
        ema, params, stats = lookahead_fn(ema, state.params, state.model_state, decay)
        state = state._replace(params=params, model_state=stats)
      if config.lookahead_every and done == total_steps:
        ema, params, stats = lookahead_fn(ema, state.params, state.model_state, 1.0)
        state = state._replace(params=params, model_state=stats)
      pending.append(metrics["aux"])
      if len(pending) >= 2:  # keep the host at most one step ahead
        jax.block_until_ready(pending[-2])
      if progress is not None:
        progress.update(1)
      if config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
        jax.block_until_ready(state)
        timer.add("train", time.perf_counter() - t0)
        save(done)
        t0 = time.perf_counter()
    step = epoch_end
    jax.block_until_ready(state)
    timer.add("train", time.perf_counter() - t0)
    epoch_seconds = timer.totals["train"] - train_before_epoch

    host = parallel.to_host(pending)
    for i, m in enumerate(host):
      s = first_step + i
      step_rows.append(
        {
          "step": s + 1,
          "loss": float(m["loss"]),
          "accuracy": float(m["accuracy"]),
          "lr": float(lr0 * lr_factor(s, total_steps, config)),
        }
      )
    row = {
      "epoch": epoch + 1,
      "step": step,
      "train_loss": float(np.mean([m["loss"] for m in host])),
      "train_accuracy": float(np.mean([m["accuracy"] for m in host])),
      "lr": step_rows[-1]["lr"],
      "epoch_seconds": epoch_seconds,
    }
    evaluate_now = (
      config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0
    )
    if evaluate_now and step < total_steps:  # the final one comes below
      t = time.perf_counter()
      row["test_accuracy"] = evaluate(state, 0)[0]
      timer.add("eval", time.perf_counter() - t)
    epoch_rows.append(row)
    if is_main:
      _write_jsonl(metrics_path, epoch_rows)
      _write_jsonl(steps_path, step_rows)
      if tensorboard is not None:
        tensorboard.write(step_rows, row)
      _print_row(row, print_header, progress)
      print_header = False
  if progress is not None:
    progress.close()

  if step < total_steps:  # stopped early: checkpoint and leave
    if tensorboard is not None:
      tensorboard.close()
    save(step)
    checkpoints.close()
    return {"stopped_at_step": step}

  # Final TTA evaluation: part of the timed run, as in airbench.
  t0 = time.perf_counter()
  test_accuracy, test_accuracy_tta = evaluate(state, config.tta_level)
  timer.add("train", time.perf_counter() - t0)
  epoch_rows[-1].update(
    test_accuracy=test_accuracy, test_accuracy_tta=test_accuracy_tta
  )
  if is_main:
    _write_jsonl(metrics_path, epoch_rows)
  if tensorboard is not None:
    tensorboard.write([], epoch_rows[-1])
    tensorboard.close()
  save(total_steps)
  checkpoints.close()
  host_state = parallel.to_host(
    {"params": state.params, "batch_stats": state.model_state}
  )
  results = {
    "test_accuracy": test_accuracy,
    "test_accuracy_tta": test_accuracy_tta,
    "tta_level": config.tta_level,
    "train_seconds": timer.totals.get("train", 0.0),
    "compile_seconds": timer.totals.get("compile", 0.0),
    "data_seconds": timer.totals.get("data", 0.0),
    "eval_seconds": timer.totals.get("eval", 0.0),
    "checkpoint_seconds": timer.totals.get("checkpoint", 0.0),
    "wall_seconds": time.perf_counter() - wall_start,
    "epochs": total_steps / steps_per_epoch,
    "steps": total_steps,
    "params": models.param_count(host_state["params"]),
    "devices": [str(d) for d in devices],
    "jax_version": jax.__version__,
    "config": config.to_dict(),
  }
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2, default=str)
    print(
      f"test accuracy {results['test_accuracy']:.4f}, with TTA "
      f"{test_accuracy_tta:.4f}; train {results['train_seconds']:.1f} s, compile "
      f"{results['compile_seconds']:.1f} s, data {results['data_seconds']:.1f} s, "
      f"eval {results['eval_seconds']:.1f} s, wall {results['wall_seconds']:.1f} s"
    )
    if config.plot:
      plot_curves(step_rows, epoch_rows, os.path.join(workdir, "curves.png"))
  return dict(results, **host_state)


_COLUMNS = (
  "epoch",
  "step",
  "train_loss",
  "train_accuracy",
  "test_accuracy",
  "lr",
  "epoch_seconds",
)


def _print_row(row, header, progress):
  write = progress.write if progress is not None else print
  if header:
    write(" | ".join(f"{c:>14}" for c in _COLUMNS))
  cells = []
  for c in _COLUMNS:
    v = row.get(c, "")
    cells.append(f"{v:>14.4g}" if isinstance(v, float) else f"{v!s:>14}")
  write(" | ".join(cells))


def plot_curves(step_rows, epoch_rows, path):
  """Loss, accuracy and learning rate against the step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = [r["step"] for r in step_rows]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  axes[0].plot(steps, [r["loss"] for r in step_rows])
  axes[0].set(xlabel="step", ylabel="train loss (per example)", yscale="log")
  axes[1].plot(
    steps, [r["accuracy"] for r in step_rows], label="train batch", alpha=0.6
  )
  tested = [r for r in epoch_rows if "test_accuracy" in r]
  axes[1].plot(
    [r["step"] for r in tested],
    [r["test_accuracy"] for r in tested],
    "o-",
    label="test",
  )
  axes[1].set(xlabel="step", ylabel="accuracy")
  axes[1].legend()
  axes[2].plot(steps, [r["lr"] for r in step_rows])
  axes[2].set(xlabel="step", ylabel="learning rate (non-bias groups)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
