"""The example on bad input and faults: an invalid configuration, a workdir
or checkpoint that cannot be written, damaged checkpoints, Ctrl-C.

Each run that could crash or hang is a `main.py` process of its own with a
time-out, so that a hang fails its test instead of the test run. Faults are
injected by a small driver around main.py (`DRIVER`): a checkpoint folder
that refuses Orbax's writes (as one without write permission does, whoever
runs the test: root is not refused) and a SIGINT at a given step.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import metrics as metrics_lib
import ml_collections
import pytest
import train
from configs import cpu
from configs import default
from configs import smoke
from configs import tpu

from nag_optax import parallel

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(HERE, "main.py")
SMOKE = os.path.join(HERE, "configs", "smoke.py")

# A fault must end the process within this many seconds (measured: well
# under one second; the margin is for a loaded machine).
EXIT_AFTER_FAULT_S = 30

# main.py with faults from the environment. FAIL_SAVE_FROM_STEP: creating
# Orbax's temporary folder of each checkpoint from that step on fails with
# PermissionError, in Orbax's background thread, as in a folder without
# write permission. INTERRUPT_AT_STEP: SIGINT (Ctrl-C), or the signal
# named by SIGNAL, once that step's row of metrics.jsonl is written.
# FAULT_TIME: a file that gets the time of the first fault.
DRIVER = """
import os, runpy, signal, sys, time

main = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(main))


def fault():
  if not os.path.exists(os.environ["FAULT_TIME"]):
    with open(os.environ["FAULT_TIME"], "w") as f:
      f.write(repr(time.time()))


if "FAIL_SAVE_FROM_STEP" in os.environ:
  first, makedirs = int(os.environ["FAIL_SAVE_FROM_STEP"]), os.makedirs

  def refusing(name, *args, **kwargs):
    base = os.path.basename(os.fspath(name))
    step = base.split(".")[0]
    if ".orbax-checkpoint-tmp" in base and step.isdigit() and int(step) >= first:
      fault()
      raise PermissionError(13, "Permission denied", os.fspath(name))
    return makedirs(name, *args, **kwargs)

  os.makedirs = refusing

if "INTERRUPT_AT_STEP" in os.environ:
  import metrics

  at, write = int(os.environ["INTERRUPT_AT_STEP"]), metrics.MetricWriter.write
  signum = getattr(signal, os.environ.get("SIGNAL", "SIGINT"))

  def interrupting(self, step, scalars):
    write(self, step, scalars)
    if step == at and "train_loss" in scalars:
      fault()
      os.kill(os.getpid(), signum)

  metrics.MetricWriter.write = interrupting

