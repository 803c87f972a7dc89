"""Everything a GPU is for in one command: the CIFAR-10 example's GPU recipe
over seeds, the optimizer update against optax and the memory bandwidth, in-
step accumulation throughput, and (optionally) PyTorch airbench94 beside it.

    python benchmarks/gpu_suite.py --data-dir=DIR --output=OUT
    python benchmarks/gpu_suite.py --data-dir=DIR --output=OUT --airbench=A.py
    python benchmarks/gpu_suite.py --smoke --output=OUT

The first two on one H100/H200 (planned to take under 10 minutes with
``--airbench``, where A.py is airbench94); the third on any CPU.

Parts, each recorded in ``OUT/gpu_suite.json`` with the machine, versions
and command (benchmarks/_common.py):

1. ``cifar10``: ``examples/cifar10`` with ``configs/default.py`` (airbench94
   in bfloat16, 9.9 epochs) for ``--seeds`` seeds: test accuracy with and
   without 6-view TTA (mean and std over seeds) and, per run, the training
   time on airbench's clock (whitening init, training, final TTA evaluation;
   compilation excluded, measured separately), data and compile seconds.
2. ``update_step``: ``benchmarks/update_step.py``'s comparison for one leaf
   of 50M parameters: ``nag_optax.nesterov`` (both forms, bfloat16 momentum)
   against ``optax.sgd(nesterov=True)`` and PyTorch's foreach/fused SGD,
   each as bytes per second at 20 B/param and as a fraction of the measured
   copy bandwidth of the device.
3. ``accumulation``: time per optimizer step of k = 4 and 8 micro-batches of
   1024 rows on the 2.77M MLP of ``benchmarks/accumulation.py``, on the
   ``jit`` path: ``optax.MultiSteps`` (k calls), ``accumulate_gradients``
   (k calls) and ``micro_batches=k`` (one call), as rows per second.
4. ``airbench94`` (with ``--airbench PATH``, a copy of the PyTorch
   ``legacy/airbench94.py`` of KellerJordan/cifar10-airbench brought at run
   time): a warm-up run and ``--seeds`` runs on the same GPU and data,
   accuracy with TTA and its own printed time per run. The data is handed
   over as the ``cifar10/train.pt`` and ``cifar10/test.pt`` caches it reads
   first, so it downloads nothing.

``--smoke`` runs every part at toy size on the CPU in a few minutes (the
smoke preset on a synthetic dataset, 1M parameters, a small MLP; airbench94
only if a path is given): it checks the suite, its numbers mean nothing.
The GPU machine needs the packages of ``pip install -e '.[examples]'``
(ml_collections among them).
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:
  import _common  # noqa: E402

import jax  # noqa: E402

EXAMPLE = _common.REPO_ROOT / "examples" / "cifar10"
sys.path.insert(0, str(EXAMPLE))
sys.path.insert(0, str(_common.BENCHMARKS_DIR))

import accumulation  # noqa: E402
import input_pipeline  # noqa: E402
import train  # noqa: E402
import update_step  # noqa: E402
from configs import default  # noqa: E402
from configs import smoke  # noqa: E402


def _mean_std(values):
  return {
    "mean": statistics.fmean(values),
    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    "values": list(values),
  }


def cifar10(data_dir, seeds, is_smoke, workdir):
  """The example's GPU recipe (smoke preset with --smoke) over seeds."""
  runs = []
  for seed in range(seeds):
    config = (smoke if is_smoke else default).get_config()
    config.update(data_dir=data_dir, seed=seed, plot=False, download=False)
    results = train.train_and_evaluate(config, os.path.join(workdir, f"seed{seed}"))
    runs.append(
      {
        "seed": seed,
        **{
          k: results[k]
          for k in results
          if k.endswith(("_accuracy", "_accuracy_tta", "_seconds"))
        },
      }
    )
    print(
      f"cifar10 seed {seed}: {results['test_accuracy_tta']:.4f} with TTA, "
      f"train {results['train_seconds']:.2f} s (airbench's clock), compile "
      f"{results['compile_seconds']:.1f} s",
      flush=True,
    )
  return {
    "preset": "smoke" if is_smoke else "default",
    "data_md5": results["data_md5"],
    "runs": runs,
    "test_accuracy": _mean_std([r["test_accuracy"] for r in runs]),
    "test_accuracy_tta": _mean_std([r["test_accuracy_tta"] for r in runs]),
    "train_seconds": _mean_std([r["train_seconds"] for r in runs]),
  }


def update_cost(is_smoke):
  """nag_optax against optax (and PyTorch) on one leaf, with the bandwidth."""
  n = 1_000_000 if is_smoke else 50_000_000
  device = update_step.torch_device()
  limit = update_step.bandwidth(n, is_smoke, device)
  limit_gbs = max(v["gb_per_s"] for v in limit.values())
  case = update_step.run_case(
    f"1 leaf of {n:,}", [(n,)], quick=is_smoke, limit_gbs=limit_gbs, device=device
  )
  update_step.print_case(case)
  return {"bandwidth_limit": limit, "case": case, "torch_device": device}


