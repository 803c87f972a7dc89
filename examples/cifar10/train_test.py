"""Tests of the CIFAR-10 example: the model, the optimizer's wiring against
airbench's rules, augmentation, data parallelism, training, resuming and the
command line, all on a small synthetic dataset in the official layout that
the tests write themselves (input_pipeline.write_synthetic)."""

import functools
import io
import json
import math
import os
import re
import struct
import subprocess
import sys

import input_pipeline
import jax
import jax.numpy as jnp
import metrics as metrics_lib
import models
import numpy as np
import optax
import progress as progress_lib
import pytest
import train
from configs import cpu
from configs import default
from configs import smoke
from configs import tpu
from flax import nnx

from nag_optax import parallel

HERE = os.path.dirname(os.path.abspath(__file__))

# The smoke preset's accuracy with TTA on the synthetic data must beat this
# (chance is 0.10; seeds 0, 1 and 2 reached 0.88-0.90 on 512 images).
SMOKE_MIN_ACCURACY = 0.6


@pytest.fixture(scope="session")
def cifar(data_dir):
  return input_pipeline.load_cifar10(data_dir, download=False)


def _config(**overrides):
  config = smoke.get_config()
  config.update(overrides)
  return config


def _split(config):
  model = models.create_model(config)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.as_pure(params), nnx.as_pure(model_state)


def _one_step(config, devices, batch, total_steps=10, steps_per_epoch=5):
  """One `dp.step` of `train.create_train_step` on the first `devices`
  devices from the initial model: (params, model_state) before it, then the
  state and metrics after it, all on the host."""
  mesh = parallel.data_mesh(jax.devices()[:devices])
  dp, _, params, model_state = train.create_train_step(
    config, mesh, total_steps, steps_per_epoch
  )
  params, model_state = dp.to_host((params, model_state))
  state, metrics = dp.step(
    dp.init(params, model_state), dp.shard_batch(batch), whiten_bias_trainable=True
  )
  return params, model_state, dp.to_host(state), dp.to_host(metrics)


# The network and batch of the one-step tests.
NARROW = {"batch_size": 128, "widths": (8, 16, 16)}


@pytest.fixture(scope="module")
def narrow_step(cifar):
  """128 images, and one step of the NARROW network on them on one device
  (`_one_step`), shared by the tests that compare against it."""
  batch = (
    input_pipeline.normalize(cifar["train_images"][:128]),
    cifar["train_labels"][:128],
  )
  return batch, _one_step(_config(**NARROW), 1, batch)


def _summed_loss(graphdef, params, model_state, images, labels):
  """airbench's loss written out: label-smoothed (0.2) cross-entropy summed
  over the images, BatchNorm over them; and the new model state."""
  model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, model_state))
  logits = model(images, train=True)
  targets = 0.8 * jax.nn.one_hot(labels, 10) + 0.2 / 10
  _, _, model_state = nnx.split(model, nnx.Param, ...)
  return -jnp.sum(targets * jax.nn.log_softmax(logits)), nnx.as_pure(model_state)


# --------------------------------------------------------------- the model


def test_airbench94_has_its_published_parameter_count():
  _, params, model_state = _split(default.get_config())
  # Counted by hand from the architecture: whitening conv 2x2x3x24 (a
  # Whitening variable, set from the data) + 24 biases; groups of 3x3 convs
  # 24->64->64, 64->256->256, 256->256->256 with a bias per BatchNorm (no
  # scale); head 256x10 without bias. airbench94: 1,971,640 in all.
  convs = [(24, 64), (64, 64), (64, 256), (256, 256), (256, 256), (256, 256)]
  trained = 24 + sum(9 * i * o for i, o in convs) + 2 * (64 + 256 + 256) + 2560
  assert models.param_count(params) == trained
  assert trained + 2 * 2 * 3 * 24 == 1_971_640
  assert model_state["whiten_kernel"].shape == (2, 2, 3, 24)
  assert model_state["groups"][1]["norm1"]["mean"].shape == (256,)
  assert "scale" not in params["groups"][0]["norm1"]