runpy.run_path(main, run_name="__main__")
"""

# A narrow network on 1024 images: 8 steps of 128 per epoch.
TINY = [
  "--config.widths=(8,16,16)",
  "--config.train_subset=1024",
  "--config.eval_subset=256",
  "--config.batch_size=128",
  "--config.eval_batch_size=128",
  "--config.whiten_images=256",
  "--config.num_epochs=1",
  "--config.eval_every_epochs=0",
  "--config.tta_level=0",
  "--config.cpu_devices=2",
]


def _run(workdir, *args, data_dir=None, timeout=300, faults=None, prefix=()):
  """main.py on the smoke preset (with `faults`: under DRIVER) in its own
  process; (the finished process, the time of the first fault or None)."""
  env = dict(os.environ)
  command = [sys.executable, MAIN]
  fault_time = str(workdir) + ".fault"
  if faults:
    env.update({k: str(v) for k, v in faults.items()}, FAULT_TIME=fault_time)
    command = [sys.executable, "-c", DRIVER, MAIN]
  data = [f"--config.data_dir={data_dir}"] if data_dir else []
  done = subprocess.run(
    [*prefix, *command, f"--workdir={workdir}", f"--config={SMOKE}", *data, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )
  faulted = None
  if os.path.exists(fault_time):
    with open(fault_time, encoding="utf-8") as f:
      faulted = float(f.read())
  return done, faulted


def _errors(done) -> list[str]:
  return [line for line in done.stderr.splitlines() if line.startswith("error: ")]


def _train_steps(workdir) -> list[int]:
  return [r["step"] for r in metrics_lib.read(str(workdir)) if "train_loss" in r]


# ------------------------------------------------------ the configuration


def test_the_presets_are_valid_on_their_devices():
  for preset, devices in ((default, 8), (cpu, 2), (smoke, 8), (tpu, 16)):
    assert train.validate_config(preset.get_config(), devices) == []


def _config(**changes):
  """The smoke preset with `changes`, types unchecked (as a config file
  could write them)."""
  fields = smoke.get_config().to_dict()
  fields.update(changes)
  return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("batch_size", 0, "not a positive integer"),
    ("batch_size", -128, "not a positive integer"),
    ("batch_size", 100, "multiple of 8: 96 or 104"),
    ("accum_steps", 0, "not a positive integer"),
    ("momentum", 1.0, "[0, 1)"),
    ("momentum", -0.1, "[0, 1)"),
    ("learning_rate", -1.0, "not a number >= 0"),
    ("learning_rate", float("nan"), "not a number >= 0"),
    ("weight_decay", -0.1, "not a number >= 0"),
    ("eval_batch_size", 0, "not a positive integer"),
    ("eval_batch_size", 100, "multiple of 8: 96 or 104"),
    ("num_epochs", -1.0, "not a number > 0"),
    ("num_epochs", 0, "not a number > 0"),
    ("tta_level", 7, "0 (one view), 1 (mirror) or 2"),
    ("tta_level", True, "0 (one view), 1 (mirror) or 2"),
    ("compute_dtype", "float16", "'float32' or 'bfloat16'"),
    ("widths", (8, 16), "three positive integers"),
    ("widths", (8, 0, 16), "three positive integers"),
    ("zero1", "yes", "True or False"),
    ("seed", -1, "an integer from 0"),
    ("checkpoints_to_keep", 0, "not a positive integer"),
    ("stop_after_steps", 1.5, "an integer >= 0"),
    ("label_smoothing", 1.5, "[0, 1]"),
    ("num_devices", 9, "JAX has 8 devices"),
    ("data_dir", "", "a non-empty string"),
    ("checkpoint_every_seconds", -1.0, "not a number >= 0"),
    ("progress_every_seconds", 0, "not a number > 0"),
  ],
)
def test_each_invalid_field_is_one_line_naming_it(field, value, expected):
  problems = train.validate_config(_config(**{field: value}), 8)
  assert len(problems) == 1, problems
  assert problems[0].startswith(f"{field}: ") and expected in problems[0], problems
  assert f"--config.{field}" in problems[0], problems  # says what to set


def test_the_batch_must_split_over_devices_and_micro_batches():
  (problem,) = train.validate_config(_config(accum_steps=3), 8)
  assert problem.startswith("batch_size: 256 does not split over 8 devices x ")
  assert "accum_steps 3; set --config.batch_size to a multiple of 24: 240 or 264" in (
    problem
  )
  assert train.validate_config(_config(accum_steps=3, num_devices=1), 8) == [
    "batch_size: 256 does not split over 1 devices x accum_steps 3; set "
    "--config.batch_size to a multiple of 3: 255 or 258"
  ]


def test_unknown_and_missing_fields_are_named():
  config = smoke.get_config()
  config.batchsize = 128
  problems = train.validate_config(config, 8)
  assert problems == [
    "batchsize: unknown field (did you mean batch_size?); remove it or correct its name"
  ]
  fields = smoke.get_config().to_dict()
  del fields["tta_level"]
  (problem,) = train.validate_config(ml_collections.ConfigDict(fields), 8)
  assert problem.startswith("tta_level: missing")


def test_the_learning_rate_may_be_zero():
  config = smoke.get_config()
  config.learning_rate = 0.0
  assert train.validate_config(config, 8) == []
  tx = train.create_optimizer(config, total_steps=10, steps_per_epoch=5)
  assert tx.init({"head": {"kernel": 1.0}}) is not None


@pytest.mark.parametrize(
  "args,fields",
  [
    (
      [
        "--config.batch_size=0",
        "--config.accum_steps=0",
        "--config.momentum=1.0",
        "--config.learning_rate=-1",
        "--config.eval_batch_size=0",
        "--config.num_epochs=-1",
        "--config.tta_level=7",
      ],
      [
        "num_epochs",
        "learning_rate",
        "momentum",
        "accum_steps",
        "tta_level",
        "eval_batch_size",
        "batch_size",
      ],
    ),
    (["--config.batch_size=-128"], ["batch_size"]),
    (["--config.batchsize=128"], ["batchsize"]),
    (["--config.batch_size=abc"], ["flag --config.batch_size=abc"]),
    ([f"--config={os.path.join(HERE, 'configs', 'nope.py')}"], ["--config"]),
    (["--config.cpu_devices=2", "--config.batch_size=255"], ["batch_size"]),
  ],
  ids=["many", "negative", "misspelled", "not-a-number", "no-file", "indivisible"],
)
def test_configuration_errors_exit_2_before_reading_data(tmp_path, args, fields):
  """One `error: <field>: ...` line per problem, exit status 2, no
  traceback, in seconds: the data folder does not exist, so any attempt to
  read it would end in another error."""
  start = time.perf_counter()
  done, _ = _run(
    tmp_path / "run",
    f"--config.data_dir={tmp_path / 'no-data'}",
    "--config.download=False",
    *args,
    timeout=120,
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  errors = _errors(done)
  assert len(errors) == len(fields), done.stderr
  for field in fields:
    assert any(e.startswith(f"error: {field}") for e in errors), (field, errors)
  if "nope.py" in args[0]:
    assert os.path.join(HERE, "configs", "nope.py") in errors[0]
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  print(f"exit 2 after {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize(
  "arg,expected",
  [
    ("--config.batch_size=2048", "batch_size: 2048 is more than the 1024 training"),
    (
      "--config.validation_images=2560",
      "validation_images: 2560 leaves none of the 2560 training images",
    ),
  ],
)
def test_what_does_not_fit_the_data_is_a_configuration_error(
  data_dir, tmp_path, arg, expected
):
  """Found once the data is read (2560 synthetic training images, 1024 of
  them used)."""
  done, _ = _run(tmp_path / "run", *TINY, arg, data_dir=data_dir)
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  (error,) = _errors(done)
  assert error.startswith(f"error: {expected}"), error


# ------------------------------------------------------------ checkpoints


def test_a_checkpoint_that_cannot_be_written_ends_the_run(data_dir, tmp_path):
  """Saving step 4 fails in Orbax's background thread: one error line that
  names the folder and the step, exit status 1, within seconds of the
  failure (Orbax's threads waited minutes before: the process hung)."""
  workdir = tmp_path / "run"
  done, failed_at = _run(
    workdir,
    *TINY,
    "--config.checkpoint_every_steps=2",
    data_dir=data_dir,
    faults={"FAIL_SAVE_FROM_STEP": 4},
  )
  ended = time.time()
  assert done.returncode == 1, done.stderr[-3000:]
  assert failed_at is not None and ended - failed_at < EXIT_AFTER_FAULT_S
  (error,) = _errors(done)
  assert error.startswith(
    f"error: {workdir / 'checkpoints'}: cannot write the checkpoint of step 4 "
    "(PermissionError: [Errno 13] Permission denied: "
  )
  assert error.endswith("or give another --workdir")
  assert "Traceback" not in done.stderr
  assert _train_steps(workdir) == [1, 2, 3, 4]  # written before the save


def _refusing_writes():
  """The command prefix under which a folder without write permission is
  refused: none for a user; for root (whom permissions do not stop),
  setpriv without CAP_DAC_OVERRIDE."""
  if os.geteuid() != 0:
    return []
  prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
  if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode:
    pytest.skip("root, and no setpriv that can drop CAP_DAC_OVERRIDE")
  return prefix


def test_a_checkpoint_folder_without_write_permission_is_named(data_dir, tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "checkpoints").chmod(0o555)
  try:
    done, _ = _run(workdir, *TINY, data_dir=data_dir, prefix=_refusing_writes())
  finally:
    (workdir / "checkpoints").chmod(0o755)
  assert done.returncode == 1, done.stderr[-3000:]
  assert _errors(done) == [
    f"error: {workdir / 'checkpoints'}: cannot write there (Permission denied); "
    "make it writable, or give another --workdir"
  ]


@pytest.fixture(scope="module")
def interrupted(data_dir, tmp_path_factory):
  """A run with a checkpoint after every step, interrupted (SIGINT) while
  the row of step 6 is written, before its checkpoint: checkpoints 1 to 6
  (the loop saves step 6, then stops), rows 1 to 6."""
  workdir = tmp_path_factory.mktemp("interrupted") / "run"
  done, interrupted_at = _run(
    workdir,
    *TINY,
    "--config.checkpoint_every_steps=1",
    "--config.checkpoints_to_keep=6",
    data_dir=data_dir,
    faults={"INTERRUPT_AT_STEP": 6},
  )
  return workdir, done, interrupted_at, time.time()


def _copy(workdir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  return copy


def test_ctrl_c_ends_the_run_with_every_finished_step_recorded(interrupted):
  """Exit status 130 within seconds, and the rows of all the steps done (the
  resumed run, below, records the others once)."""
  workdir, done, interrupted_at, ended = interrupted
  assert done.returncode == 130, done.stderr[-3000:]
  assert interrupted_at is not None and ended - interrupted_at < EXIT_AFTER_FAULT_S
  assert "Traceback" not in done.stderr
  (error,) = _errors(done)
  assert error.startswith(
    "error: interrupted by SIGINT at step 6, checkpoint saved in "
    f"{workdir / 'checkpoints'}; to resume, run the same command: python {MAIN} "
    f"--workdir={workdir} --config={SMOKE} "
  ), error
  assert error.endswith(" --config.checkpoints_to_keep=6"), error
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "3", "4", "5", "6"]
  # Each row is on disk once its step is done: none waits for the epoch.
  assert _train_steps(workdir) == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def terminated(data_dir, tmp_path_factory):
  """A run without periodic checkpoints (by step or by time), its progress
  line every step, stopped by SIGTERM once the row of step 3 is written:
  the loop finishes the step in hand, saves its checkpoint and exits."""
  workdir = tmp_path_factory.mktemp("terminated") / "run"
  done, _ = _run(
    workdir,
    *TINY,
    "--config.checkpoint_every_steps=0",
    "--config.checkpoint_every_seconds=0",
    "--config.progress_every_seconds=0.001",
    data_dir=data_dir,
    faults={"INTERRUPT_AT_STEP": 3, "SIGNAL": "SIGTERM"},
  )
  return workdir, done


def test_the_run_reports_what_it_runs_and_its_progress(terminated, data_dir):
  """The banner before anything else, the compilation, then a full
  progress line per step (stdout is a pipe here, and the interval is
  0.001 s)."""
  workdir, done = terminated
  lines = done.stdout.splitlines()
  assert lines[:6] == [
    "CIFAR-10: airbench94 with nag_optax",
    f"  config:  {SMOKE} with "
    + " ".join(
      [
        f"--config.data_dir={data_dir}",
        *TINY,
        "--config.checkpoint_every_steps=0",
        "--config.checkpoint_every_seconds=0",
        "--config.progress_every_seconds=0.001",
      ]
    ),
    "  devices: 2 x cpu (cpu)",
    f"  data:    {os.path.join(data_dir, 'cifar-10-batches-py')}",
    f"  workdir: {workdir}",
    "  run:     starts fresh (no checkpoint)",
  ]
  assert lines[6].startswith("data: 1024 training and 256 evaluation images in ")
  assert lines[7] == "compiling the training and evaluation steps ..."
  assert re.fullmatch(r"compiled in \d+\.\d s", lines[8]), lines[8]
  progress = lines[9:]
  assert len(progress) >= 3, done.stdout
  for step, line in enumerate(progress, 1):
    assert re.fullmatch(
      rf"step {step}/8  epoch 1/1  \d+ img/s  loss \d\.\d{{4}}  ETA \d+:\d\d", line
    ), line


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(terminated):
  workdir, done = terminated
  assert done.returncode == 143, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  (error,) = _errors(done)
  steps = _train_steps(workdir)
  last = steps[-1]
  assert steps == list(range(1, last + 1)) and last >= 3
  assert error.startswith(
    f"error: interrupted by SIGTERM at step {last}, checkpoint saved in "
    f"{workdir / 'checkpoints'}; to resume, run the same command: python {MAIN} "
    f"--workdir={workdir} --config={SMOKE} "
  ), error
  # Saved on the signal: no checkpoint by steps or time was asked for.
  assert os.listdir(workdir / "checkpoints") == [str(last)]


def test_a_terminated_run_resumes_with_every_step_once_and_checkpoints_by_time(
  terminated, data_dir, tmp_path
):
  """Resumed with a checkpoint every microsecond (by time, none by steps):
  one after each step from the SIGTERM checkpoint on."""
  workdir = _copy(terminated[0], tmp_path)
  last = _train_steps(workdir)[-1]
  done, _ = _run(
    workdir,
    *TINY,
    "--config.checkpoint_every_steps=0",
    "--config.checkpoint_every_seconds=0.000001",
    "--config.checkpoints_to_keep=10",
    data_dir=data_dir,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert (
    f"  run:     resumes from the newest intact checkpoint in "
    f"{workdir / 'checkpoints'} (newest: step {last})" in done.stdout
  )
  assert f"Resumed from {workdir / 'checkpoints'} at step {last}." in done.stdout
  assert _train_steps(workdir) == list(range(1, 9))
  saved = sorted(int(name) for name in os.listdir(workdir / "checkpoints"))
  assert saved == list(range(last, 9))


def test_ctrl_c_while_compiling_exits_130_in_one_line(data_dir, tmp_path):
  """No traceback, no crash of the interpreter under XLA's compiling
  threads, and the fresh workdir, still empty, removed."""
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    [sys.executable, MAIN, f"--workdir={workdir}", f"--config={SMOKE}", *TINY]
    + [f"--config.data_dir={data_dir}"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    for line in process.stdout:
      if line.startswith("compiling"):
        process.send_signal(signal.SIGINT)
        break
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 130, stderr[-3000:]
  assert stderr.strip().splitlines() == [
    f"error: interrupted by SIGINT; to resume from the newest checkpoint in "
    f"{workdir / 'checkpoints'} (if any), run the same command: "
    + shlex.join(
      ["python", MAIN, f"--workdir={workdir}", f"--config={SMOKE}", *TINY]
      + [f"--config.data_dir={data_dir}"]
    )
  ]
  assert not workdir.exists()


def test_offline_the_download_fails_in_one_line_and_leaves_no_folder(tmp_path):
  closed = f"http://127.0.0.1:{parallel.free_port()}/cifar-10-python.tar.gz"
  env = dict(os.environ, CIFAR10_URL=closed)  # nothing listens there
  done = subprocess.run(
    [sys.executable, MAIN, f"--workdir={tmp_path / 'run'}", f"--config={SMOKE}"]
    + [f"--config.data_dir={tmp_path / 'new' / 'data'}"],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  )
  assert done.returncode == 1, done.stderr[-3000:]
  (error,) = done.stderr.strip().splitlines()
  assert error.startswith(f"error: Could not download {closed} (")
  assert f"CIFAR-10 is needed in {tmp_path / 'new' / 'data'}: download " in error
  assert f"  data:    none in {tmp_path / 'new' / 'data'}: downloads " in done.stdout
  assert sorted(os.listdir(tmp_path)) == []  # neither the workdir nor the data


def _damage(step_folder, how):
  train_item = step_folder / "train"
  data = train_item / "ocdbt.process_0" / "d"
  largest = max(data.iterdir(), key=lambda path: path.stat().st_size)
  if how == "no config":  # as written before the configuration was stored
    shutil.rmtree(step_folder / "config")
  elif how == "no train_seconds":  # as written before the time was stored
    metadata = json.loads((train_item / "_METADATA").read_text())
    del metadata["tree_metadata"]["('train_seconds',)"]
    (train_item / "_METADATA").write_text(json.dumps(metadata))
  elif how == "empty":
    shutil.rmtree(step_folder)
    step_folder.mkdir()
  elif how == "random bytes":
    largest.write_bytes(os.urandom(largest.stat().st_size))
  elif how == "truncated":
    os.truncate(largest, largest.stat().st_size // 2)
  elif how == "no _METADATA":
    (train_item / "_METADATA").unlink()


def test_damaged_checkpoints_are_skipped_for_the_newest_intact_one(
  interrupted, data_dir, tmp_path
):
  """The interrupted run's checkpoints 2 to 6 damaged five ways (one of an
  older format, without the stored configuration): one line for each,
  naming the step and why, then training resumes from step 1 and runs to
  its end, every step recorded once, and the last line names what it
  wrote. The damaged folders are moved aside, so that steps 2 to 6 are
  saved again and later restarts find them."""
  workdir = _copy(interrupted[0], tmp_path)
  ways = {
    6: "no config",
    5: "empty",
    4: "random bytes",
    3: "no _METADATA",
    2: "truncated",
  }
  for step, how in ways.items():
    _damage(workdir / "checkpoints" / str(step), how)
  done, _ = _run(
    workdir,
    *TINY,
    "--config.checkpoint_every_steps=1",
    "--config.checkpoints_to_keep=5",
    "--config.plot=True",
    data_dir=data_dir,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr
  skipped = [line for line in done.stderr.splitlines() if line.startswith("Skipped")]
  assert len(skipped) == 5, done.stderr
  reasons = {
    6: "(an older checkpoint format: no stored configuration)",
    5: "(its folder is empty)",
    4: f"{workdir / 'checkpoints' / '4' / 'train'}",  # TensorStore names the file
    3: "(train/_METADATA missing)",
    2: f"{workdir / 'checkpoints' / '2' / 'train'}",
  }
  for line, (step, reason) in zip(skipped, reasons.items(), strict=True):
    assert line.startswith(f"Skipped the checkpoint of step {step} "), line
    assert reason in line, line
    moved = workdir / "checkpoints_damaged" / str(step)
    assert line.endswith(f"; moved it to {moved}."), line
    assert moved.is_dir()
  assert f"Resumed from {workdir / 'checkpoints'} at step 1." in done.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "5", "6", "7", "8"]
  assert _train_steps(workdir) == list(range(1, 9))
  final = [r for r in metrics_lib.read(str(workdir)) if "eval_accuracy_tta" in r]
  assert [r["step"] for r in final] == [8]
  results = json.loads((workdir / "results.json").read_text())
  last = done.stdout.strip().splitlines()[-1]
  assert last.startswith(
    f"done: test accuracy {results['test_accuracy']:.4f}, with TTA "
    f"{results['test_accuracy_tta']:.4f}; {results['wall_seconds']:.1f} s ("
  ), last
  assert last.endswith(
    f"; wrote {workdir / 'results.json'}, {workdir / 'curves.png'}, "
    f"{workdir / 'checkpoints'}/"
  ), last
  assert (workdir / "curves.png").is_file()


def test_without_an_intact_checkpoint_training_starts_afresh(
  interrupted, data_dir, tmp_path
):
  workdir = _copy(interrupted[0], tmp_path)
  for step in range(2, 7):
    _damage(workdir / "checkpoints" / str(step), "empty")
  _damage(workdir / "checkpoints" / "1", "no train_seconds")
  done, _ = _run(workdir, *TINY, "--config.stop_after_steps=1", data_dir=data_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr.count("(its folder is empty)") == 5
  assert (
    "Skipped the checkpoint of step 1 (an older checkpoint format: no "
    "train_seconds); moved it to " in done.stderr
  ), done.stderr
  assert (
    f"No intact checkpoint in {workdir / 'checkpoints'}: training starts at step 0."
    in done.stderr
  )
  assert "Resumed" not in done.stdout
  assert os.listdir(workdir / "checkpoints") == ["1"]
  assert _train_steps(workdir) == [1]


def test_checkpoints_of_another_network_or_data_are_a_configuration_error(
  interrupted, tmp_path
):
  """Every field of RESUME_FIELDS that differs, named in one line, before
  any data is read (there is none here); the fields that change neither
  the stored arrays nor the step's meaning may change."""
  workdir = _copy(interrupted[0], tmp_path)
  changed = ("--config.widths", "--config.batch_size", "--config.num_epochs")
  done, _ = _run(
    workdir,
    *[arg for arg in TINY if not arg.startswith(changed)],
    "--config.widths=(8,16,32)",
    "--config.batch_size=256",
    "--config.num_epochs=2",
    "--config.accum_steps=2",
    "--config.zero1=True",
    f"--config.data_dir={tmp_path / 'no-data'}",
    "--config.download=False",
    timeout=120,
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert _errors(done) == [
    f"error: widths, batch_size, num_epochs: the checkpoints in "
    f"{workdir / 'checkpoints'} were written with widths=(8,16,16), "
    "batch_size=128, num_epochs=1.0; this configuration has widths=(8,16,32), "
    "batch_size=256, num_epochs=2.0; set --config.widths='(8,16,16)' "
    "--config.batch_size=128 --config.num_epochs=1.0 to resume them, or give "
    "another --workdir to start afresh"
  ]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "3", "4", "5", "6"]


# ------------------------------------------------------------ metrics.jsonl


def test_a_row_cut_short_is_left_out_and_resuming_drops_the_later_rows(tmp_path):
  rows = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5}]
  rows += [{"step": 2, "eval_accuracy": 0.5, "eval_accuracy_tta": 0.6}]
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "tra'
  (tmp_path / metrics_lib.FILE).write_text(text)
  assert metrics_lib.read(str(tmp_path)) == rows
  # Resuming at step 2 keeps its training row; its final evaluation is
  # written again by the resumed run.
  metrics_lib.MetricWriter(str(tmp_path), resume_step=2).close()
  assert metrics_lib.read(str(tmp_path)) == rows[:2]
  metrics_lib.MetricWriter(str(tmp_path), resume_step=1).close()
  assert metrics_lib.read(str(tmp_path)) == rows[:1]
