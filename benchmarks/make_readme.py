"""Writes the measured figures of the READMEs from benchmarks/results/*.json.

Every region between ``<!-- generated: NAME -->`` and ``<!-- end generated:
NAME -->`` in a page of ``PAGES`` (benchmarks/README.md, the example's
README.md and the top-level README.md) is replaced by what
``RENDERERS[NAME]`` draws from the results files; the text outside those
regions carries no measured number. Standard library only, so that the
check is cheap.

    python benchmarks/make_readme.py           # rewrite the regions
    python benchmarks/make_readme.py --check   # exit 1 if a page differs
"""

import argparse
import json
import math
import pathlib
import re
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
EXAMPLE_README = HERE.parent / "examples" / "cifar10" / "README.md"
TOP_README = HERE.parent / "README.md"

REGION = re.compile(
  r"(<!-- generated: (?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)"
  r"(<!-- end generated: (?P=name) -->)",
  flags=re.S,
)


def load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def record(env: dict) -> str:
  """Where, with what and how a figure was measured, in one paragraph."""
  machine, versions = env["machine"], env["versions"]
  devices = env["devices"]
  kind = devices[0]["platform"].upper()
  device_text = f"{len(devices)} {kind} devices" if len(devices) > 1 else kind
  software = ", ".join(
    f"{name} {versions[name]}"
    for name in ("python", "jax", "jaxlib", "optax", "numpy", "flax", "torch")
    if versions.get(name)
  )
  tree = " (tracked files differed from it)" if env["git"]["dirty"] else " (clean tree)"
  start = env.get("load_average_start")
  end = env.get("load_average_end")
  return (
    f"*{device_text}: {machine['cpu_model']}, {machine['cpu_count']} cores;"
    f" {software}. Command `{env['command']}`, commit"
    f" `{env['git']['commit'][:7]}`{tree}, {env['timestamp_utc'][:16]} UTC,"
    f" load average {start} at start, {end} at end.*"
  )


def pct(x: float) -> str:
  return f"{100 * x:.0f}%"


# update_step.json ----------------------------------------------------------

BASELINE = "optax.sgd"
NAG_F32 = ("nag pytorch", "nag sutskever")


def render_update_step() -> str:
  data = load("update_step.json")
  limit = data["bandwidth_limit"]
  names = list(data["cases"][0]["candidates"])
  kernels = ", ".join(
    f"{name} {k['gb_per_s']:.1f} GB/s" for name, k in limit["kernels"].items()
  )
  parts = [
    record(data["environment"]),
    f"Memory-bandwidth limit, measured in the same run as the faster in-place"
    f" `x += y` on {limit['elements'] / 1e6:.0f}M float32 (12 bytes per element"
    f" moved): {kernels}; limit **{limit['gb_per_s']:.1f} GB/s**.",
    "Median time per update, ratio of medians to optax, fraction of the"
    f" bandwidth limit at {data['settings']['bytes_per_param']} B/param:",
  ]
  rows = []
  for case in data["cases"]:
    cells = [case["label"]]
    for name in names:
      c = case["candidates"].get(name)
      cells.append(
        "-"
        if c is None
        else f"{c['median_s'] * 1e3:.2f} ms<br>{c['ratio_to_optax']:.2f}x,"
        f" {pct(c['fraction_of_limit'])}"
      )
    rows.append(cells)
  parts.append(table(["CPU, median per update", *names], rows))
  parts.append(
    "Per-round ratios to the baseline (median and interquartile range over"
    " the rounds, both blocks pooled), medians of the bfloat16 buffer against"
    " float32, and the bytes XLA's cost analysis counts per parameter:"
  )
  rows = []
  for case in data["cases"]:
    c = case["candidates"]
    rounds = case["blocks"] * case["rounds_per_block"]
    cells = [case["label"], rounds, case["load_average_before"][0]]
    for name in (*NAG_F32, "nag bf16 m"):
      r = c[name]
      q1, q3 = r["per_round_ratio_q1_q3"]
      cells.append(f"{r['per_round_ratio_median']:.2f} ({q1:.2f}-{q3:.2f})")
    cells.append(f"{c['nag bf16 m']['median_s'] / c['nag pytorch']['median_s']:.2f}")
    cells.append(f"{c['optax.sgd bf16 m']['median_s'] / c[BASELINE]['median_s']:.2f}")
    cells.append(
      f"{c['nag pytorch']['xla_bytes_per_param']:.0f} /"
      f" {c['nag bf16 m']['xla_bytes_per_param']:.0f}"
    )
    rows.append(cells)
  parts.append(
    table(
      [
        "CPU",
        "rounds",
        "load (1 min)",
        "nag pytorch / optax",
        "nag sutskever / optax",
        "nag bf16 m / optax",
        "nag bf16 m / nag f32",
        "optax bf16 / optax f32",
        "XLA bytes/param f32 / bf16",
      ],
      rows,
    )
  )
  return "\n\n".join(parts)


