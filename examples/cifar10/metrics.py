"""Training curves: one JSON line per record, optionally mirrored to
TensorBoard, and a plot drawn from the file.

`MetricWriter.write(step, scalars)` appends `{"step": step, **scalars}` to
`<workdir>/metrics.jsonl` and, with `tensorboard=True`, writes the same
scalars as TensorBoard events under `<workdir>/tensorboard` (tensorboardX:
neither TensorFlow nor PyTorch is needed; `tensorboard --logdir ...`).
Each record is on disk when `write` returns (the file is appended to and
closed), so an interrupted run loses none. A resumed run first drops what
the interrupted one recorded after its checkpoint, so every step appears
once.
"""

import json
import os

FILE = "metrics.jsonl"


def read(workdir: str) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl`, in order ([] if none).

  A last line cut short (the process killed while writing it) is left out.
  """
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  rows = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      rows.append(json.loads(lines[-1]))
    except json.JSONDecodeError:
      if lines[-1].endswith("\n"):
        raise
  return rows


class MetricWriter:
  """Appends scalars to metrics.jsonl (and TensorBoard); a no-op when not
  `enabled` (processes other than the first of a multi-process run)."""

  def __init__(self, workdir, *, tensorboard=False, resume_step=0, enabled=True):
    self._path = os.path.join(workdir, FILE)
    self._enabled = enabled
    self._tensorboard = None
    if not enabled:
      return
    # The final evaluation's record is the one at the checkpoint's step that
    # a resumed run writes again (it resumes at the last step and evaluates).
    kept = [
      r
      for r in read(workdir)
      if r["step"] < resume_step
      or (r["step"] == resume_step and "eval_accuracy_tta" not in r)
    ]
    with open(self._path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError as error:
        raise ImportError(
          "config.tensorboard=True writes TensorBoard event files with "
          "tensorboardX: pip install tensorboardX (or set config.tensorboard=False)."
        ) from error
      self._tensorboard = SummaryWriter(
        os.path.join(workdir, "tensorboard"),
        purge_step=resume_step + 1 if resume_step else None,
      )

  def write(self, step: int, scalars: dict) -> None:
    if not self._enabled:
      return
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    if self._tensorboard is not None:
      for name, value in scalars.items():
        self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def plot(workdir: str, path: str | None = None) -> str:
  """Loss, accuracies and learning rate against the step, from metrics.jsonl.

  Returns the PNG's path (default `<workdir>/curves.png`).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read(workdir)
  path = path or os.path.join(workdir, "curves.png")
  train = [r for r in rows if "train_loss" in r]
  evals = [r for r in rows if "eval_accuracy" in r]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  steps = [r["step"] for r in train]
  axes[0].plot(steps, [r["train_loss"] for r in train])
  axes[0].set(xlabel="step", ylabel="train loss (per example)", yscale="log")
  axes[1].plot(
    steps, [r["train_accuracy"] for r in train], label="train batch", alpha=0.6
  )
  axes[1].plot(
    [r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="eval"
  )
  axes[1].set(xlabel="step", ylabel="accuracy")
  axes[1].legend()
  axes[2].plot(steps, [r["lr"] for r in train])
  axes[2].set(xlabel="step", ylabel="learning rate (non-bias groups)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
