"""Compiling for TPU slices and GPUs this machine does not have, and reading
what the compiled program costs: memory per device and its collectives.

JAX compiles for a named accelerator without the hardware: libtpu (the
``jax[tpu]`` extra) for a TPU topology, and the CUDA plugin
(``jax-cuda12-plugin`` and ``jax-cuda12-pjrt``) for GPUs described by XLA's
target specifications, which the plugin carries. Everything that needs no
data works on such compile-only devices: meshes, shardings, the abstract
state of a builder, ``step.lower(...).compile()``; nothing that creates an
array does.
"""

import dataclasses
import functools
import importlib.util
import math
import os
import re
from collections.abc import Iterable
from typing import Any
from typing import NamedTuple

import jax

# --------------------------------------------------------------------------
# Targets.


class _Chip(NamedTuple):
  memory_bytes: int
  peak_flops: float  # dense bfloat16 matrix FLOP/s
  memory_bandwidth: float  # bytes/s


# Per chip, from the vendors' published specifications (Cloud TPU system
# architecture pages; NVIDIA's H100, H200, B200 and A100 datasheets, SXM
# parts, dense bfloat16). For GPUs the memory size and bandwidth are read
# from XLA's own target specification instead, when it is available.
_CHIPS = {
  "v4": _Chip(32 * 2**30, 275e12, 1228e9),
  "v5e": _Chip(16 * 2**30, 197e12, 819e9),
  "v5p": _Chip(95 * 2**30, 459e12, 2765e9),
  "v6e": _Chip(32 * 2**30, 918e12, 1640e9),
  "a100": _Chip(80 * 2**30, 312e12, 2039e9),
  "h100": _Chip(80 * 2**30, 989e12, 3352e9),
  "h200": _Chip(141 * 2**30, 989e12, 4800e9),
  "b200": _Chip(180 * 2**30, 2250e12, 8000e9),
}

# The device names of XLA's GPU target specifications.
_GPU_SPECS = {
  "a100": "NVIDIA A100-SXM4-80GB",
  "h100": "NVIDIA H100 80GB HBM3",
  "h200": "NVIDIA H200 141GB HBM3e",
  "b200": "NVIDIA B200",
}


class AotTarget(NamedTuple):
  """An accelerator to compile for, without having it.

  Attributes:
    name: as given to :func:`aot_target` (``"tpu:v5e:4x4"``, ``"gpu:h100:8"``).
    platform: ``"tpu"`` or ``"gpu"``.
    devices: the compile-only devices (build a mesh with
      :func:`data_mesh`, or pass them to ``pmap_data_parallel(devices=...)``).
    chip: the chip's short name (``"v5e"``, ``"h100"``).
    memory_bytes: memory of one device.
    peak_flops: one device's dense bfloat16 matrix FLOP/s.
    memory_bandwidth: one device's memory bandwidth in bytes/s.

  Example:
    >>> from nag_optax import parallel
    >>> parallel.AotTarget._fields
    ('name', 'platform', 'devices', 'chip', 'memory_bytes', 'peak_flops',
     'memory_bandwidth')
  """

  name: str
  platform: str
  devices: tuple[Any, ...]
  chip: str
  memory_bytes: int
  peak_flops: float
  memory_bandwidth: float


def gpu_target_config(device_name: str) -> str:
  """XLA's target specification text of a GPU, from the CUDA plugin.

  Args:
    device_name: the device description, e.g. ``"NVIDIA H100 80GB HBM3"``.

  Returns:
    The ``GpuTargetConfigProto`` text that
    ``jax.experimental.topologies.get_topology_desc(platform="cuda",
    target_config=...)`` takes.

  Raises:
    RuntimeError: when no CUDA plugin is installed (``pip install
      jax-cuda12-plugin jax-cuda12-pjrt`` of the installed jax version), or
      it carries no specification of that device.

  Example:
    >>> from nag_optax import parallel
    >>> try:  # without the CUDA plugin, or for a device it does not describe
    ...   text = parallel.gpu_target_config("NVIDIA H100 80GB HBM3")
    ... except RuntimeError:
    ...   text = None
    >>> text is None or "gpu_device_info" in text
    True
  """
  for package in ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"):
    try:
      spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
      spec = None
    if spec is not None and spec.submodule_search_locations:
      for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "xla_cuda_plugin.so")
        if os.path.exists(path):
          text = _specs_in(path).get(device_name)
          if text is not None:
            return text
  raise RuntimeError(
    f"No XLA target specification for {device_name!r}: install the CUDA "
    "plugin of the installed jax version (pip install 'jax-cuda12-plugin=="
    f"{jax.__version__}' 'jax-cuda12-pjrt=={jax.__version__}'); its "
    "specifications depend on the version."
  )