def render_update_targets() -> str:
  data = load("update_step.json")
  cases = data["cases"]
  lines = []
  for name in NAG_F32:
    medians = [c["candidates"][name]["per_round_ratio_median"] for c in cases]
    upper = [c["candidates"][name]["per_round_ratio_q1_q3"][1] for c in cases]
    above = sum(m > 1.0 for m in medians)
    lines.append(
      f"  - `{name}`: median per-round ratio {min(medians):.2f}-{max(medians):.2f}"
      f" over the {len(cases)} cases, above 1.0 in {above} of them; upper"
      f" quartiles {min(upper):.2f}-{max(upper):.2f}."
    )
  big = max(cases, key=lambda c: c["n_params"] / c["n_leaves"])
  c = big["candidates"]
  resnet = next((k for k in cases if "ResNet" in k["label"]), cases[-1])
  limit = data["bandwidth_limit"]["gb_per_s"]
  nag = c["nag pytorch"]
  actual = nag["gb_per_s_at_20B"] * nag["xla_bytes_per_param"] / 20
  return "\n".join(
    [
      "- *No slower than optax (ratio <= 1.0 within noise) on every case*: the"
      " per-round ratio nag/optax, median and interquartile range per case, is"
      " in the second table; summarised:",
      *lines,
      f"- *At least 80% of the measured bandwidth limit for the {big['label']}*:"
      f" nag_optax reached {pct(nag['fraction_of_limit'])}"
      f" ({nag['gb_per_s_at_20B']:.1f} GB/s at 20 B/param; optax"
      f" {pct(c[BASELINE]['fraction_of_limit'])}, torch fused"
      f" {pct(c['torch fused']['fraction_of_limit'])}). At the"
      f" {nag['xla_bytes_per_param']:.0f} B/param XLA counts that is"
      f" {actual:.1f} GB/s of traffic, {pct(actual / limit)} of the limit.",
      f"- *bf16 momentum faster than float32 momentum by the bytes it saves*"
      f" (ideal {c['nag bf16 m']['xla_bytes_per_param']:.0f}/"
      f"{nag['xla_bytes_per_param']:.0f} ="
      f" {c['nag bf16 m']['xla_bytes_per_param'] / nag['xla_bytes_per_param']:.2f}):"
      f" nag_optax's bf16 step took"
      f" {c['nag bf16 m']['median_s'] / nag['median_s']:.2f}x its float32 time"
      f" on the {big['label']} and"
      f" {resnet['candidates']['nag bf16 m']['median_s'] / resnet['candidates']['nag pytorch']['median_s']:.2f}x"  # noqa: E501
      f" on {resnet['label']}; optax with a bf16 accumulator"
      f" {c['optax.sgd bf16 m']['median_s'] / c[BASELINE]['median_s']:.2f}x and"
      f" {resnet['candidates']['optax.sgd bf16 m']['median_s'] / resnet['candidates'][BASELINE]['median_s']:.2f}x.",  # noqa: E501
    ]
  )


# convergence.json ----------------------------------------------------------


