"""CIFAR-10: the official files read safely, downloaded reliably, and the
per-epoch augmentation plan applied on the device.

`load_cifar10(data_dir)` accepts `data_dir/cifar-10-batches-py/` or
`data_dir/cifar-10-python.tar.gz` (the official "python version"), and with
neither (and `download=True`) fetches the official archive: with a time-out
and retries, resuming a partial download, its MD5 checked. The files are
pickles: they are read with an unpickler that admits only the builtin types
those files contain, so a crafted file cannot run code.

`epoch_plan` and `augment_batch` are airbench's augmentation (reflect-padded
random crops, alternating flips) as pure functions on the device.
"""

import hashlib
import http.client
import io
import os
import pickle
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
URL_ENV = "CIFAR10_URL"  # a mirror of the official archive, if set
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_BYTES = 170_498_071  # the official archive's size
# The sizes shown are in MB of 10^6 bytes throughout: "170.5 MB".
ARCHIVE_SIZE = f"{ARCHIVE_BYTES / 1e6:.1f} MB"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
NUM_CLASSES = 10
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class DataError(ValueError):
  """The CIFAR-10 files are missing, corrupt, not CIFAR-10, or not
  downloadable."""


# What the batches reference: NumPy's array reconstruction (the official
# files), plus _codecs.encode, which copies re-pickled by Python 3 with
# protocol 2 use to store bytes; it only turns a string into bytes. Nothing
# else: their other values are dicts, lists, bytes, strings and ints.
_ALLOWED_GLOBALS = {
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Admits only the NumPy array constructors the official files use, so a
  crafted file cannot name a function to run (os.system, eval, ...)."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise DataError(
        f"refusing to load {module}.{name}: CIFAR-10 batch files contain no "
        "objects of that kind (crafted or foreign pickle)"
      )
    return super().find_class(module, name)


def _unpickle(raw: bytes, name: str) -> dict:
  try:
    batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except DataError:
    raise
  except Exception as error:  # truncated or not a pickle at all
    raise DataError(f"{name}: not a readable CIFAR-10 batch ({error!r})") from error
  if not isinstance(batch, dict):
    raise DataError(f"{name}: expected a dict, found {type(batch).__name__}")
  return batch