@functools.cache
def _specs_in(path: str) -> dict[str, str]:
  """{device name: specification text} embedded in the plugin's library."""
  with open(path, "rb") as f:
    data = f.read()
  specs = {}
  for match in re.finditer(rb'device_description_str: "([^"\n]+)"', data):
    start = data.rfind(b"# Copyright", 0, match.start())
    if start >= 0 and b"\0" not in data[start : match.start()]:
      specs[match.group(1).decode()] = data[start : match.end()].decode()
  return specs


def _spec_field(text: str, field: str) -> float | None:
  match = re.search(rf"\b{field}: ([0-9.e+]+)", text)
  return float(match.group(1)) if match else None


def aot_target(name: str) -> AotTarget:
  """Compile-only devices of a TPU slice or a GPU machine, by name.

  Args:
    name: ``"tpu:<chip>:<topology>"`` (``"tpu:v5e:4x4"``, ``"tpu:v6e:2x2"``,
      ``"tpu:v5p:2x2x1"``, any topology libtpu knows) or
      ``"gpu:<chip>:<count>"`` with chip one of a100, h100, h200, b200
      (``"gpu:h100:8"``: one machine with 8 GPUs).

  Returns:
    An :class:`AotTarget`.

  Raises:
    ValueError: for a malformed name or an unknown chip.
    RuntimeError: when the vendor's compiler is not installed (``jax[tpu]``
      for TPUs, the CUDA plugin for GPUs).

  Example:
    >>> from nag_optax import parallel
    >>> parallel.aot_target("gpu:k80:1")
    Traceback (most recent call last):
    ValueError: aot_target name 'gpu:k80:1': unknown gpu chip;
      known: ['a100', 'b200', 'h100', 'h200']

    With ``jax[tpu]`` installed, ``parallel.aot_target("tpu:v5e:4x4")`` gives
    the 16 compile-only devices of that slice; :func:`compiled_summary` shows a
    whole program compiled for them.
  """
  from jax.experimental import topologies

  parts = name.split(":")
  if len(parts) != 3 or parts[0] not in ("tpu", "gpu"):
    raise ValueError(
      f"aot_target name {name!r}: expected 'tpu:<chip>:<topology>' (e.g. "
      "'tpu:v5e:4x4') or 'gpu:<chip>:<count>' (e.g. 'gpu:h100:8')."
    )
  platform, chip, shape = parts
  if chip not in _CHIPS or (platform == "gpu") != (chip in _GPU_SPECS):
    known = sorted(c for c in _CHIPS if (c in _GPU_SPECS) == (platform == "gpu"))
    raise ValueError(
      f"aot_target name {name!r}: unknown {platform} chip; known: {known}"
    )
  memory, flops, bandwidth = _CHIPS[chip]
  if platform == "tpu":
    try:
      topology = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{chip}:{shape}"
      )
    except Exception as error:  # libtpu missing, or an unknown topology
      raise RuntimeError(
        f"Cannot describe TPU {chip}:{shape}: {error}. Compiling for TPUs "
        f"needs libtpu: pip install 'jax[tpu]=={jax.__version__}'."
      ) from error
  else:
    if not shape.isdigit() or int(shape) < 1:
      raise ValueError(f"aot_target name {name!r}: the GPU count must be a number")
    text = gpu_target_config(_GPU_SPECS[chip])
    memory = int(_spec_field(text, "device_memory_size") or memory)
    bandwidth = _spec_field(text, "memory_bandwidth") or bandwidth
    topology = topologies.get_topology_desc(
      platform="cuda", topology=f"1x1x{shape}", target_config=text
    )
  return AotTarget(
    name, platform, tuple(topology.devices), chip, memory, flops, bandwidth
  )


# --------------------------------------------------------------------------
# Collectives, from the compiled program's HLO text.