def render_convergence() -> str:
  data = load("convergence.json")
  rows = data["quadratic"]
  kappas = sorted({r["kappa"] for r in rows})
  methods = list(dict.fromkeys(r["method"] for r in rows))
  parts = [record(data["environment"]) + f" {data['seconds']:.0f} s in all."]
  for tol in ("1e-06", "1e-10"):
    body = []
    for method in methods:
      cells = [method]
      for kappa in kappas:
        (r,) = [x for x in rows if x["method"] == method and x["kappa"] == kappa]
        count = r[f"iters_{tol}"]
        text = f"> {r['steps_run']}" if count is None else str(count)
        closed = r.get(f"closed_form_{tol}")
        if f"closed_form_{tol}" in r and closed != count:
          text = f"**{text}** (closed form {closed})"
        cells.append(text)
      body.append(cells)
    log_eps = math.log(1 / float(tol))
    body.append(
      ["*theory: kappa ln(1/eps)*"] + [f"*{k * log_eps:.0f}*" for k in kappas]
    )
    body.append(
      ["*theory: sqrt(kappa) ln(1/eps)*"]
      + [f"*{math.sqrt(k) * log_eps:.0f}*" for k in kappas]
    )
    parts.append(f"tol = {float(tol):g}:")
    parts.append(table(["method"] + [f"kappa={k:g}" for k in kappas], body))
  checked = [r for r in rows for t in ("1e-06", "1e-10") if f"closed_form_{t}" in r]
  mismatches = data.get("closed_form_mismatches", [])
  numpy_cells = sum(
    f"numpy_transcription_{t}" in r for r in rows for t in ("1e-06", "1e-10")
  )
  numpy_bad = data.get("numpy_transcription_mismatches", [])
  gd = [r for r in rows if r["method"] == "gradient descent"]
  share = [r["iters_1e-10"] / (r["kappa"] * math.log(1e10)) for r in gd]
  parts.append(
    "\n".join(
      [
        f"- Gradient descent against its closed form: {len(checked)} cells"
        f" checked, {len(mismatches)} differ.",
        f"- The restart rows against the NumPy transcription of the restart"
        f" rule: {numpy_cells} cells checked, {len(numpy_bad)} differ.",
        f"- Gradient descent needs {pct(min(share))}-{pct(max(share))} of"
        " kappa ln(1/eps) at tol 1e-10.",
      ]
    )
  )
  return "\n\n".join(parts)


def render_logistic() -> str:
  data = load("convergence.json")
  if "logistic" not in data:
    return "Not in the recorded run (no CIFAR-10 under `data/`)."
  problem = data["logistic"]["problem"]
  rows = [
    [
      r["method"],
      r["iters_1e-06"] if r["iters_1e-06"] is not None else f"> {r['steps_run']}",
      r["iters_1e-10"] if r["iters_1e-10"] is not None else f"> {r['steps_run']}",
      "-" if r["restarts"] is None else r["restarts"],
    ]
    for r in data["logistic"]["results"]
  ]
  return "\n\n".join(
    [
      f"{problem['data']}: n = {problem['n_examples']}, d ="
      f" {problem['n_features']}, L = {problem['L']:.2f}, lambda ="
      f" {problem['lambda']:.5f}, kappa = {problem['kappa_bound']:.0f}; f* ="
      f" {problem['f_star']:.12f} from Newton's method (gradient norm"
      f" {problem['newton_grad_norm']:.0e}).",
      table(["method", "tol 1e-6", "tol 1e-10", "restarts"], rows),
    ]
  )


# accumulation.json ---------------------------------------------------------


def render_accumulation() -> str:
  data = load("accumulation.json")
  steps = [
    [m, k, path, v, f"{ms:.3g}", f"{s:.2f}", f"{mib:.3g}"]
    for m, k, path, v, ms, s, mib in data["steps"]["rows"]
  ]
  micro = [[n, f"{ms:.3g}", f"{r:.2f}"] for n, ms, r in data["micro_step"]["rows"]]
  state = [
    [p, v, f"{mib:.3g}", f"{x:.3f}"] for p, v, mib, x in data["state_bytes"]["rows"]
  ]
  return "\n\n".join(
    [
      record(data["environment"]),
      table(
        [
          "model",
          "k",
          "path",
          "accumulation",
          "ms per step (CPU)",
          "speed-up",
          "collective MiB per step",
        ],
        steps,
      ),
      "Single device, 200 leaves, 10M parameters:",
      table(["step", "ms (CPU)", "ratio to optax.MultiSteps"], micro),
      "Optimizer state per device, 2.77M model:",
      table(["path", "accumulation", "MiB per device (max)", "x the momentum"], state),
    ]
  )


