"""The CIFAR-10 loader on the official layout and on every kind of bad input,
and the download: retries, resuming, checksums, one downloader among
several processes, and a clear message without a network.

Synthetic files in the official format (protocol-2 pickles of dicts with
bytes keys, `data` a uint8 (N, 3072) array, `labels` a list of ints) keep
these tests independent of the real dataset; downloads are served from
127.0.0.1.
"""

import contextlib
import hashlib
import http.server
import os
import pickle
import sys
import tarfile
import threading
import time

import input_pipeline as ip
import numpy as np
import pytest

from nag_optax import parallel

SMALL = 20  # images per synthetic file


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


def _archive_of(layout, path):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(os.path.join(layout, ip.FOLDER), arcname=ip.FOLDER)
  return hashlib.md5(path.read_bytes()).hexdigest()


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
  # The fingerprint is the MD5 of the six files' bytes, in order.
  digest = hashlib.md5()
  for name in ip.TRAIN_FILES + ip.TEST_FILES:
    with open(os.path.join(layout, ip.FOLDER, name), "rb") as f:
      digest.update(f.read())
  assert data["md5"] == digest.hexdigest()


def test_reads_the_official_archive(layout, tmp_path, monkeypatch):
  monkeypatch.setattr(ip, "MD5", _archive_of(layout, tmp_path / ip.ARCHIVE))
  data = ip.load_cifar10(str(tmp_path), download=False)
  folder = ip.load_cifar10(layout, download=False)
  np.testing.assert_array_equal(data["train_labels"], folder["train_labels"])
  assert data["md5"] == folder["md5"]  # the same copy, in either layout


def test_wrong_checksum_is_refused(layout, tmp_path):
  _archive_of(layout, tmp_path / ip.ARCHIVE)
  with pytest.raises(ip.DataError, match="MD5"):
    ip.load_cifar10(str(tmp_path), download=False)


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(ip.DataError, match="No CIFAR-10") as error:
    ip.load_cifar10(str(tmp_path / "nowhere"), download=False)
  assert "--config.data_dir" in str(error.value) and ip.ARCHIVE in str(error.value)


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
      "Nx3072",
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