# Computations start at column 0 ("%name (" or "ENTRY %name (") and end with
# "}"; these attributes name the computations an instruction calls.
_CALLS = re.compile(
  r"(?:calls|to_apply|body|condition|branch_computations|true_computation|"
  r"false_computation)=\{?(%?[^}\s,]+(?:,\s*%[^}\s,]+)*)"
)
_COLLECTIVE = re.compile(
  r"= (.+?) (all-reduce|reduce-scatter|all-gather|all-to-all|collective-permute)"
  r"(-start)?\("
)
_ARRAY = re.compile(r"\b(pred|[sucf]\d+|bf16|f8e\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction of a compiled program.

  Attributes:
    op: ``"all-reduce"``, ``"reduce-scatter"``, ``"all-gather"``,
      ``"all-to-all"`` or ``"collective-permute"``.
    dtype: the element type of its (first) result, e.g. ``"f32"``.
    input_bytes: bytes each device contributes.
    output_bytes: bytes each device receives.
    group_size: devices per replica group (None where the text does not say).
    in_loop: inside a while loop's body (runs once per iteration).
    branch: the index of the conditional branch holding it, or None.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "data"), mesh=mesh,
    ...                               in_specs=P("data"), out_specs=P()))
    >>> compiled = total.lower(jnp.ones(4)).compile()
    >>> (reduction,) = parallel.collectives(compiled.as_text())
    >>> reduction.op, reduction.output_bytes
    ('all-reduce', 16)
  """

  op: str
  dtype: str
  input_bytes: int
  output_bytes: int
  group_size: int | None
  in_loop: bool
  branch: int | None

  @property
  def traffic_bytes(self) -> int:
    """The ring's bytes per device, up to (n-1)/n: an all-reduce moves twice
    its size, a reduce-scatter its input, an all-gather its output."""
    if self.op == "all-reduce":
      return 2 * self.output_bytes
    if self.op == "all-gather":
      return self.output_bytes
    return self.input_bytes


def _computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
  comps: dict[str, list[str]] = {}
  name = entry = None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%(\S+) ", line)
    if header and line.rstrip().endswith("{"):
      name = header.group(2)
      comps[name] = []
      if header.group(1):
        entry = name
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps, entry


def _reachable(comps: dict[str, list[str]], roots: Iterable[str]) -> set[str]:
  seen: set[str] = set()
  todo = list(roots)
  while todo:
    c = todo.pop()
    if c in seen or c not in comps:
      continue
    seen.add(c)
    for line in comps[c]:
      for group in _CALLS.findall(line):
        todo += [n.strip().lstrip("%") for n in group.split(",")]
  return seen


def _arrays(text: str) -> list[tuple[str, int]]:
  """(dtype, bytes) of each array type in ``text``."""
  out = []
  for dtype, dims in _ARRAY.findall(text):
    size = math.prod(int(d) for d in dims.split(",") if d)
    bits = {"pred": 8, "bf16": 16}.get(dtype) or int(re.sub(r"\D", "", dtype) or 8)
    if dtype.startswith("f8"):
      bits = 8
    out.append((dtype, size * bits // 8))
  return out


def _split_tuple(text: str) -> list[str]:
  """The top-level elements of ``(a, (b, c), d)``."""
  text = text.strip()
  if not text.startswith("("):
    return [text]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
      parts.append(text[start:i])
      start = i + 1
  return [p for p in parts if p.strip()]


def _group_size(line: str) -> int | None:
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=", line)
  if iota:
    return int(iota.group(1).split(",")[-1])
  listed = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if listed:
    return len([x for x in listed.group(1).split(",") if x])
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if mesh:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
    axes = re.findall(r"'([^']+)'", mesh.group(2))
    return math.prod(int(sizes[a]) for a in axes if a in sizes)
  return None


def collectives(hlo: str) -> list[Collective]:
  """Every collective of a compiled program, from its HLO text.

  Args:
    hlo: ``compiled.as_text()`` of a compiled (optimized) program.

  Returns:
    One :class:`Collective` per collective instruction reachable from the
    entry computation (an asynchronous pair counts once), marked when it
    sits in a while loop's body or a conditional's branch.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "data"), mesh=mesh,
    ...                               in_specs=P("data"), out_specs=P()))
    >>> compiled = total.lower(jnp.ones(4)).compile()
    >>> parallel.collectives(compiled.as_text())
    [Collective(op='all-reduce', dtype='f32', input_bytes=16, output_bytes=16,
                group_size=1, in_loop=False, branch=None)]
  """
  comps, entry = _computations(hlo)
  if entry is None:
    return []
  loops: set[str] = set()
  branches: dict[str, int] = {}
  reached = _reachable(comps, [entry])
  for c in reached:
    for line in comps[c]:
      if " while(" in line:
        for body in re.findall(r"body=%?([^,\s}]+)", line):
          loops |= _reachable(comps, [body])
      if " conditional(" in line:
        names = re.findall(r"branch_computations=\{([^}]*)\}", line)
        listed = names[0].split(",") if names else []
        listed += re.findall(r"(?:true|false)_computation=%?([^,\s}]+)", line)
        if "true_computation" in line:
          listed = listed[::-1]  # index 0: false, as lax.cond numbers them
        for i, b in enumerate(listed):
          for r in _reachable(comps, [b.strip().lstrip("%")]):
            branches[r] = i
  found = []
  for c in sorted(reached):
    for line in comps[c]:
      match = _COLLECTIVE.search(line)
      if not match:
        continue
      shape, op, start = match.groups()
      group = _group_size(line)
      if start:  # ((inputs...), outputs): the async start's result tuple
        elements = _split_tuple(shape)
        inputs = _arrays(elements[0])
        outputs = _arrays(",".join(elements[1:]))
      else:
        outputs = _arrays(shape)
        inputs = []
      out_bytes = sum(b for _, b in outputs)
      if inputs:
        in_bytes = sum(b for _, b in inputs)
      elif op == "reduce-scatter":
        in_bytes = out_bytes * (group or 1)
      elif op == "all-gather":
        in_bytes = out_bytes // (group or 1)
      else:
        in_bytes = out_bytes
      found.append(
        Collective(
          op=op,
          dtype=outputs[0][0] if outputs else "",
          input_bytes=in_bytes,
          output_bytes=out_bytes,
          group_size=group,
          in_loop=c in loops,
          branch=branches.get(c),
        )
      )
  return found


# --------------------------------------------------------------------------
# The summary of one compiled program.


def compiled_summary(
  compiled: jax.stages.Compiled, target: AotTarget | None = None
) -> dict[str, Any]:
  """Memory per device, collectives and (where the compiler gives them)
  FLOPs of a compiled program, against ``target``'s limits.

  Example (on a CPU machine with ``jax[tpu]`` installed)::

    target = parallel.aot_target("tpu:v5e:4x4")
    mesh = parallel.data_mesh(target.devices)
    dp = parallel.jit_data_parallel(loss_fn, tx, mesh)
    state = dp.abstract_state(params)           # ShapeDtypeStructs, no device
    batch = jax.ShapeDtypeStruct((256, 784), jnp.float32,
                                 sharding=parallel.batch_sharding(mesh))
    summary = parallel.compiled_summary(dp.step.lower(state, batch).compile(), target)
    summary["memory"]["peak_bytes"], summary["fits"], summary["traffic_bytes"]

  Args:
    compiled: ``jitted.lower(...).compile()``.
    target: the device it was compiled for (for ``fits`` and the bound).

  Returns:
    A dict: ``memory`` (argument, output, alias, temp, generated code and
    peak bytes of one device; peak is the compiler's figure, or argument +
    output - alias + temp where it gives none), ``collectives`` (a dict per
    :class:`Collective` with its ``traffic_bytes``), ``traffic_bytes`` (their
    sum), ``flops`` and ``bytes_accessed`` (TPU; None where the compiler
    gives none, as XLA:GPU), and with a target ``device_memory_bytes``,
    ``fits`` (peak <= the device's memory: a GPU compile does not fail when
    it does not fit, a TPU compile does) and ``step_seconds_lower_bound``:
    the larger of FLOPs / peak FLOP/s and bytes accessed / bandwidth (on a
    GPU, the argument and output bytes / bandwidth). A bound, not a
    measurement: a scan body counts once in the compiler's FLOPs.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "data"), mesh=mesh,
    ...                               in_specs=P("data"), out_specs=P()))
    >>> compiled = total.lower(jnp.ones(4)).compile()
    >>> summary = parallel.compiled_summary(compiled)
    >>> [c["op"] for c in summary["collectives"]], summary["traffic_bytes"] > 0
    (['all-reduce'], True)
  """
  m = compiled.memory_analysis()
  memory = {
    key: int(getattr(m, f"{key}_size_in_bytes", 0) or 0)
    for key in ("argument", "output", "alias", "temp", "generated_code")
  }
  peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  if peak <= 0:
    peak = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  memory["peak"] = peak
  found = collectives(compiled.as_text() or "")
  cost = _cost(compiled)
  summary: dict[str, Any] = {
    "memory": {f"{k}_bytes": v for k, v in memory.items()},
    "collectives": [
      dict(dataclasses.asdict(c), traffic_bytes=c.traffic_bytes) for c in found
    ],
    "traffic_bytes": sum(c.traffic_bytes for c in found),
    "flops": cost.get("flops"),
    "bytes_accessed": cost.get("bytes accessed"),
  }
  if target is not None:
    summary["device_memory_bytes"] = target.memory_bytes
    summary["fits"] = peak <= target.memory_bytes
    flops = summary["flops"] or 0.0
    moved = summary["bytes_accessed"]
    if moved is None:
      moved = memory["argument"] + memory["output"]
    summary["step_seconds_lower_bound"] = max(
      flops / target.peak_flops, moved / target.memory_bandwidth
    )
  return summary


def _cost(compiled: jax.stages.Compiled) -> dict[str, float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # XLA:GPU's compile-only client gives no cost analysis
    return {}
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  if not cost:
    return {}
  return {k: float(v) for k, v in cost.items() if k in ("flops", "bytes accessed")}