def render_accumulation_targets() -> str:
  data = load("accumulation.json")
  rows = data["steps"]["rows"]

  def speedups(model, k, variant):
    return [
      s for m, kk, _, v, _, s, _ in rows if m == model and kk == k and v == variant
    ]

  lines = []
  for model in data["settings"]["models"]:
    micro = speedups(model, 4, "micro_batches")
    per_call = {
      path: s
      for m, k, path, v, _, s, _ in rows
      if m == model and k == 4 and v == "accumulate_gradients"
    }
    faster = sum(
      s > per_call[path]
      for m, k, path, v, _, s, _ in rows
      if m == model and k == 4 and v == "micro_batches" and path in per_call
    )
    lines.append(
      f"  - {model}, k = 4, `micro_batches`: {min(micro):.2f}x-{max(micro):.2f}x"
      f" over {len(micro)} paths, faster than `accumulate_gradients` on"
      f" {faster} of {len(per_call)}."
    )
  zero1 = [
    s
    for m, k, path, v, _, s, _ in rows
    if k == 4 and path == "jit ZeRO-1" and v == "micro_batches"
  ]
  state = {(p, v): x for p, v, _, x in data["state_bytes"]["rows"]}
  micro_step = {n: r for n, _, r in data["micro_step"]["rows"]}
  return "\n".join(
    [
      "- **In-step accumulation >= 2x the baseline at k = 4, and no slower"
      " than per-call accumulation**:",
      *lines,
      f"- **jit ZeRO-1 >= 1.8x with 1/8 of the state per device**:"
      f" {', '.join(f'{s:.2f}x' for s in zero1)} at k = 4 with `micro_batches`,"
      f" {state[('jit ZeRO-1', 'micro_batches')]:.3f} x the momentum per device.",
      f"- **Micro-step <= 0.6x optax.MultiSteps**:"
      f" {micro_step['accumulate_gradients micro-step']:.2f}x.",
    ]
  )


# optimizers_cifar10*.json --------------------------------------------------


def render_tuning() -> str:
  data = load("optimizers_cifar10_tuning.json")
  rows = []
  for name, r in data["results"].items():
    scores = ", ".join(
      f"{run['learning_rate']:g}: {100 * run['val_accuracy']:.2f}" for run in r["runs"]
    )
    edge = " (grid edge)" if r.get("best_at_grid_edge") else ""
    rows.append([name, scores, f"{r['best_learning_rate']:g}{edge}"])
  earlier = data["environment"].get("earlier_commands") or []
  merged = (
    " Merged from the commands "
    + ", ".join(f"`{c}`" for c in earlier)
    + " and this one."
    if earlier
    else ""
  )
  minutes = sum(run["seconds"] for r in data["results"].values() for run in r["runs"])
  return "\n\n".join(
    [
      record(data["environment"])
      + merged
      + f" Training time summed over the runs: {minutes / 60:.1f} min.",
      table(["CPU, seed 0", "peak lr: validation accuracy %", "chosen"], rows),
    ]
  )


PAIRS = (
  ("nesterov sutskever", "nesterov pytorch"),
  ("nesterov pytorch + restart", "nesterov pytorch"),
  ("nesterov sutskever + restart", "nesterov sutskever"),
  ("nag_optax.nadam", "optax.adamw"),
  ("nag_optax.adan", "optax.adan"),
)