def _decode(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(N, 32, 32, 3) uint8 images and N int32 labels (official files: N = 10000)."""
  data, labels = batch.get(b"data"), batch.get(b"labels")
  if data is None or labels is None:
    raise DataError(f"{name}: missing 'data' or 'labels' (keys: {sorted(batch)})")
  if isinstance(data, (bytes, bytearray)):
    data = np.frombuffer(data, np.uint8)
  data = np.asarray(data)
  labels = np.asarray(labels)
  count = len(labels) if labels.ndim == 1 else -1
  if data.dtype != np.uint8 or count < 1 or data.size != count * 3072:
    raise DataError(
      f"{name}: 'data' should be Nx3072 uint8 for its N labels, got "
      f"{data.dtype} with {data.size} values and labels of shape {labels.shape}"
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{name}: 'labels' should be integers")
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise DataError(f"{name}: labels outside 0..9")
  images = data.reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _missing_data_message(data_dir: str, reason: str) -> str:
  """One line: why, then what to download and where to put it."""
  return (
    f"{reason}; CIFAR-10 is needed in {os.path.abspath(data_dir)}: download "
    f"{ARCHIVE} (the 'CIFAR-10 python version', {ARCHIVE_SIZE}, MD5 {MD5}) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html and put it, or its extracted "
    f"{FOLDER}/ folder, there; or point --config.data_dir at the folder that "
    f"holds it; or set {URL_ENV} to a mirror of the archive"
  )


def source_url() -> str:
  """Where `download` fetches from: `CIFAR10_URL` if set, else the official
  address."""
  return os.environ.get(URL_ENV) or URL


def _megabytes(count: int) -> str:
  return f"{count / 1e6:.1f} MB"


def _cannot_connect(error: BaseException) -> bool:
  """Whether no connection could be made at all (refused, no such host, no
  such file): offline, most likely, where waiting and retrying gains
  nothing."""
  reason = getattr(error, "reason", error)
  return isinstance(
    reason, ConnectionRefusedError | socket.gaierror | FileNotFoundError
  ) or isinstance(error, FileNotFoundError)


def download(
  data_dir: str,
  url: str | None = None,
  md5: str | None = None,
  *,
  timeout_s: float = 60.0,
  retries: int = 3,
  backoff_s: float = 2.0,
  report_every_s: float = 30.0,
  stream=None,
) -> str:
  """Downloads the official archive into `data_dir`, resuming and retrying.

  Announces itself (size and address), then shows a progress bar: redrawn
  in place on a terminal, a full line every `report_every_s` seconds and at
  the end otherwise. Bytes go to `<archive>.part`; an interrupted attempt (a
  lost connection, a time-out, a killed process) leaves it in place and the
  next attempt asks the server for the rest (an HTTP range request; a
  server that ignores it sends everything again). Only once the whole file
  has the right MD5 is it renamed to `cifar-10-python.tar.gz`; a file with
  the wrong checksum is deleted. When no connection can be made at all
  (refused, unknown host: offline) there is no retry; the folders it
  created are removed again if they are empty.

  Args:
    data_dir: where the archive goes.
    url: default: the `CIFAR10_URL` environment variable, else the official
      address.
    md5: the expected checksum (default: the official archive's).
    timeout_s: seconds without progress before an attempt is abandoned.
    retries: attempts after the first, `backoff_s` x 2^i seconds apart.
    backoff_s: the first wait between attempts.
    report_every_s: seconds between progress lines when `stream` is not a
      terminal.
    stream: where the announcement and the progress go (default stdout).

  Returns:
    The archive's path.

  Raises:
    DataError: one line with what to download and where to put it, when
      every attempt failed or the checksum is wrong.
  """
  url = url or source_url()
  md5 = MD5 if md5 is None else md5
  stream = stream or sys.stdout
  created = []
  path = os.path.abspath(data_dir)
  while not os.path.exists(path):
    created.insert(0, path)
    path = os.path.dirname(path)
  os.makedirs(data_dir, exist_ok=True)
  target = os.path.join(data_dir, ARCHIVE)
  part = target + ".part"
  bar = _Bar(stream, report_every_s)
  try:
    for attempt in range(retries + 1):
      try:
        _fetch(url, part, timeout_s, bar, os.path.abspath(data_dir))
        break
      except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        bar.end()
        reason = getattr(error, "reason", error)
        if attempt == retries or _cannot_connect(error):
          tries = f"after {attempt + 1} attempts" if attempt else "not retried"
          raise DataError(
            _missing_data_message(
              data_dir, f"Could not download {url} ({reason}; {tries})"
            )
          ) from None
        wait = backoff_s * 2**attempt
        bar.say(f"download failed ({reason}); retrying in {wait:.0f} s")
        time.sleep(wait)
    if _md5(part) != md5:
      os.remove(part)
      raise DataError(
        _missing_data_message(
          data_dir, f"The file downloaded from {url} has the wrong MD5"
        )
      )
  except BaseException:
    bar.end()
    for folder in reversed(created):
      try:
        os.rmdir(folder)  # only if empty: a partial download is kept
      except OSError:
        break
    raise
  os.replace(part, target)
  return target


class _Bar:
  """The download's progress: `[#####     ] 85.2/170.5 MB`."""

  def __init__(self, stream, every_s: float):
    self._stream, self._every_s = stream, every_s
    self._tty = stream.isatty()
    self._shown = -float("inf")
    self._pending = False

  def show(self, done: int, total: int, force: bool = False) -> None:
    now = time.monotonic()
    every = 0.2 if self._tty else self._every_s
    if not force and now - self._shown < every:
      return
    self._shown = now
    if total:
      filled = 30 * done // total
      line = f"[{'#' * filled:<30}] {done / 1e6:.1f}/{total / 1e6:.1f} MB"
    else:
      line = f"{done / 1e6:.1f} MB"
    if self._tty:
      self._stream.write("\r" + line + "\x1b[K")
      self._pending = True
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def say(self, line: str) -> None:
    """A line of its own (after a bar drawn in place)."""
    self.end()
    self._stream.write(line + "\n")
    self._stream.flush()

  def end(self) -> None:
    """Ends a bar drawn in place, so that what follows starts a line."""
    if self._pending:
      self._stream.write("\n")
      self._stream.flush()
      self._pending = False


def _fetch(url: str, part: str, timeout_s: float, bar: _Bar, folder: str) -> None:
  """One attempt: appends the rest of `url` to `part`, with a progress bar."""
  done = os.path.getsize(part) if os.path.exists(part) else 0
  request = urllib.request.Request(url)
  if done:
    request.add_header("Range", f"bytes={done}-")
  with urllib.request.urlopen(request, timeout=timeout_s) as response:
    resumed = getattr(response, "status", 200) == 206
    mode = "ab" if resumed else "wb"
    done = done if resumed else 0
    total = done + int(response.headers.get("Content-Length") or 0)
    size = _megabytes(total) if total else "size unknown"
    how = f", resuming at {_megabytes(done)}" if done else ""
    bar.say(f"downloading {ARCHIVE} ({size}) from {url} to {folder}{how}")
    with open(part, mode) as out:
      while True:
        try:
          chunk = response.read(1 << 20)
        except http.client.IncompleteRead as error:  # keep what did arrive
          out.write(error.partial)
          got = done + len(error.partial)
          raise OSError(f"connection closed after {got} bytes") from None
        if not chunk:
          break
        out.write(chunk)
        done += len(chunk)
        bar.show(done, total)
  bar.show(done, total, force=True)
  bar.end()
  if total and done < total:
    raise OSError(f"connection closed after {done} of {total} bytes")


def has_cifar10(data_dir: str) -> bool:
  """Whether `data_dir` holds the extracted folder or the archive."""
  return os.path.isdir(os.path.join(data_dir, FOLDER)) or os.path.isfile(
    os.path.join(data_dir, ARCHIVE)
  )


def load_cifar10(data_dir: str, *, download: bool = True) -> dict[str, np.ndarray]:
  """Loads CIFAR-10 as uint8 NHWC images and int32 labels.

  Args:
    data_dir: folder holding `cifar-10-batches-py/` or
      `cifar-10-python.tar.gz` (the official python-version layout).
    download: fetch the official archive when neither is there.

  Returns:
    {"train_images": (50000, 32, 32, 3) uint8, "train_labels": (50000,)
    int32, "test_images": (10000, 32, 32, 3) uint8, "test_labels": (10000,)
    int32, "md5": the MD5 of the six batch files' bytes in order, which
    identifies the copy whichever layout it came in}.

  Raises:
    DataError: missing files (with what to download and where), wrong
      checksum, truncated or foreign pickles, wrong shapes or labels.
  """
  folder = os.path.join(data_dir, FOLDER)
  archive = os.path.join(data_dir, ARCHIVE)
  if os.path.isdir(folder):

    def read(name):
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise DataError(f"{path} is missing: is {folder} a complete CIFAR-10 copy?")
      with open(path, "rb") as f:
        return f.read()

    return _assemble(read)
  if not os.path.isfile(archive):
    if not download:
      raise DataError(
        _missing_data_message(data_dir, f"No CIFAR-10 in {data_dir} (download is off)")
      )
    archive = globals()["download"](data_dir)
  elif _md5(archive) != MD5:
    raise DataError(f"{archive} has the wrong MD5 checksum (corrupt or not CIFAR-10)")
  try:
    with tarfile.open(archive, "r:gz") as tar:
      members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}

      def read(name):
        if name not in members:
          raise DataError(f"{archive} has no {name}")
        return tar.extractfile(members[name]).read()

      return _assemble(read)
  except (tarfile.TarError, EOFError, OSError) as error:
    raise DataError(f"{archive} is not a readable tar.gz ({error!r})") from error


def _assemble(read) -> dict[str, np.ndarray]:
  digest = hashlib.md5()
  split = {}
  for name in TRAIN_FILES + TEST_FILES:
    raw = read(name)
    digest.update(raw)
    split[name] = _decode(_unpickle(raw, name), name)

  def join(names):
    return (np.concatenate([split[n][i] for n in names]) for i in (0, 1))

  train_images, train_labels = join(TRAIN_FILES)
  test_images, test_labels = join(TEST_FILES)
  return {
    "train_images": train_images,
    "train_labels": train_labels,
    "test_images": test_images,
    "test_labels": test_labels,
    "md5": digest.hexdigest(),
  }


def write_synthetic(data_dir: str, images_per_file: int = 512, seed: int = 0) -> str:
  """A small learnable stand-in for CIFAR-10 in the official layout.

  Writes `data_dir/cifar-10-batches-py/` (five training batches, a test
  batch and `batches.meta`, protocol-2 pickles with bytes keys as in the
  official archive) of `images_per_file` images each. Each class has its
  own colour and ring frequency under heavy noise, so a small network
  learns it in a few steps (mirror images and small shifts keep the class,
  as in CIFAR-10): for tests and smoke runs, never for figures.

  Returns:
    The folder written.
  """
  rng = np.random.default_rng(seed)
  folder = os.path.join(data_dir, FOLDER)
  os.makedirs(folder, exist_ok=True)
  colours = rng.uniform(40, 215, (NUM_CLASSES, 3))
  yy, xx = np.mgrid[0:32, 0:32] - 15.5
  radius = np.hypot(xx, yy)
  rings = np.stack([np.sin(radius * f) for f in np.linspace(0.3, 1.5, NUM_CLASSES)])
  for name in TRAIN_FILES + TEST_FILES:
    labels = rng.integers(0, NUM_CLASSES, images_per_file)
    images = colours[labels][:, None, None, :] + 30 * rings[labels][..., None]
    images = images + rng.normal(0, 40, images.shape)
    data = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    batch = {
      b"batch_label": name.encode(),
      b"labels": labels.tolist(),
      b"data": data.reshape(images_per_file, 3072),
      b"filenames": [f"{name}_{i}.png".encode() for i in range(images_per_file)],
    }
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(batch, f, protocol=2)
  meta = {b"label_names": [f"class{i}".encode() for i in range(NUM_CLASSES)]}
  with open(os.path.join(folder, "batches.meta"), "wb") as f:
    pickle.dump(meta, f, protocol=2)
  return folder


def normalize(images):
  """uint8 NHWC to float32, per-channel standardised (CIFAR-10 statistics)."""
  return (images.astype(np.float32) / 255.0 - MEAN) / STD


def split_validation(data: dict, validation_images: int) -> dict:
  """Holds out the last `validation_images` training images as the set to
  evaluate on (returned as "eval_*"); without, the test set is evaluated."""
  data = dict(data)
  if validation_images:
    if validation_images >= len(data["train_labels"]):
      raise ValueError(
        f"config.validation_images={validation_images} leaves no training images "
        f"of {len(data['train_labels'])}"
      )
    data["eval_images"] = data["train_images"][-validation_images:]
    data["eval_labels"] = data["train_labels"][-validation_images:]
    data["train_images"] = data["train_images"][:-validation_images]
    data["train_labels"] = data["train_labels"][:-validation_images]
  else:
    data["eval_images"], data["eval_labels"] = data["test_images"], data["test_labels"]
  return data


def epoch_plan(
  data_key, epoch, *, num_images: int, crop_padding: int, alternating: bool
):
  """The order, crop offsets and mirroring of every image in one epoch.

  A pure function of (key, epoch): resuming at any step re-creates the same
  data. Alternating flip: a random half is mirrored in epoch 0 and every
  image changes orientation each epoch (airbench); else a coin per epoch.
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


def augment_batch(padded_images, labels, plan, start, *, batch: int, size: int = 32):
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
  return normalize(images), labels[idx]
