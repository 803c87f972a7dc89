"""The CIFAR-10 example end to end: accuracy and wall time per seed.

Runs `python examples/cifar10/main.py` once per seed, each in a fresh
process (so the wall time includes start-up, data loading and compilation,
end to end), reads each run's results.json and saves

  benchmarks/results/cifar10_<preset>.json   (or --output)

with the environment record of benchmarks/_common.py (machine, devices,
versions, git revision, load average at start and end), the command of each
run (repository-relative), its wall time and its results (accuracy with and
without TTA on the test set, or on the validation split with
--override=--config.validation_images=N; train, compile and data seconds;
the data's MD5), and the first seed's training curve (loss, accuracy and
learning rate per step, from its metrics.jsonl: the docs draw it). Prints a
table and mean +- std over seeds.

  python benchmarks/cifar10_example.py --preset=cpu --seeds=3 --data-dir=data
  python benchmarks/cifar10_example.py --preset=default --seeds=5 --data-dir=data

The dataset label says which copy of CIFAR-10 was read (--dataset): the
official archive, or for example a JPEG re-encoding of it.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:
  import _common  # noqa: E402

SPLITS = ("test", "validation")


CURVE_KEYS = ("train_loss", "train_accuracy", "lr")


def read_curve(workdir):
  """The per-step rows of a run's metrics.jsonl, as one list per field."""
  with open(f"{workdir}/metrics.jsonl") as f:
    rows = [r for r in map(json.loads, f) if "train_loss" in r]
  return {k: [r[k] for r in rows] for k in ("step", *CURVE_KEYS)}


def run_once(preset, seed, data_dir, overrides, workdir):
  args = [
    "examples/cifar10/main.py",
    "--workdir=WORKDIR",
    f"--config=examples/cifar10/configs/{preset}.py",
    f"--config.data_dir={data_dir}",
    f"--config.seed={seed}",
    "--config.plot=False",
    *overrides,
  ]
  command = [sys.executable, *(a.replace("WORKDIR", workdir) for a in args)]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=_common.REPO_ROOT)
  wall = time.perf_counter() - start
  with open(f"{workdir}/results.json") as f:
    results = json.load(f)
  results.pop("config", None)
  return {
    "seed": seed,
    "command": " ".join(["python", *args]),
    "process_wall_seconds": wall,
    **results,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="cpu", choices=["cpu", "default", "smoke"])
  parser.add_argument("--seeds", type=int, default=1)
  parser.add_argument("--first-seed", type=int, default=0)
  parser.add_argument("--data-dir", default="data", help="relative to the repository")
  parser.add_argument("--dataset", default="CIFAR-10", help="which copy, to record")
  parser.add_argument(
    "--output", default=None, help="results/<output>.json (default cifar10_<preset>)"
  )
  parser.add_argument(
    "--override",
    action="append",
    default=[],
    help="e.g. --override=--config.num_epochs=3",
  )
  args = parser.parse_args(argv)
  env = _common.environment()
  runs = []
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    with tempfile.TemporaryDirectory() as workdir:
      runs.append(run_once(args.preset, seed, args.data_dir, args.override, workdir))
      if len(runs) == 1:
        curve = {"seed": seed, **read_curve(workdir)}
  (split,) = [s for s in SPLITS if f"{s}_accuracy" in runs[0]]
  keys = (
    f"{split}_accuracy",
    f"{split}_accuracy_tta",
    "process_wall_seconds",
    "train_seconds",
  )
  summary = {}
  for key in keys:
    values = [r[key] for r in runs]
    summary[key] = {
      "mean": statistics.fmean(values),
      "std": statistics.stdev(values) if len(values) > 1 else 0.0,
      "min": min(values),
      "max": max(values),
    }
  rows = [
    [
      r["seed"],
      f"{r[keys[0]]:.4f}",
      f"{r[keys[1]]:.4f}",
      f"{r['process_wall_seconds']:.0f}",
      f"{r['train_seconds']:.0f}",
      f"{r['compile_seconds']:.0f}",
    ]
    for r in runs
  ]
  print(
    _common.markdown_table(
      ["seed", f"{split} acc", f"{split} acc (TTA)", "wall s", "train s", "compile s"],
      rows,
    )
  )
  tta = summary[keys[1]]
  print(f"TTA accuracy {tta['mean']:.4f} +- {tta['std']:.4f} over {len(runs)} seed(s)")
  path = _common.write_json(
    args.output or f"cifar10_{args.preset}",
    {
      "preset": args.preset,
      "dataset": args.dataset,
      "split": split,
      "overrides": args.override,
      "summary": summary,
      "runs": runs,
      "curve": curve,
    },
    env,
  )
  print(f"saved {path}")


if __name__ == "__main__":
  main()
