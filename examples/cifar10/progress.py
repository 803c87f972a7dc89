"""What the terminal shows while the example trains: a live progress line.

`Progress.update(step, loss)` takes each step's loss where the loop already
has it on the host (where it writes the step's row of metrics.jsonl), so
the line adds no wait for the devices. On a terminal the line is redrawn in
place, at most every `tty_every_s`; written to a file or a pipe (CI logs,
`| tee`), it is a full line every `every_s` seconds. `Progress.print`
writes a permanent line (the end of an epoch) either way.

Plain code rather than tqdm or rich: off a terminal, tqdm still writes
carriage-return redraws into the log and rich's live display writes
nothing until it stops, while a log needs whole lines at a steady pace.
"""

import math
import sys
import time


def duration(seconds: float) -> str:
  """`m:ss`, or `h:mm:ss` from an hour on."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{seconds:02d}"
  return f"{minutes}:{seconds:02d}"


class Progress:
  """`step 120/1560  epoch 1/8  1043 img/s  loss 1.234  ETA 12:34`.

  Images per second are over the steps since the line was last shown; the
  ETA is the steps left at the mean pace of the steps this process ran.
  A no-op when not `enabled` (processes other than the first).
  """

  def __init__(
    self,
    *,
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
    start_step: int,
    every_s: float,
    tty_every_s: float = 0.5,
    stream=None,
    enabled: bool = True,
  ):
    self._stream = stream or sys.stdout
    self._enabled = enabled
    self._tty = enabled and self._stream.isatty()
    self._every_s = tty_every_s if self._tty else every_s
    self._total = total_steps
    self._per_epoch = steps_per_epoch
    self._epochs = math.ceil(total_steps / steps_per_epoch)
    self._batch = batch_size
    self._start_step = self._shown_step = start_step
    self._start = self._shown = time.monotonic()
    self._pending = False  # a line drawn in place, not yet ended

  def eta(self, step: int) -> float | None:
    """Seconds left at this process's mean pace (None before a step)."""
    ran = step - self._start_step
    if ran <= 0:
      return None
    return (time.monotonic() - self._start) / ran * (self._total - step)

  def update(self, step: int, loss: float) -> None:
    """Step `step` (counted from 1) is done with training loss `loss`."""
    now = time.monotonic()
    if not self._enabled or (now - self._shown < self._every_s and step < self._total):
      return
    rate = (step - self._shown_step) * self._batch / max(now - self._shown, 1e-9)
    eta = self.eta(step)
    epoch = min((step - 1) // self._per_epoch + 1, self._epochs)
    line = (
      f"step {step}/{self._total}  epoch {epoch}/{self._epochs}  "
      f"{rate:.0f} img/s  loss {loss:.4f}  ETA {duration(eta or 0)}"
    )
    self._shown, self._shown_step = now, step
    if self._tty:
      self._stream.write("\r" + line + "\x1b[K")
      self._pending = True
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def print(self, line: str) -> None:
    """A permanent line (replacing the live one on a terminal)."""
    if not self._enabled:
      return
    self._stream.write(("\r\x1b[K" if self._pending else "") + line + "\n")
    self._stream.flush()
    self._pending = False

  def close(self) -> None:
    """Ends a line drawn in place, so that what follows starts a line."""
    if self._pending:
      self._stream.write("\n")
      self._stream.flush()
      self._pending = False