def test_identity_init_passes_the_input_through():
  kernel = models.dirac_init(jax.random.key(0), (3, 3, 4, 6))
  x = jax.random.normal(jax.random.key(1), (1, 5, 5, 4))
  y = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(y[..., :4], x, rtol=1e-6)
  assert float(jnp.abs(kernel[..., 4:]).max()) <= 1 / math.sqrt(36)


def test_whitening_kernel_whitens_patches():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(3, 3))
  images = jnp.asarray(rng.normal(size=(64, 8, 8, 3)) @ mix, jnp.float32)
  eps = 5e-4
  kernel = models.whitening_kernel(images, eps)
  assert kernel.shape == (2, 2, 3, 24)
  np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
  # NumPy: covariance of the (kh, kw, c)-ordered 2x2 patches.
  x = np.asarray(images, np.float64)
  patches = np.stack(
    [x[:, i : i + 7, j : j + 7] for i in range(2) for j in range(2)], axis=3
  ).reshape(-1, 12)
  cov = patches.T @ patches / len(patches)
  filters = np.asarray(kernel[..., :12], np.float64).reshape(12, 12)
  eigenvalues = np.linalg.eigvalsh(cov)[::-1]
  whitened = filters.T @ cov @ filters
  np.testing.assert_allclose(
    whitened, np.diag(eigenvalues / (eigenvalues + eps)), atol=2e-3
  )


# ---------------------------------------------------------- augmentation


def test_augmentation_crops_flips_and_alternates():
  n, pad = 6, 2
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), "reflect")
  labels = np.arange(n, dtype=np.int32)
  key = jax.random.key(3)
  plans = [
    input_pipeline.epoch_plan(key, e, num_images=n, crop_padding=pad, alternating=True)
    for e in range(3)
  ]
  # Alternating flip: every image changes orientation each epoch.
  np.testing.assert_array_equal(plans[1]["flips"], ~np.asarray(plans[0]["flips"]))
  np.testing.assert_array_equal(plans[2]["flips"], plans[0]["flips"])
  assert sorted(np.asarray(plans[1]["perm"]).tolist()) == list(range(n))
  plan = plans[1]
  x, y = input_pipeline.augment_batch(
    jnp.asarray(padded), jnp.asarray(labels), plan, 2, batch=4
  )
  for row in range(4):
    i = int(plan["perm"][2 + row])
    sy, sx = (int(v) for v in plan["shifts"][i])
    want = padded[i, sy : sy + 32, sx : sx + 32]
    if plan["flips"][i]:
      want = want[:, ::-1]
    want = input_pipeline.normalize(want)
    np.testing.assert_allclose(x[row], want, rtol=1e-5, atol=1e-5)
    assert int(y[row]) == i


def test_validation_split_holds_out_the_last_training_images(cifar):
  data = input_pipeline.split_validation(cifar, 100)
  np.testing.assert_array_equal(data["eval_images"], cifar["train_images"][-100:])
  assert len(data["train_labels"]) == len(cifar["train_labels"]) - 100
  assert (
    input_pipeline.split_validation(cifar, 0)["eval_images"] is cifar["test_images"]
  )
  with pytest.raises(ValueError, match="validation_images"):
    input_pipeline.split_validation(cifar, len(cifar["train_labels"]))


# ------------------------------------------------------- optimizer wiring