def accumulation_throughput(is_smoke):
  """Rows per second per way of accumulating, on the jit path."""
  hidden = (64, 32) if is_smoke else accumulation.MODELS["2.77M"]
  rows = 16 if is_smoke else 1024
  params = accumulation.mlp_params(hidden)
  out = {}
  for k in (4,) if is_smoke else (4, 8):
    cands, moved = [], {}
    for variant in accumulation.VARIANTS:
      cand, nbytes = accumulation.step_candidate(
        "jit", variant, params, k, rows_per_device=rows
      )
      cands.append(cand)
      moved[cand.name] = nbytes
    times = _common.interleaved(
      cands, warmup=2, rounds=3 if is_smoke else 10, per_round=1 if is_smoke else 3
    )
    for c in cands:
      c.release()
    step_rows = rows * k * jax.device_count()
    out[f"k={k}"] = {
      name: {
        **_common.summarize(ts),
        "rows_per_second": step_rows / statistics.median(ts),
        "collective_bytes": moved[name],
      }
      for name, ts in times.items()
    }
    for name, r in out[f"k={k}"].items():
      print(f"accumulation k={k} {name}: {r['rows_per_second']:,.0f} rows/s")
  return {"hidden": list(hidden), "rows_per_device_per_micro_batch": rows, "steps": out}


def airbench94(path, data_dir, seeds, workdir):
  """PyTorch airbench94 on the same GPU and data: its accuracy and time."""
  import importlib.util

  import torch

  data = input_pipeline.load_cifar10(data_dir, download=False)
  folder = pathlib.Path(workdir) / "airbench"
  (folder / "cifar10").mkdir(parents=True, exist_ok=True)
  for split in ("train", "test"):
    torch.save(
      {
        "images": torch.tensor(data[f"{split}_images"]),
        "labels": torch.tensor(data[f"{split}_labels"], dtype=torch.int64),
        "classes": [str(i) for i in range(10)],
      },
      folder / "cifar10" / f"{split}.pt",
    )
  spec = importlib.util.spec_from_file_location("airbench94", path)
  module = importlib.util.module_from_spec(spec)
  previous = os.getcwd()
  os.chdir(folder)  # it reads cifar10/*.pt from the working directory
  try:
    spec.loader.exec_module(module)
    runs = []
    for run in ["warmup", *range(seeds)]:
      printed = io.StringIO()
      start = time.perf_counter()
      with contextlib.redirect_stdout(printed):
        accuracy = float(module.main(run))
      wall = time.perf_counter() - start
      if run == "warmup":
        continue
      runs.append(
        {
          "run": run,
          "test_accuracy_tta": accuracy,
          "printed_seconds": _last_printed_time(printed.getvalue()),
          "wall_seconds": wall,
        }
      )
      print(f"airbench94 run {run}: {accuracy:.4f}, {runs[-1]['printed_seconds']} s")
  finally:
    os.chdir(previous)
  return {
    "source": str(path),
    "runs": runs,
    "test_accuracy_tta": _mean_std([r["test_accuracy_tta"] for r in runs]),
  }


def _last_printed_time(text):
  """The last number of airbench94's final table row (total_time_seconds)."""
  rows = [line for line in text.splitlines() if line.startswith("|")]
  try:
    return float(rows[-1].strip("| \n").split("|")[-1])
  except (IndexError, ValueError):
    return None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", default=None, help="folder holding CIFAR-10")
  parser.add_argument("--output", required=True, help="folder for gpu_suite.json")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--airbench", default=None, help="path of airbench94.py")
  parser.add_argument("--smoke", action="store_true", help="toy sizes, on CPU")
  parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out")
  args = parser.parse_args(argv)
  os.makedirs(args.output, exist_ok=True)
  env = _common.environment(argv)
  print(f"devices: {[d['device_kind'] for d in env['devices']]}", flush=True)
  payload = {"smoke": args.smoke}
  with tempfile.TemporaryDirectory() as workdir:
    data_dir = args.data_dir
    if args.smoke and data_dir is None:
      data_dir = os.path.join(workdir, "data")
      input_pipeline.write_synthetic(data_dir)
    if data_dir is None:
      parser.error("--data-dir is required without --smoke")
    seeds = min(args.seeds, 2) if args.smoke else args.seeds
    parts = {
      "cifar10": lambda: cifar10(data_dir, seeds, args.smoke, workdir),
      "update_step": lambda: update_cost(args.smoke),
      "accumulation": lambda: accumulation_throughput(args.smoke),
    }
    if args.airbench:
      parts["airbench94"] = lambda: airbench94(args.airbench, data_dir, seeds, workdir)
    for name, run in parts.items():
      if name in args.skip:
        continue
      start = time.perf_counter()
      payload[name] = run()
      payload[name]["part_seconds"] = time.perf_counter() - start
      print(f"{name}: {payload[name]['part_seconds']:.0f} s", flush=True)
  env["load_average_end"] = _common.load_average()
  path = pathlib.Path(args.output) / "gpu_suite.json"
  path.write_text(json.dumps({"environment": env, **payload}, indent=2, default=str))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