def test_truncated_archive_is_a_clear_error(layout, tmp_path, monkeypatch):
  archive = tmp_path / ip.ARCHIVE
  _archive_of(layout, archive)
  archive.write_bytes(archive.read_bytes()[:2000])
  monkeypatch.setattr(ip, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
  with pytest.raises(ip.DataError, match="not a readable"):
    ip.load_cifar10(str(tmp_path), download=False)


# ---------------------------------------------------------------- download


@contextlib.contextmanager
def _server(payload, *, cut_first_at=None):
  """Serves `payload` on 127.0.0.1 (range requests too); the first response
  stops after `cut_first_at` bytes, as a dropped connection. Yields
  (url, log of the Range headers received)."""
  log = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      first = not log
      rng = self.headers.get("Range")
      log.append(rng)
      start = int(rng.split("=")[1].rstrip("-")) if rng else 0
      body = payload[start:]
      self.send_response(206 if rng else 200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      if first and cut_first_at is not None:
        body = body[:cut_first_at]
      self.wfile.write(body)

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/{ip.ARCHIVE}", log
  finally:
    server.shutdown()
    server.server_close()


def test_download_resumes_a_dropped_transfer_and_checks_md5(
  layout, tmp_path, monkeypatch, capsys
):
  source = tmp_path / "served.tar.gz"
  monkeypatch.setattr(ip, "MD5", _archive_of(layout, source))
  payload = source.read_bytes()
  target = tmp_path / "fresh"
  with _server(payload, cut_first_at=1000) as (url, log):
    ip.download(str(target), url, timeout_s=10, backoff_s=0.01)
  assert log == [None, "bytes=1000-"]  # the second request asked for the rest
  assert sorted(os.listdir(target)) == [ip.ARCHIVE]  # no .part file left
  assert (target / ip.ARCHIVE).read_bytes() == payload
  out = capsys.readouterr().out
  assert "retrying" in out and "resuming at 0.0 MB" in out
  assert ip.load_cifar10(str(target))["train_images"].shape == (5 * SMALL, 32, 32, 3)


def test_download_with_wrong_md5_leaves_nothing(layout, tmp_path):
  source = tmp_path / "served.tar.gz"
  _archive_of(layout, source)
  target = tmp_path / "fresh"
  with _server(source.read_bytes()) as (url, _):
    with pytest.raises(ip.DataError, match="wrong MD5"):
      ip.download(str(target), url, timeout_s=10)
  assert not target.exists()  # the folder it created, empty, is removed


def test_the_download_announces_itself_and_shows_progress(
  layout, tmp_path, monkeypatch, capsys
):
  """Off a terminal (pytest captures stdout): the announcement with the
  size and the address, then full progress lines, the last one complete."""
  source = tmp_path / "served.tar.gz"
  monkeypatch.setattr(ip, "MD5", _archive_of(layout, source))
  payload = source.read_bytes()
  target = tmp_path / "fresh"
  with _server(payload) as (url, _):
    ip.download(str(target), url, timeout_s=10, report_every_s=0)
  lines = capsys.readouterr().out.splitlines()
  size = f"{len(payload) / 1e6:.1f} MB"
  assert lines[0] == f"downloading {ip.ARCHIVE} ({size}) from {url} to {target}"
  assert len(lines) >= 2 and all(line.startswith("[") for line in lines[1:])
  assert lines[-1] == f"[{'#' * 30}] {size[:-3]}/{size}"


def test_a_file_url_in_cifar10_url_is_downloaded(layout, tmp_path, monkeypatch):
  source = tmp_path / "mirror" / ip.ARCHIVE
  source.parent.mkdir()
  monkeypatch.setattr(ip, "MD5", _archive_of(layout, source))
  monkeypatch.setenv(ip.URL_ENV, source.as_uri())
  data = ip.load_cifar10(str(tmp_path / "fresh"))
  assert data["train_images"].shape == (5 * SMALL, 32, 32, 3)


@pytest.mark.parametrize("where", ["http", "file"])
def test_without_a_network_the_error_says_what_to_do(tmp_path, monkeypatch, where):
  """One line naming what to download and where, no retry when no
  connection can be made, and no folder left behind."""
  if where == "http":
    closed = f"http://127.0.0.1:{parallel.free_port()}/{ip.ARCHIVE}"
  else:
    closed = (tmp_path / "nowhere" / ip.ARCHIVE).as_uri()
  monkeypatch.setenv(ip.URL_ENV, closed)  # nothing listens there
  target = tmp_path / "new" / "data"
  start = time.perf_counter()
  with pytest.raises(ip.DataError) as error:
    ip.download(str(target), timeout_s=5, retries=1, backoff_s=30)
  assert time.perf_counter() - start < 10  # no 30 s wait for a retry
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"Could not download {closed} (")
  assert "not retried" in message
  assert f"CIFAR-10 is needed in {target}" in message
  assert f"{ip.ARCHIVE} (the 'CIFAR-10 python version', 170.5 MB, MD5 {ip.MD5})" in (
    message
  )
  assert "--config.data_dir" in message and "cifar.html" in message
  assert not (tmp_path / "new").exists()


def test_only_the_first_of_several_processes_downloads(layout, tmp_path):
  """Two processes, one data folder: process 0 downloads, process 1 waits
  for it, then both read the same data."""
  source = tmp_path / "served.tar.gz"
  md5 = _archive_of(layout, source)
  target = tmp_path / "shared"
  here = os.path.dirname(os.path.abspath(__file__))
  code = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from nag_optax import parallel\n"
    "parallel.initialize()\n"
    "import input_pipeline, train\n"
    "from configs import smoke\n"
    "input_pipeline.MD5 = sys.argv[2]\n"
    "config = smoke.get_config()\n"
    "config.data_dir = sys.argv[3]\n"
    "data = train._load_data(config)\n"
    "print('md5', data['md5'])\n"
  )
  with _server(source.read_bytes()) as (url, log):
    results = parallel.launch_local(
      [sys.executable, "-c", code, here, md5, str(target)],
      num_processes=2,
      timeout_s=120,
      env=dict(os.environ, **{ip.URL_ENV: url}),
    )
  assert log == [None]  # one request: one downloader
  fingerprints = {
    line for r in results for line in r.output.splitlines() if "md5" in line
  }
  assert len(fingerprints) == 1