def test_one_step_follows_airbench_groups(narrow_step):
  """One optimizer step of `create_train_step` from zero momentum: each
  group's update against the formula. torch.optim.SGD(nesterov=True) with
  coupled L2 c: m = g + c p and p <- p - lr (g + c p + mu m) = p - lr (1 +
  mu)(g + c p) on the first step.
  """
  config = _config(**NARROW)  # the loss is summed over the 128 images
  (images, labels), (params, model_state, new, metrics) = narrow_step
  assert np.isfinite(metrics["aux"]["train_loss"]).all()

  # The summed, label-smoothed loss's gradient, computed independently (the
  # same network with BatchNorm outside any mesh).
  graphdef, _, _ = _split(config)
  loss = lambda p: _summed_loss(graphdef, p, model_state, images, labels)[0]
  g = jax.jit(jax.grad(loss))(params)
  mu = config.momentum
  base_lr = config.learning_rate / (1024 * (1 + 1 / (1 - mu)))
  wd = config.weight_decay * config.batch_size / (1024 * (1 + 1 / (1 - mu)))
  lr_now = base_lr * config.warmup_from  # the schedule's value at step 0

  def expected(p, grad, scale):
    coupled = wd / (base_lr * scale)  # PyTorch weight_decay = wd / group lr
    return p - lr_now * scale * (1 + mu) * (grad + coupled * p)

  checks = {
    ("groups", 0, "conv1", "kernel"): 1.0,
    ("head", "kernel"): 1.0,
    ("groups", 1, "norm2", "bias"): config.bias_scaler,
    ("whiten_bias",): 1.0,
  }
  for path, scale in checks.items():
    get = lambda tree, path=path: functools.reduce(lambda t, k: t[k], path, tree)
    np.testing.assert_allclose(
      get(new.params), expected(get(params), get(g), scale), rtol=1e-4, atol=1e-7
    )
  # The whitening kernel is not trained; BatchNorm statistics moved.
  np.testing.assert_array_equal(
    new.model_state["whiten_kernel"], model_state["whiten_kernel"]
  )
  assert not np.allclose(new.model_state["groups"][0]["norm1"]["mean"], 0)


def test_whitening_bias_freezes_after_its_epochs():
  config = _config(whiten_bias_epochs=1)
  tx = train.create_optimizer(config, total_steps=20, steps_per_epoch=4)
  params = {"whiten_bias": jnp.ones(3), "head": {"kernel": jnp.ones(2)}}
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  moved = []
  for _ in range(6):
    updates, state = tx.update(grads, state, params)
    moved.append(float(jnp.abs(updates["whiten_bias"]).max()))
    assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0.0
  assert all(m > 0 for m in moved[:4]) and moved[4:] == [0.0, 0.0]


def test_learning_rate_schedule_matches_airbench():
  config = default.get_config()
  total = 476
  warmup = int(total * 0.23)

  def airbench(step):  # transcribed from airbench94's get_lr
    if step < warmup:
      frac = step / warmup
      return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup) / (total - warmup)
    return 1.0 * (1 - frac) + 0.07 * frac

  for step in [0, 1, warmup - 1, warmup, warmup + 1, 300, total - 1, total]:
    np.testing.assert_allclose(
      float(train.lr_factor(step, total, config)), airbench(step), rtol=1e-6
    )
  lr, wd = train.per_step_hyperparameters(config)
  np.testing.assert_allclose([lr, wd], [1.4648e-3, 1.9957e-3], rtol=1e-4)


def test_accumulated_micro_batches_make_one_step_on_the_whole_batch(narrow_step):
  """accum_steps=2: one call on the whole batch is one optimizer step whose
  gradient is the sum of the two micro-batches' summed-loss gradients, which
  is the whole batch's, as airbench's loss has it, but for BatchNorm, which
  normalises each micro-batch by its own statistics."""
  config = _config(**NARROW, accum_steps=2)
  (images, labels), (params, model_state, whole, _) = narrow_step
  _, _, accumulated, _ = _one_step(config, 1, (images, labels))

  # Exactly the optimizer's update of that sum, with the BatchNorm statistics
  # updated by one micro-batch after the other (rows 0-63, then 64-127).
  graphdef, _, _ = _split(config)
  grad_fn = jax.jit(jax.grad(functools.partial(_summed_loss, graphdef), has_aux=True))
  grads, statistics = None, model_state
  for rows in (slice(0, 64), slice(64, 128)):
    g, statistics = grad_fn(params, statistics, images[rows], labels[rows])
    grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
  tx = train.create_optimizer(config, total_steps=10, steps_per_epoch=5)
  updates, _ = tx.update(grads, tx.init(params), params)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, accumulated.params, optax.apply_updates(params, updates))
  jax.tree.map(close, accumulated.model_state, statistics)

  # Close to the step without accumulation. BatchNorm's statistics over 64
  # images instead of 128 move this small network's update by a fifth
  # (measured: 20% of its norm, the norms within 4%; 28% with micro-batches
  # of 32); a loss averaged over the micro-batches instead of summed would
  # halve the gradient.
  u1, u2 = (jax.tree.map(jnp.subtract, r.params, params) for r in (whole, accumulated))
  norm1 = float(optax.tree.norm(u1))
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, u2, u1))) <= 0.3 * norm1
  np.testing.assert_allclose(float(optax.tree.norm(u2)), norm1, rtol=0.1)