def render_optimizers() -> str:
  data = load("optimizers_cifar10.json")
  res = data["results"]
  rows = []
  for name, r in res.items():
    seconds = statistics.median(run["seconds"] for run in r["runs"])
    restarts = [run.get("restarts") for run in r["runs"]]
    rows.append(
      [
        name,
        f"{r['learning_rate']:g}",
        f"{100 * r['test_accuracy_mean']:.2f} [{100 * r['test_accuracy_min']:.2f},"
        f" {100 * r['test_accuracy_max']:.2f}]",
        f"{r['test_loss_mean']:.3f} [{r['test_loss_min']:.3f},"
        f" {r['test_loss_max']:.3f}]",
        ", ".join(str(x) for x in restarts) if any(restarts) else "0",
        f"{seconds:.0f}",
      ]
    )
  lines = []
  for a, b in PAIRS:
    if a not in res or b not in res:
      continue
    ra, rb = res[a], res[b]
    apart = (
      ra["test_accuracy_min"] > rb["test_accuracy_max"]
      or rb["test_accuracy_min"] > ra["test_accuracy_max"]
    )
    lines.append(
      f"- {a} against {b}: {100 * ra['test_accuracy_mean']:.2f}% against"
      f" {100 * rb['test_accuracy_mean']:.2f}%"
      f" ({100 * (ra['test_accuracy_mean'] - rb['test_accuracy_mean']):+.2f}"
      f" points); min-max ranges {'apart' if apart else 'overlap'}."
    )
  total = sum(run["seconds"] for r in res.values() for run in r["runs"])
  return "\n\n".join(
    [
      record(data["environment"])
      + f" Training time summed over the runs: {total / 60:.1f} min.",
      table(
        [
          "CPU, CIFAR-10",
          "peak lr",
          "test acc % mean [min, max]",
          "test loss mean [min, max]",
          "restarts per seed",
          "median s / run",
        ],
        rows,
      ),
      "\n".join(lines),
    ]
  )


# cifar10_cpu.json ----------------------------------------------------------


def render_cifar10_example() -> str:
  data = load("cifar10_cpu.json")
  rows = [
    [
      run["seed"],
      f"{100 * run['test_accuracy']:.2f}%",
      f"{100 * run['test_accuracy_tta']:.2f}%",
      f"{run['process_wall_seconds']:.0f} s"
      f" ({run['process_wall_seconds'] / 60:.1f} min)",
      f"{run['train_seconds']:.0f} s",
      f"{run['compile_seconds']:.0f} s",
      run["steps"],
    ]
    for run in data["runs"]
  ]
  tta = data["summary"]["test_accuracy_tta"]
  first = next(run for run in data["runs"] if run["seed"] == 0)
  first_ok = (
    first["test_accuracy_tta"] >= 0.875 and first["process_wall_seconds"] <= 15 * 60
  )
  return "\n\n".join(
    [
      record(data["environment"]) + f" Dataset: {data['dataset']}.",
      table(
        [
          "seed",
          "test accuracy",
          "with 6-view TTA",
          "wall (process)",
          "train (airbench's clock)",
          "compile",
          "steps",
        ],
        rows,
      ),
      f"With TTA {100 * tta['mean']:.2f}% +- {100 * tta['std']:.2f} (mean +- std"
      f" over {len(rows)} seeds).",
      f"Target: at least 87.5% with TTA for seed 0 within 15 minutes end to"
      f" end: {'met' if first_ok else 'not met'} (seed 0:"
      f" {100 * first['test_accuracy_tta']:.2f}% in"
      f" {first['process_wall_seconds'] / 60:.1f} min).",
    ]
  )


def render_cifar10_time() -> str:
  """The top-level README's sentence on how long the first command takes."""
  data = load("cifar10_cpu.json")
  walls = [run["process_wall_seconds"] for run in data["runs"]]
  trains = [run["train_seconds"] for run in data["runs"]]
  machine = data["environment"]["machine"]

  def span(values, digits, scale=1.0):
    low, high = (f"{scale * v:.{digits}f}" for v in (min(values), max(values)))
    return low if low == high else f"{low}-{high}"

  return (
    f"How long they take: the first trained for {span(walls, 1, 1 / 60)}"
    f" minutes end to end ({span(walls, 0)} s,"
    f" of which {span(trains, 0)} s training, over"
    f" {len(walls)} seeds) on a {machine['cpu_count']}-core {machine['cpu_model']}"
    f" machine (load average {data['environment']['load_average_start'][0]} when"
    " it started), once installed and with the data in `data/`"
    " (`benchmarks/results/cifar10_cpu.json` records the machine, versions and"
    " command)."
  )


