"""Tests of the CIFAR-10 example: the model, the optimizer's wiring against
airbench's rules, augmentation, data parallelism, training, resuming and the
command line, all on a small synthetic dataset in the official layout that
the tests write themselves (input_pipeline.write_synthetic)."""

import functools
import json
import math
import os
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
import pytest
import train
from configs import cpu
from configs import default
from configs import smoke
from flax import nnx

from nag_optax import parallel

HERE = os.path.dirname(os.path.abspath(__file__))

# The smoke preset's accuracy with TTA on the synthetic data must beat this
# (chance is 0.10; seeds 0, 1 and 2 reached 0.88-0.90 on 512 images).
SMOKE_MIN_ACCURACY = 0.6


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("cifar10"))
  input_pipeline.write_synthetic(out)
  return out


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


def test_one_step_follows_airbench_groups(cifar):
  """One train_step from zero momentum: each group's update against the
  formula. torch.optim.SGD(nesterov=True) with coupled L2 c: m = g + c p and
  p <- p - lr (g + c p + mu m) = p - lr (1 + mu)(g + c p) on the first step.
  """
  config = _config(batch_size=64)  # the loss is summed over the 64 images
  graphdef, params, model_state = _split(config)
  tx = train.create_optimizer(config, total_steps=78, steps_per_epoch=39)
  images = jnp.asarray(input_pipeline.normalize(cifar["train_images"][:64]))
  labels = jnp.asarray(cifar["train_labels"][:64])
  state = parallel.TrainState(params, tx.init(params), model_state)
  step = jax.jit(
    functools.partial(train.train_step, graphdef=graphdef, tx=tx, config=config)
  )
  new, metrics = step(state, (images, labels))
  assert np.isfinite(float(metrics["train_loss"]))

  # The summed, label-smoothed loss's gradient, computed independently.
  def summed_loss(p):
    logits = nnx.merge(graphdef, p, model_state)(images, train=True)
    targets = 0.8 * jax.nn.one_hot(labels, 10) + 0.2 / 10
    return -jnp.sum(targets * jax.nn.log_softmax(logits))

  g = jax.grad(summed_loss)(params)
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


def test_accumulated_micro_batches_sum_to_the_whole_batch_gradient(cifar):
  """With accum_steps=2 the optimizer sees the sum of the two micro-batches'
  summed-loss gradients: the whole batch's, as airbench's loss has it."""
  config = _config(batch_size=64, widths=(8, 16, 16))
  graphdef, params, model_state = _split(config)
  images = jnp.asarray(input_pipeline.normalize(cifar["train_images"][:64]))
  labels = jnp.asarray(cifar["train_labels"][:64])
  results = []
  for accum_steps in (1, 2):
    config.accum_steps = accum_steps
    tx = train.create_optimizer(config, total_steps=10, steps_per_epoch=5)
    step = jax.jit(
      functools.partial(train.train_step, graphdef=graphdef, tx=tx, config=config)
    )
    state = parallel.TrainState(params, tx.init(params), model_state)
    for i in range(accum_steps):
      rows = slice(i * 64 // accum_steps, (i + 1) * 64 // accum_steps)
      state, _ = step(state, (images[rows], labels[rows]))
    results.append(state.params)
  # BatchNorm normalises each micro-batch by its own statistics, so the two
  # differ a little; a mean in place of the sum would halve the update.
  deltas = [jax.tree.map(lambda p, q: p - q, r, params) for r in results]
  norms = [optax.tree.norm(d) for d in deltas]
  np.testing.assert_allclose(norms[1], norms[0], rtol=0.05)


# ------------------------------------------------------ data parallelism


def test_data_parallel_step_equals_one_device(cifar):
  """jit_train_step over 8 devices: the same update and BatchNorm statistics
  as one device on the whole batch (statistics over the global batch)."""
  config = _config(widths=(8, 16, 16))
  graphdef, params, model_state = _split(config)
  tx = train.create_optimizer(config, 10, 5)
  batch = (
    input_pipeline.normalize(cifar["train_images"][:128]),
    cifar["train_labels"][:128],
  )
  results = []
  for n in (1, 8):
    dp = parallel.jit_train_step(
      functools.partial(train.train_step, graphdef=graphdef, tx=tx, config=config),
      tx,
      parallel.data_mesh(jax.devices()[:n]),
      zero1=n > 1,
    )
    state, _ = dp.step(dp.init(params, model_state), dp.shard_batch(batch))
    results.append(dp.to_host(state))
  one, eight = results
  # Equal up to the order of summation (BatchNorm sums over 8 shards), which
  # can flip near-ties of max-pooling's argmax: the updates agree to 1% in
  # norm (measured: 0.5% at most). BatchNorm over each device's 16 images
  # instead of the global batch is off by 40-50%.
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
  config = _config(
    data_dir=data_dir, validation_images=256, num_epochs=0.5, tta_level=0
  )
  results = train.train_and_evaluate(config, str(tmp_path))
  assert "validation_accuracy" in results and "test_accuracy" not in results


def test_resume_ends_with_the_same_parameters(data_dir, tmp_path):
  config = _config(
    data_dir=data_dir,
    widths=(8, 16, 16),
    batch_size=256,
    accum_steps=2,
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
  for preset in (default, cpu, smoke):
    config = preset.get_config()
    assert config.batch_size % config.accum_steps == 0
    assert config.validation_images == 0  # figures are on the test set
    devices = max(config.cpu_devices, 1)
    assert (config.batch_size // config.accum_steps) % devices == 0
    assert config.eval_batch_size % devices == 0


def test_gpu_recipe_traces_in_bfloat16_with_accumulation():
  """The default (GPU) preset's bfloat16 path with accum_steps=2, traced
  abstractly: float32 parameters, loss and statistics."""
  config = default.get_config()
  config.update(accum_steps=2)
  tx = train.create_optimizer(config, 476, 48)

  def step(x, y):
    graphdef, params, model_state = _split(config)
    state = parallel.TrainState(params, tx.init(params), model_state)
    state, metrics = train.train_step(
      state, (x, y), graphdef=graphdef, tx=tx, config=config
    )
    predictions = train.eval_step(
      state.params, state.model_state, x, graphdef=graphdef, tta_level=2
    )
    return state, metrics, predictions

  x, y = jnp.zeros((8, 32, 32, 3)), jnp.zeros((8,), jnp.int32)
  state, metrics, predictions = jax.eval_shape(step, x, y)
  assert metrics["train_loss"].dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert {s.dtype for s in jax.tree.leaves(state.model_state)} == {
    jnp.dtype(jnp.float32)
  }
  assert predictions[1].shape == (8,)


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
