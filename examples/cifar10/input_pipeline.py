"""CIFAR-10 from the official "python version" files, read safely.

`load_cifar10(data_dir)` accepts `data_dir/cifar-10-batches-py/` or
`data_dir/cifar-10-python.tar.gz`, and with neither (and `download=True`)
fetches the official archive, checks its MD5 and unpacks it. The files are
pickles: they are read with an unpickler that admits only the builtin types
those files contain, so a crafted file cannot run code.
"""

import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
IMAGES_PER_FILE = 10_000
NUM_CLASSES = 10
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class DataError(ValueError):
  """The CIFAR-10 files are missing, corrupt or not CIFAR-10."""


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
  data, labels = batch.get(b"data"), batch.get(b"labels")
  if data is None or labels is None:
    raise DataError(f"{name}: missing 'data' or 'labels' (keys: {sorted(batch)})")
  if isinstance(data, (bytes, bytearray)):
    data = np.frombuffer(data, np.uint8)
  data = np.asarray(data)
  if data.dtype != np.uint8 or data.size != IMAGES_PER_FILE * 3072:
    raise DataError(
      f"{name}: 'data' should be {IMAGES_PER_FILE}x3072 uint8, got "
      f"{data.dtype} with {data.size} values"
    )
  labels = np.asarray(labels)
  if labels.shape != (IMAGES_PER_FILE,) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{name}: 'labels' should be {IMAGES_PER_FILE} integers")
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise DataError(f"{name}: labels outside 0..9")
  images = data.reshape(IMAGES_PER_FILE, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _read_split(read, names) -> tuple[np.ndarray, np.ndarray]:
  parts = [_decode(_unpickle(read(name), name), name) for name in names]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def download(data_dir: str, url: str | None = None, md5: str | None = None) -> str:
  """Downloads the archive into data_dir with a progress bar; checks its MD5.

  Writes to a temporary file and renames it only once the checksum matches,
  so nothing half-written is left behind (also on an interrupted download).
  `url` and `md5` default to the official archive's (read at call time).
  """
  url = URL if url is None else url
  md5 = MD5 if md5 is None else md5
  os.makedirs(data_dir, exist_ok=True)
  target = os.path.join(data_dir, ARCHIVE)
  fd, tmp = tempfile.mkstemp(dir=data_dir, suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
      total = int(response.headers.get("Content-Length") or 0)
      done = 0
      for chunk in iter(lambda: response.read(1 << 20), b""):
        out.write(chunk)
        done += len(chunk)
        if total:
          bar = "#" * (30 * done // total)
          sys.stderr.write(
            f"\rCIFAR-10 [{bar:<30}] {done / 2**20:.0f}/{total / 2**20:.0f} MiB"
          )
    sys.stderr.write("\n")
    if _md5(tmp) != md5:
      raise DataError(f"downloaded {url} has the wrong MD5 checksum; try again")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


def load_cifar10(data_dir: str, *, download: bool = True) -> dict[str, np.ndarray]:
  """Loads CIFAR-10 as uint8 NHWC images and int32 labels.

  Args:
    data_dir: folder holding `cifar-10-batches-py/` or
      `cifar-10-python.tar.gz` (the official python-version layout).
    download: fetch the official archive when neither is there.

  Returns:
    {"train_images": (50000, 32, 32, 3) uint8, "train_labels": (50000,)
    int32, "test_images": (10000, 32, 32, 3) uint8, "test_labels": (10000,)
    int32}.

  Raises:
    DataError: missing files, wrong checksum, truncated or foreign pickles,
      wrong shapes or labels.
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
        f"no CIFAR-10 in {data_dir!r}: expected {FOLDER}/ or {ARCHIVE} "
        "(or pass download=True)"
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
  train_images, train_labels = _read_split(read, TRAIN_FILES)
  test_images, test_labels = _read_split(read, TEST_FILES)
  return {
    "train_images": train_images,
    "train_labels": train_labels,
    "test_images": test_images,
    "test_labels": test_labels,
  }


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 NHWC to float32, per-channel standardised (CIFAR-10 statistics)."""
  return (images.astype(np.float32) / 255.0 - MEAN) / STD
