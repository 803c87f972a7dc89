"""The CIFAR-10 loader on the official layout and on every kind of bad input.

Synthetic files in the official format (protocol-2 pickles of dicts with
bytes keys, `data` a uint8 (10000, 3072) array, `labels` a list of ints)
keep these tests independent of the real dataset.
"""

import hashlib
import os
import pickle
import tarfile

import input_pipeline as ip
import numpy as np
import pytest

SMALL = 20  # images per synthetic file (patched into ip.IMAGES_PER_FILE)


@pytest.fixture(autouse=True)
def _small_files(monkeypatch):
  monkeypatch.setattr(ip, "IMAGES_PER_FILE", SMALL)


def _batch(seed, overrides=None):
  rng = np.random.default_rng(seed)
  batch = {
    b"batch_label": b"synthetic",
    b"labels": rng.integers(0, 10, SMALL).tolist(),
    b"data": rng.integers(0, 256, (SMALL, 3072), dtype=np.uint8),
    b"filenames": [b"x.png"] * SMALL,
  }
  batch.update(overrides or {})
  return batch


def _write_layout(root, overrides=None):
  folder = os.path.join(root, ip.FOLDER)
  os.makedirs(folder)
  for i, name in enumerate(ip.TRAIN_FILES + ip.TEST_FILES):
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(_batch(i, (overrides or {}).get(name)), f, protocol=2)
  return folder


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cifar"))
  _write_layout(root)
  return root


def test_reads_the_official_folder_layout(layout):
  data = ip.load_cifar10(layout, download=False)
  assert data["train_images"].shape == (5 * SMALL, 32, 32, 3)
  assert data["test_images"].shape == (SMALL, 32, 32, 3)
  assert data["train_images"].dtype == np.uint8
  assert data["train_labels"].dtype == np.int32
  # Channel-major rows become NHWC: pixel (0, 0) of image 0 is data[0, [0, 1024, 2048]].
  raw = _batch(0)[b"data"][0]
  np.testing.assert_array_equal(data["train_images"][0, 0, 0], raw[[0, 1024, 2048]])
  np.testing.assert_array_equal(data["test_labels"], _batch(5)[b"labels"])


def test_reads_the_official_archive(layout, tmp_path, monkeypatch):
  archive = tmp_path / ip.ARCHIVE
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(os.path.join(layout, ip.FOLDER), arcname=ip.FOLDER)
  monkeypatch.setattr(ip, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
  data = ip.load_cifar10(str(tmp_path), download=False)
  np.testing.assert_array_equal(
    data["train_labels"], ip.load_cifar10(layout, download=False)["train_labels"]
  )


def test_wrong_checksum_is_refused(layout, tmp_path):
  with tarfile.open(tmp_path / ip.ARCHIVE, "w:gz") as tar:
    tar.add(os.path.join(layout, ip.FOLDER), arcname=ip.FOLDER)
  with pytest.raises(ip.DataError, match="MD5"):
    ip.load_cifar10(str(tmp_path), download=False)


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(ip.DataError, match="no CIFAR-10"):
    ip.load_cifar10(str(tmp_path / "nowhere"), download=False)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("touch PWNED",))


@pytest.mark.parametrize(
  "name,content,match",
  [
    ("code", lambda: pickle.dumps(_batch(0, {b"data": _RunsCode()}), 4), "refusing"),
    ("truncated", lambda: pickle.dumps(_batch(0), 2)[:5000], "not a readable"),
    ("foreign", lambda: pickle.dumps([1, 2, 3], 2), "expected a dict"),
    (
      "shape",
      lambda: pickle.dumps(_batch(0, {b"data": np.zeros((10, 3072), np.uint8)}), 2),
      "x3072",
    ),
    (
      "labels",
      lambda: pickle.dumps(_batch(0, {b"labels": [11] * SMALL}), 2),
      "outside 0..9",
    ),
  ],
)
def test_bad_batch_files_fail_clearly(tmp_path, monkeypatch, name, content, match):
  folder = _write_layout(str(tmp_path))
  with open(os.path.join(folder, "data_batch_3"), "wb") as f:
    f.write(content())
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ip.DataError, match=match):
    ip.load_cifar10(str(tmp_path), download=False)
  assert not os.path.exists(tmp_path / "PWNED")


def test_missing_batch_file_is_named(tmp_path):
  folder = _write_layout(str(tmp_path))
  os.remove(os.path.join(folder, "test_batch"))
  with pytest.raises(ip.DataError, match="test_batch is missing"):
    ip.load_cifar10(str(tmp_path), download=False)


def _archive_of(layout, path):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(os.path.join(layout, ip.FOLDER), arcname=ip.FOLDER)
  return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_renames_atomically(
  layout, tmp_path, monkeypatch, capsys
):
  source = tmp_path / "served.tar.gz"
  digest = _archive_of(layout, source)
  monkeypatch.setattr(ip, "URL", source.as_uri())
  monkeypatch.setattr(ip, "MD5", digest)
  target = tmp_path / "fresh"
  data = ip.load_cifar10(str(target), download=True)
  assert sorted(os.listdir(target)) == [ip.ARCHIVE]  # no .part file left
  assert data["train_images"].shape == (5 * SMALL, 32, 32, 3)
  assert "CIFAR-10 [" in capsys.readouterr().err  # the progress bar


def test_download_with_wrong_md5_leaves_nothing(layout, tmp_path, monkeypatch):
  source = tmp_path / "served.tar.gz"
  _archive_of(layout, source)
  monkeypatch.setattr(ip, "URL", source.as_uri())
  target = tmp_path / "fresh"
  with pytest.raises(ip.DataError, match="wrong MD5"):
    ip.load_cifar10(str(target), download=True)
  assert os.listdir(target) == []


def test_truncated_archive_is_a_clear_error(layout, tmp_path, monkeypatch):
  archive = tmp_path / ip.ARCHIVE
  _archive_of(layout, archive)
  archive.write_bytes(archive.read_bytes()[:2000])
  monkeypatch.setattr(ip, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
  with pytest.raises(ip.DataError, match="not a readable"):
    ip.load_cifar10(str(tmp_path), download=False)
