"""Optional TensorBoard event files of the training curves.

``config.tensorboard=True`` writes, under ``<workdir>/tensorboard``, the
per-step ``train/loss``, ``train/accuracy`` and ``train/lr`` and the
per-evaluation ``test/accuracy`` (and ``test/accuracy_tta`` at the end), the
same numbers as ``steps.jsonl`` and ``metrics.jsonl``. View them with
``tensorboard --logdir <workdir>/tensorboard``. Event files are written with
tensorboardX (pure Python; ``pip install tensorboardX``), so neither
TensorFlow nor PyTorch is needed.
"""

import os


def _summary_writer_class():
  try:
    from tensorboardX import SummaryWriter
  except ImportError as error:
    raise ImportError(
      "config.tensorboard=True writes TensorBoard event files with "
      "tensorboardX: pip install tensorboardX (or set config.tensorboard=False)."
    ) from error
  return SummaryWriter


def check_available():
  """Raises ImportError now, before training, if tensorboardX is missing."""
  _summary_writer_class()


class TensorBoardLog:
  """Appends the rows of steps.jsonl and metrics.jsonl to event files.

  A resumed run (``resume_step`` > 0) purges the events that the interrupted
  run wrote after its last checkpoint, so every step appears once.
  """

  def __init__(self, workdir, resume_step=0):
    writer_class = _summary_writer_class()
    self._writer = writer_class(
      os.path.join(workdir, "tensorboard"),
      purge_step=resume_step + 1 if resume_step else None,
    )
    self._last_step = resume_step

  def write(self, step_rows, epoch_row):
    """Logs the step rows not logged yet and one row of metrics.jsonl."""
    for row in step_rows:
      if row["step"] > self._last_step:
        for name in ("loss", "accuracy", "lr"):
          self._writer.add_scalar(f"train/{name}", row[name], row["step"])
        self._last_step = row["step"]
    for key, name in (
      ("test_accuracy", "test/accuracy"),
      ("test_accuracy_tta", "test/accuracy_tta"),
    ):
      if key in epoch_row:
        self._writer.add_scalar(name, epoch_row[key], epoch_row["step"])
    self._writer.flush()

  def close(self):
    self._writer.close()