# the scripts table ---------------------------------------------------------


def render_scripts() -> str:
  conv = load("convergence.json")
  opt = load("optimizers_cifar10.json")
  tune = load("optimizers_cifar10_tuning.json")
  c10 = load("cifar10_cpu.json")

  def minutes(record):
    return sum(run["seconds"] for r in record["results"].values() for run in r["runs"])

  walls = [run["process_wall_seconds"] for run in c10["runs"]]
  rows = [
    [
      "`update_step.py`",
      "cost of one update against optax, PyTorch and memory bandwidth",
      "not recorded",
      "`results/update_step.json`",
    ],
    [
      "`convergence.py`",
      "iterations to tolerance against theory and closed forms",
      f"{conv['seconds']:.0f} s",
      "`results/convergence.json`, `results/convergence.png`",
    ],
    [
      "`accumulation.py`",
      "optimizer step with k micro-batches on every parallel path, micro-step"
      " and state per device against optax.MultiSteps on 8 CPU devices",
      "not recorded",
      "`results/accumulation.json`",
    ],
    [
      "`optimizers_cifar10.py`",
      "the Nesterov family, NAdam, Adan, optax.adan and AdamW on CIFAR-10 at a"
      " fixed budget, 3 seeds",
      f"training {minutes(opt) / 60:.1f} min (`--tune`: {minutes(tune) / 60:.1f} min)",
      "`results/optimizers_cifar10.json`, `results/optimizers_cifar10_tuning.json`",
    ],
    [
      "`cifar10_example.py`",
      "the CIFAR-10 example end to end, accuracy and time per seed",
      f"{min(walls) / 60:.1f}-{max(walls) / 60:.1f} min per seed (cpu preset)",
      "`results/cifar10_cpu.json`",
    ],
    [
      "`gpu_suite.py`",
      "every GPU figure in one command (`--smoke`: toy size on a CPU)",
      "GPU: not yet run",
      "`OUTPUT/gpu_suite.json`",
    ],
  ]
  return table(["script", "measures", "recorded time (CPU)", "results"], rows)


RENDERERS = {
  "scripts": render_scripts,
  "update_step": render_update_step,
  "update_targets": render_update_targets,
  "convergence": render_convergence,
  "logistic": render_logistic,
  "accumulation": render_accumulation,
  "accumulation_targets": render_accumulation_targets,
  "tuning": render_tuning,
  "optimizers": render_optimizers,
  "cifar10_example": render_cifar10_example,
  "cifar10_time": render_cifar10_time,
}

# The regions each page must have.
PAGES = {
  README: tuple(name for name in RENDERERS if name != "cifar10_time"),
  EXAMPLE_README: ("cifar10_example",),
  TOP_README: ("cifar10_time",),
}


def render(text: str, regions=PAGES[README]) -> str:
  """``text`` with every generated region redrawn from the results files;
  ``regions`` are the names it must contain."""
  seen = []

  def replace(match):
    name = match["name"]
    if name not in RENDERERS:
      raise KeyError(f"no renderer for the region {name!r}")
    seen.append(name)
    return f"{match[1]}\n{RENDERERS[name]()}\n\n{match[4]}"

  out = REGION.sub(replace, text)
  missing = sorted(set(regions) - set(seen))
  if missing:
    raise KeyError(f"no region for {missing}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--check", action="store_true", help="exit 1 if README.md is not what it writes"
  )
  args = parser.parse_args(argv)
  stale = []
  for page, regions in PAGES.items():
    current = page.read_text(encoding="utf-8")
    wanted = render(current, regions)
    if current != wanted:
      stale.append(page.relative_to(HERE.parent))
      if not args.check:
        page.write_text(wanted, encoding="utf-8")
  if args.check and stale:
    print(
      f"{', '.join(map(str, stale))} differ from the results files: run"
      " python benchmarks/make_readme.py",
      file=sys.stderr,
    )
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
