"""The Nesterov family on CIFAR-10 at a fixed budget, on the CPU.

A small CNN (3 conv blocks of 16/32/64 channels, ~24k parameters) trained for
a fixed number of epochs on a fixed subset of the training set, with the
same warm-up + linear-decay learning-rate shape for every optimizer. Each
optimizer's peak learning rate is the middle of its grid below, a
conventional value fixed before any run (``--tune`` instead picks the best
of the grid on seed 0, recording the grid). Then 3 seeds; the table gives
final test accuracy and loss, mean and spread (min-max).

    python /work/shared/data/make_cifar10.py data   # or the official archive in data/
    python benchmarks/optimizers_cifar10.py          # ~15 min on 2 idle CPU cores
    python benchmarks/optimizers_cifar10.py --quick  # smoke run, < 1 min
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:
  import _common  # noqa: E402

import nag_optax  # noqa: E402

sys.path.insert(0, str(_common.REPO_ROOT / "examples" / "cifar10"))
import input_pipeline  # noqa: E402

WIDTHS = (16, 32, 64)
BATCH = 128

# name -> (factory of the peak learning rate, learning-rate grid)
OPTIMIZERS = {
  "nesterov pytorch": (
    lambda lr: nag_optax.nesterov(lr, 0.9, weight_decay=5e-4),
    (0.02, 0.05, 0.1),
  ),
  "nesterov pytorch + restart": (
    lambda lr: nag_optax.nesterov(lr, 0.9, weight_decay=5e-4, restart="gradient"),
    (0.02, 0.05, 0.1),
  ),
  "nesterov sutskever": (
    lambda lr: nag_optax.nesterov(lr, 0.9, weight_decay=5e-4, form="sutskever"),
    (0.02, 0.05, 0.1),
  ),
  "nesterov sutskever + restart": (
    lambda lr: nag_optax.nesterov(
      lr, 0.9, weight_decay=5e-4, form="sutskever", restart="gradient"
    ),
    (0.02, 0.05, 0.1),
  ),
  "nag_optax.nadam": (
    lambda lr: nag_optax.nadam(lr, weight_decay=5e-2, decoupled_weight_decay=True),
    (1e-3, 3e-3, 1e-2),
  ),
  "nag_optax.adan": (
    lambda lr: nag_optax.adan(lr, weight_decay=0.02),
    (3e-3, 1e-2, 3e-2),
  ),
  "optax.adan": (lambda lr: optax.adan(lr, weight_decay=0.02), (3e-3, 1e-2, 3e-2)),
  "optax.adamw": (lambda lr: optax.adamw(lr, weight_decay=5e-2), (1e-3, 3e-3, 1e-2)),
}


def init_params(key):
  params, c_in = [], 3
  keys = jax.random.split(key, len(WIDTHS) + 1)
  for k, c_out in zip(keys, WIDTHS, strict=False):
    w = jax.random.normal(k, (3, 3, c_in, c_out)) * np.sqrt(2.0 / (9 * c_in))
    params.append({"w": w, "b": jnp.zeros(c_out)})
    c_in = c_out
  head = jax.random.normal(keys[-1], (c_in, 10)) * np.sqrt(1.0 / c_in)
  return {"convs": params, "head": {"w": head, "b": jnp.zeros(10)}}


def apply(params, x):
  for layer in params["convs"]:
    x = jax.lax.conv_general_dilated(
      x, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    x = jax.nn.relu(x + layer["b"])
    x = jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
  x = jnp.mean(x, axis=(1, 2))
  return x @ params["head"]["w"] + params["head"]["b"]


def loss_fn(params, x, y):
  logits = apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_run(tx_of_lr, steps_per_epoch, epochs):
  """A jitted function (seed, peak lr, data) -> (test loss, test accuracy)."""
  total = steps_per_epoch * epochs

  @jax.jit
  def run(seed, peak_lr, x_train, y_train, x_test, y_test):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, total // 10, total, 0.0)
    # inject_hyperparams lets one compiled run serve every learning rate.
    tx = optax.inject_hyperparams(lambda learning_rate: tx_of_lr(learning_rate))(
      learning_rate=peak_lr
    )
    key_init, key_data = jax.random.split(jax.random.key(seed))
    params = init_params(key_init)
    state = tx.init(params)

    def step(carry, batch):
      params, state, count = carry
      x, y, flip = batch
      x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)  # random flips
      state.hyperparams["learning_rate"] = peak_lr * schedule(count)
      value, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, state = tx.update(grads, state, params, value=value)
      return (optax.apply_updates(params, updates), state, count + 1), value

    def epoch(carry, key):
      order = jax.random.permutation(key, x_train.shape[0])[: steps_per_epoch * BATCH]
      flips = jax.random.bernoulli(key, 0.5, (steps_per_epoch, BATCH))
      xs = x_train[order].reshape(steps_per_epoch, BATCH, 32, 32, 3)
      ys = y_train[order].reshape(steps_per_epoch, BATCH)
      return jax.lax.scan(step, carry, (xs, ys, flips))

    keys = jax.random.split(key_data, epochs)
    (params, _, _), _ = jax.lax.scan(epoch, (params, state, 0), keys)
    logits = jnp.concatenate([apply(params, xb) for xb in jnp.split(x_test, 10)])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y_test)

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=str(_common.REPO_ROOT / "data"))
  parser.add_argument("--train-size", type=int, default=6_000)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--tune", action="store_true", help="pick lr from the grid")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  args = parser.parse_args(argv)
  if args.quick:
    args.train_size, args.epochs, args.seeds = 1024, 1, 1
  env = _common.environment()
  data = input_pipeline.load_cifar10(args.data_dir)
  x_train = jnp.asarray(
    input_pipeline.normalize(data["train_images"][: args.train_size])
  )
  y_train = jnp.asarray(data["train_labels"][: args.train_size])
  x_test = jnp.asarray(input_pipeline.normalize(data["test_images"]))
  y_test = jnp.asarray(data["test_labels"])
  steps_per_epoch = args.train_size // BATCH

  results = {}
  for name, (tx_of_lr, grid) in OPTIMIZERS.items():
    run = make_run(tx_of_lr, steps_per_epoch, args.epochs)
    start = time.perf_counter()
    tuning = {}
    for lr in grid if args.tune else grid[1:2]:
      loss, acc = run(0, lr, x_train, y_train, x_test, y_test)
      tuning[lr] = {"test_loss": float(loss), "test_accuracy": float(acc)}
    best = max(tuning, key=lambda lr: tuning[lr]["test_accuracy"])
    runs = [tuning[best]]
    for seed in range(1, args.seeds):
      loss, acc = run(seed, best, x_train, y_train, x_test, y_test)
      runs.append({"test_loss": float(loss), "test_accuracy": float(acc)})
    accs = np.array([r["test_accuracy"] for r in runs])
    losses = np.array([r["test_loss"] for r in runs])
    results[name] = {
      "learning_rate_grid": tuning,
      "learning_rate": best,
      "runs": runs,
      "test_accuracy_mean": float(accs.mean()),
      "test_accuracy_min": float(accs.min()),
      "test_accuracy_max": float(accs.max()),
      "test_loss_mean": float(losses.mean()),
      "test_loss_min": float(losses.min()),
      "test_loss_max": float(losses.max()),
      "seconds": time.perf_counter() - start,
    }
    r = results[name]
    print(
      f"{name:30s} lr {best:<6g} acc {100 * r['test_accuracy_mean']:.2f}% "
      f"[{100 * r['test_accuracy_min']:.2f}, {100 * r['test_accuracy_max']:.2f}] "
      f"loss {r['test_loss_mean']:.4f} ({r['seconds']:.0f} s)",
      flush=True,
    )

  rows = [
    [
      name,
      f"{r['learning_rate']:g}",
      f"{100 * r['test_accuracy_mean']:.2f} [{100 * r['test_accuracy_min']:.2f}, "
      f"{100 * r['test_accuracy_max']:.2f}]",
      f"{r['test_loss_mean']:.3f} [{r['test_loss_min']:.3f}, {r['test_loss_max']:.3f}]",
    ]
    for name, r in results.items()
  ]
  table = _common.markdown_table(
    ["CPU, CIFAR-10 (JPEG copy)", "peak lr", "test acc % mean [min, max]", "test loss"],
    rows,
  )
  print(table)
  config = {
    "train_size": args.train_size,
    "epochs": args.epochs,
    "seeds": args.seeds,
    "batch": BATCH,
    "widths": WIDTHS,
    "schedule": "warmup_cosine_decay: 10% warm-up, cosine to 0",
    "augmentation": "random horizontal flip",
    "learning_rate": "best of grid on seed 0"
    if args.tune
    else "middle of grid, fixed a priori",
  }
  name = "optimizers_cifar10_quick" if args.quick else "optimizers_cifar10"
  path = _common.write_json(
    name, {"config": config, "results": results, "table": table}, env
  )
  print(f"wrote {pathlib.Path(path).relative_to(_common.REPO_ROOT)}")


if __name__ == "__main__":
  main()