# ------------------------------------------------------ data parallelism


def test_data_parallel_step_equals_one_device(narrow_step):
  """8 devices (with ZeRO-1) against 1: the same update and BatchNorm
  statistics, taken over the global batch through the mesh axis."""
  batch, (params, _, one, one_metrics) = narrow_step
  _, _, eight, metrics = _one_step(_config(**NARROW, zero1=True), 8, batch)
  # One loss per device, each its 16 images' mean: their mean is the batch's.
  assert metrics["aux"]["train_loss"].shape == (8,)
  np.testing.assert_allclose(
    np.mean(metrics["aux"]["train_loss"]), one_metrics["aux"]["train_loss"][0], 1e-5
  )
  # Equal up to the order of summation (BatchNorm sums over 8 shards), which
  # can flip near-ties of max-pooling's argmax: the updates agree to 1% in
  # norm (measured: 0.5% at most). BatchNorm over each device's 16 images
  # instead of the global batch is off by up to 47% (37% of the whole
  # update's norm).
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
    one.model_state,
    eight.model_state,
  )

  def close(a, b, p):
    u1, u8 = a - p, b - p
    assert np.linalg.norm(u1 - u8) <= 1e-2 * np.linalg.norm(u1)

  jax.tree.map(close, one.params, eight.params, params)


# -------------------------------------------------------------- training


def _tensorboard_scalars(logdir):
  """{tag: [(step, value)]} read back from the TFRecord event files."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for name in sorted(os.listdir(logdir)):
    data = (logdir / name).read_bytes()
    at = 0
    while at < len(data):  # uint64 length, uint32 crc, record, uint32 crc
      (length,) = struct.unpack("<Q", data[at : at + 8])
      event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_smoke_preset_trains_and_records_the_run(data_dir, tmp_path):
  config = _config(data_dir=data_dir, plot=True, tensorboard=True)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["test_accuracy_tta"] > SMOKE_MIN_ACCURACY, results
  assert results["steps"] == 12 and results["epochs"] == 1.5
  saved = json.loads((tmp_path / "results.json").read_text())
  for key in ("test_accuracy", "test_accuracy_tta", "train_seconds", "compile_seconds"):
    assert saved[key] == results[key]
  assert saved["data_md5"] == input_pipeline.load_cifar10(data_dir)["md5"]
  env = saved["environment"]
  assert env["versions"]["jax"] == jax.__version__ and env["machine"]["processor"]
  assert "code_revision" in env and len(env["devices"]) == 8
  assert saved["config"]["widths"] == [16, 32, 32]
  rows = metrics_lib.read(str(tmp_path))
  train_rows = [r for r in rows if "train_loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 13))
  assert rows[-1]["eval_accuracy_tta"] == results["test_accuracy_tta"]
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  # TensorBoard holds the same numbers as metrics.jsonl.
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  for name in ("train_loss", "train_accuracy", "lr"):
    assert scalars[name] == [
      (r["step"], pytest.approx(r[name], rel=1e-6)) for r in train_rows
    ]


def test_validation_runs_report_validation_accuracy(data_dir, tmp_path):
  """A validation run, here with two micro-batches per optimizer step: one
  step, one row of metrics, per batch of batch_size images."""
  config = _config(
    data_dir=data_dir,
    validation_images=256,
    widths=(8, 16, 16),
    num_epochs=0.5,  # 1792 images: 7 batches of 256 per epoch, 4 steps
    tta_level=0,
    accum_steps=2,
  )
  results = train.train_and_evaluate(config, str(tmp_path))
  assert "validation_accuracy" in results and "test_accuracy" not in results
  assert results["steps"] == 4
  rows = metrics_lib.read(str(tmp_path))
  assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]


def test_resume_ends_with_the_same_parameters(data_dir, tmp_path):
  config = _config(
    data_dir=data_dir,
    widths=(8, 16, 16),
    batch_size=256,
    num_epochs=1.75,  # 14 steps: weight averaging at 5 and 10, stop mid-epoch
    tta_level=0,
    eval_every_epochs=0,
    deterministic=True,
  )
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  config.stop_after_steps = 7
  first = train.train_and_evaluate(config, str(tmp_path / "parts"))
  assert first == {"stopped_at_step": 7}
  resumed = train.train_and_evaluate(config, str(tmp_path / "parts"))
  assert resumed["steps"] == whole["steps"] == 14
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], whole["params"])
  jax.tree.map(
    np.testing.assert_array_equal, resumed["model_state"], whole["model_state"]
  )
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  steps = [r["step"] for r in metrics_lib.read(str(tmp_path / "parts")) if "lr" in r]
  assert steps == list(range(1, 15))  # every step once, across the restart


def test_presets_are_consistent():
  # Each preset with the devices it is for (smoke: the tests' 8).
  for preset, devices in ((default, 8), (cpu, 2), (smoke, 8), (tpu, 16)):
    config = preset.get_config()
    assert config.validation_images == 0  # figures are on the test set
    assert config.batch_size % (devices * config.accum_steps) == 0
    assert config.eval_batch_size % devices == 0
    assert config.cpu_devices in (0, devices)


def test_gpu_recipe_lowers_with_float32_reductions():
  """The default (GPU) preset, bfloat16 convolutions, with accum_steps=2,
  lowered for the 8 devices from shapes alone, as for ahead-of-time
  compilation: float32 parameters, statistics and metrics, and every value
  that crosses devices in float32 (the convolutions' bfloat16 gradient is
  cast before its one reduction)."""
  config = default.get_config()
  config.update(accum_steps=2)
  mesh = parallel.data_mesh()
  dp, graphdef, params, model_state = train.create_train_step(config, mesh, 476, 48)
  params, model_state = jax.eval_shape(lambda: (params, model_state))
  sharded = parallel.batch_sharding(mesh)
  batch = (
    jax.ShapeDtypeStruct((1024, 32, 32, 3), jnp.float32, sharding=sharded),
    jax.ShapeDtypeStruct((1024,), jnp.int32, sharding=sharded),
  )
  lowered = dp.step.lower(
    dp.abstract_state(params, model_state), batch, whiten_bias_trainable=True
  )
  state, metrics = lowered.out_info
  assert metrics["aux"]["train_loss"].shape == (8,)
  assert metrics["aux"]["train_loss"].dtype == jnp.float32
  for tree in (state.params, state.model_state):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  # The element type of each all-reduce's reduction (its block's arguments).
  reduced = re.findall(
    r'"stablehlo\.all_reduce".*\n\s*\^bb0\(%\w+: tensor<(\w+)>', lowered.as_text()
  )
  assert reduced and set(reduced) == {"f32"}, reduced
  images = jax.ShapeDtypeStruct((config.eval_batch_size, 32, 32, 3), jnp.float32)
  evaluate = train.create_eval_step(config, mesh, graphdef, tta_level=2)
  plain, tta = evaluate.lower(params, model_state, images).out_info
  assert plain.shape == tta.shape == (config.eval_batch_size,)


# ---------------------------------------------------------- progress line


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_the_progress_line_is_redrawn_in_place_on_a_terminal():
  out = _Terminal()
  line = progress_lib.Progress(
    total_steps=4,
    steps_per_epoch=2,
    batch_size=8,
    start_step=0,
    every_s=3600,
    tty_every_s=0,
    stream=out,
  )
  line.update(1, 2.0)
  line.update(2, 1.5)
  line.print("epoch 1/2 done")
  line.update(3, 1.25)
  line.close()
  step = r"step {}/4  epoch {}/2  \d+ img/s  loss {}  ETA \d+:\d\d"
  assert re.fullmatch(
    "\r" + step.format(1, 1, "2.0000") + "\x1b\\[K"
    "\r" + step.format(2, 1, "1.5000") + "\x1b\\[K"
    "\r\x1b\\[Kepoch 1/2 done\n"
    "\r" + step.format(3, 2, "1.2500") + "\x1b\\[K\n",
    out.getvalue(),
  ), repr(out.getvalue())


def test_off_a_terminal_the_progress_line_is_whole_lines_at_its_interval():
  """Nothing before the interval has passed but the last step; the
  interval's pace itself is checked on a run in faults_test.py."""
  out = io.StringIO()
  line = progress_lib.Progress(
    total_steps=4,
    steps_per_epoch=2,
    batch_size=8,
    start_step=0,
    every_s=3600,
    stream=out,
  )
  for step in range(1, 5):
    line.update(step, 1.0)
  line.close()
  (last,) = out.getvalue().splitlines()
  assert last.startswith("step 4/4  epoch 2/2  ") and last.endswith("ETA 0:00")
  assert progress_lib.duration(3725) == "1:02:05"
  assert progress_lib.duration(65) == "1:05"


# ---------------------------------------------------------- command line


def _main(*args, env=None):
  return subprocess.run(
    [sys.executable, os.path.join(HERE, "main.py"), *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, **(env or {})),
  )


def test_without_data_the_command_line_says_what_to_do(tmp_path):
  done = _main(
    f"--workdir={tmp_path / 'run'}",
    f"--config={os.path.join(HERE, 'configs', 'smoke.py')}",
    f"--config.data_dir={tmp_path / 'empty'}",
    "--config.download=False",
  )
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  message = done.stderr.strip().splitlines()
  assert message[0].startswith("error: No CIFAR-10 in")
  assert "cifar-10-python.tar.gz" in done.stderr and "--config.data_dir" in done.stderr
  assert len(message) <= 6


def test_the_command_line_trains_and_resumes(data_dir, tmp_path):
  args = [
    f"--workdir={tmp_path / 'run'}",
    f"--config={os.path.join(HERE, 'configs', 'smoke.py')}",
    f"--config.data_dir={data_dir}",
    "--config.num_epochs=1",
    "--config.eval_every_epochs=0",
    "--config.tta_level=0",
  ]
  first = _main(*args, "--config.stop_after_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  assert not (tmp_path / "run" / "results.json").exists()
  second = _main(*args, "--config.cpu_devices=2")  # the CPU as two devices
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from" in second.stdout and "at step 4" in second.stdout
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["steps"] == 8 and results["test_accuracy"] > 0.1
  assert len(results["environment"]["devices"]) == 2


def test_two_processes_train_as_one(data_dir, tmp_path):
  """`python -m nag_optax launch -n 2`: two processes of one CPU device each
  end with the parameters of one process with two devices."""
  args = [
    f"--config={os.path.join(HERE, 'configs', 'smoke.py')}",
    f"--config.data_dir={data_dir}",
    "--config.widths=(8,16,16)",
    "--config.num_epochs=0.5",
    "--config.eval_every_epochs=0",
    "--config.tta_level=0",
    "--config.checkpoint_every_steps=2",
  ]
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(HERE)))
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  one = subprocess.run(
    [
      sys.executable,
      os.path.join(HERE, "main.py"),
      f"--workdir={tmp_path / 'one'}",
      *args,
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  results = parallel.launch_local(
    [
      sys.executable,
      os.path.join(HERE, "main.py"),
      f"--workdir={tmp_path / 'two'}",
      *args,
    ],
    num_processes=2,
    local_devices=1,
    timeout_s=300,
    env=env,
  )
  assert all(r.returncode == 0 for r in results)
  single = json.loads((tmp_path / "one" / "results.json").read_text())
  double = json.loads((tmp_path / "two" / "results.json").read_text())
  assert double["environment"]["process_count"] == 2
  assert double["test_accuracy"] == single["test_accuracy"]
  rows = [metrics_lib.read(str(tmp_path / name)) for name in ("one", "two")]
  losses = [[r["train_loss"] for r in run if "train_loss" in r] for run in rows]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
