"""Latency of a .tflite file in LiteRT (ai-edge-litert), for export reports.

`measure_latency` times `Interpreter.invoke()` with 1 thread and with all
cores; `LatencyReport.ratio_to` compares two files (e.g. int8 against float);
`latency_table` renders several reports as Markdown. `op_profile` reports
per-op timings when the Python runtime exposes LiteRT's op profiler; in
ai-edge-litert 2.3.0 it does not, and `op_profile` says so with the reason.

Imports only numpy, the standard library and ai_edge_litert (no TensorFlow).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "LatencyReport",
    "OpTiming",
    "ThreadLatency",
    "latency_table",
    "measure_latency",
    "op_profile",
]

MIN_REPEATS = 20
DEFAULT_BUDGET_S = 1.0
_MAX_REPEATS = 100_000
# Integer input types fed with random values over their whole range: the
# quantized inputs of int8 / uint8 / int16 files.
_QUANTIZED_IO = (np.int8, np.uint8, np.int16)


@dataclasses.dataclass(frozen=True)
class ThreadLatency:
  """invoke() wall time at one thread count, in milliseconds.

  Example:
    >>> t = ThreadLatency(threads=1, median_ms=0.5, q1_ms=0.4, q3_ms=0.7,
    ...                   repeats=20)
    >>> t.q1_ms <= t.median_ms <= t.q3_ms
    True
  """
  threads: int
  median_ms: float
  q1_ms: float
  q3_ms: float
  repeats: int


@dataclasses.dataclass(frozen=True)
class LatencyReport:
  """Latency of one file: `timings` maps a thread key to `ThreadLatency`.

  Keys are "1", "all" (all cores, `os.cpu_count()`) or str(n) for other
  requested counts. `op_resolver` is the LiteRT op resolver used ("AUTO",
  i.e. built-in optimized kernels plus the default XNNPACK delegate);
  `default_delegate_applied` is True when the interpreter's node list holds a
  DELEGATE node after `allocate_tensors()` (None when it could not be read).

  Example:
    >>> f = LatencyReport("float.tflite", 4000, {
    ...     "1": ThreadLatency(1, 0.60, 0.55, 0.70, 100),
    ...     "all": ThreadLatency(4, 0.30, 0.28, 0.35, 100)})
    >>> q = LatencyReport("int8.tflite", 1000, {
    ...     "1": ThreadLatency(1, 0.15, 0.14, 0.16, 100),
    ...     "all": ThreadLatency(4, 0.12, 0.11, 0.13, 100)})
    >>> q.ratio_to(f)
    {'1': 0.25, 'all': 0.4}
    >>> q.median_ms(None), q.median_ms(1)
    (0.12, 0.15)
  """
  path: str
  file_bytes: int
  timings: Dict[str, ThreadLatency]
  batch: int = 1
  int_io: bool = False
  input_dtypes: Tuple[str, ...] = ()
  op_resolver: str = "AUTO"
  default_delegate_applied: Optional[bool] = None
  budget_s: Optional[float] = None

  def median_ms(self, threads: Optional[int] = 1) -> float:
    """Median at `threads` (None: all cores)."""
    return self.timings[_thread_key(threads)].median_ms

  def ratio_to(self, other: "LatencyReport") -> Dict[str, float]:
    """self median / other median for each thread key both reports have."""
    return {key: t.median_ms / other.timings[key].median_ms
            for key, t in self.timings.items() if key in other.timings}

  def as_dict(self) -> Dict[str, Any]:
    """Plain types only, for `json.dumps`.

    Example:
      >>> import json
      >>> r = LatencyReport("m.tflite", 10, {"1": ThreadLatency(
      ...     1, 0.5, 0.4, 0.6, 20)})
      >>> json.loads(json.dumps(r.as_dict()))["timings"]["1"]["median_ms"]
      0.5
    """
    out = dataclasses.asdict(self)
    out["input_dtypes"] = list(self.input_dtypes)
    return out


@dataclasses.dataclass(frozen=True)
class OpTiming:
  """One op's time from a LiteRT op profiler (not produced in 2.3.0).

  Example:
    >>> OpTiming(node=0, op="CONV_2D", avg_ms=0.1, runs=10).op
    'CONV_2D'
  """
  node: int
  op: str
  avg_ms: float
  runs: int


def _thread_key(threads: Optional[int]) -> str:
  return "all" if threads is None else str(int(threads))


def _resolve_threads(threads: Optional[int]) -> int:
  if threads is None:
    return os.cpu_count() or 1
  if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
    raise ValueError(f"threads={threads!r}: pass ints >= 1 or None (all "
                     "cores).")
  return threads


def _read(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise FileNotFoundError(f"path={path!r}: cannot read it ({e}).") from e


def _interpreter(data: bytes, path: str, num_threads: int, op_resolver: str):
  # pylint: disable-next=g-import-not-at-top
  from ai_edge_litert.interpreter import Interpreter, OpResolverType
  try:
    resolver = OpResolverType[op_resolver]
  except KeyError:
    raise ValueError(
        f"op_resolver={op_resolver!r}: pass one of "
        f"{[r.name for r in OpResolverType]}.") from None
  try:
    return Interpreter(model_content=data, num_threads=num_threads,
                       experimental_op_resolver_type=resolver)
  except (ValueError, RuntimeError) as e:
    raise ValueError(f"path={path!r}: cannot load it as a TFLite file "
                     f"({e}).") from e


def _random_input(detail: Dict[str, Any], shape, rng) -> np.ndarray:
  dtype = np.dtype(detail["dtype"])
  if dtype in [np.dtype(t) for t in _QUANTIZED_IO]:
    limits = np.iinfo(dtype)
    return rng.integers(limits.min, limits.max, size=shape, endpoint=True,
                        dtype=dtype)
  if np.issubdtype(dtype, np.integer):  # ids or indices: keep them small
    return rng.integers(0, 2, size=shape).astype(dtype)
  if dtype == np.bool_:
    return rng.integers(0, 2, size=shape).astype(bool)
  if np.issubdtype(dtype, np.floating):
    return rng.standard_normal(size=shape).astype(dtype)
  raise ValueError(f"input {detail['name']!r} has dtype {dtype}; "
                   "measure_latency feeds numeric inputs only.")


def _prepare(interp, path: str, batch: int, rng) -> List[np.ndarray]:
  """Resizes the batch axis to `batch`, allocates, sets random inputs."""
  details = interp.get_input_details()
  shapes = []
  for d in details:
    shape = [int(s) for s in d["shape"]]
    if shape and shape[0] != batch:
      try:
        interp.resize_tensor_input(d["index"], [batch] + shape[1:])
      except (ValueError, RuntimeError) as e:
        raise ValueError(f"path={path!r}: cannot resize input {d['name']!r} "
                         f"{shape} to batch {batch} ({e}).") from e
      shape[0] = batch
    shapes.append(shape)
  interp.allocate_tensors()
  values = []
  for d, shape in zip(details, shapes):
    value = _random_input(d, shape, rng)
    interp.set_tensor(d["index"], value)
    values.append(value)
  return values


def _delegate_applied(interp) -> Optional[bool]:
  """True if a delegate node replaced ops (read after allocate_tensors)."""
  try:
    # Private pybind wrapper; no reference to it is kept (invoke() refuses
    # to run while one exists).
    count = interp._interpreter.NumNodes()  # pylint: disable=protected-access
    return any(interp._interpreter.NodeName(i) == "DELEGATE"  # pylint: disable=protected-access
               for i in range(count))
  except Exception:  # pylint: disable=broad-except
    return None


def _time_invokes(invoke, repeats: int) -> np.ndarray:
  times = np.empty(repeats, np.int64)
  clock = time.perf_counter_ns
  for i in range(repeats):
    start = clock()
    invoke()
    times[i] = clock() - start
  return times


def measure_latency(path: str, *,
                    threads: Sequence[Optional[int]] = (1, None),
                    repeats: Optional[int] = None,
                    warmup: int = 10,
                    batch: int = 1,
                    int_io: Optional[bool] = None,
                    budget_s: float = DEFAULT_BUDGET_S,
                    min_repeats: int = MIN_REPEATS,
                    op_resolver: str = "AUTO",
                    seed: int = 0) -> LatencyReport:
  """Median and quartiles of `invoke()` wall time for the file at `path`.

  One `ai_edge_litert.interpreter.Interpreter` per thread count, with the
  default op resolver ("AUTO", which ai-edge-litert maps to BUILTIN: the
  optimized built-in kernels with the default delegate, XNNPACK, applied as
  LiteRT applies it by default; "BUILTIN_WITHOUT_DEFAULT_DELEGATES" and
  "BUILTIN_REF" are the alternatives, recorded in the report). Each input
  gets random data of its dtype and shape once (int8/uint8/int16: random
  ints over the type's range; other ints: 0 or 1; floats: standard normal),
  the batch axis resized to `batch`. After `warmup` invokes, each invoke is
  timed alone with `time.perf_counter_ns` (Python call overhead included,
  about a microsecond).

  Time is bounded: with `repeats` None the count is chosen so one thread
  count takes about `budget_s` seconds (estimated from the warm-up invokes),
  never fewer than `min_repeats` (20) nor more than 100,000; a slow model
  therefore takes at least 20 invokes per thread count.

  Args:
    path: the .tflite file.
    threads: thread counts; None means all cores (`os.cpu_count()`).
    repeats: a fixed number of timed invokes, or None (adaptive).
    warmup: untimed invokes first (the first ones pack weights).
    batch: batch size to run.
    int_io: None detects it (an int8/uint8/int16 input); True or False is
      checked against the file.
    budget_s: seconds per thread count when `repeats` is None.
    min_repeats: the fewest timed invokes when `repeats` is None.
    op_resolver: a name of `ai_edge_litert.interpreter.OpResolverType`.
    seed: for the random inputs.

  Returns:
    A `LatencyReport`.

  Raises:
    FileNotFoundError: `path` cannot be read.
    ValueError: not a TFLite file, bad arguments, or `int_io` contradicting
      the file's input dtypes.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "relu.tflite")
    >>> _write_example_model(path)
    >>> report = measure_latency(path, threads=(1, None), budget_s=0.01)
    >>> sorted(report.timings), report.int_io, report.input_dtypes
    (['1', 'all'], False, ('float32',))
    >>> t = report.timings["1"]
    >>> 0 < t.q1_ms <= t.median_ms <= t.q3_ms and t.repeats >= 20
    True
  """
  if batch < 1 or warmup < 0 or budget_s <= 0 or min_repeats < 1:
    raise ValueError("batch and min_repeats must be >= 1, warmup >= 0, "
                     "budget_s > 0.")
  if repeats is not None and repeats < 1:
    raise ValueError(f"repeats={repeats}: pass None (adaptive) or >= 1.")
  if not threads:
    raise ValueError("threads is empty: pass e.g. (1, None).")
  data = _read(path)
  counts = [(_thread_key(t), _resolve_threads(t)) for t in threads]
  timings: Dict[str, ThreadLatency] = {}
  dtypes: Tuple[str, ...] = ()
  detected = False
  delegated: Optional[bool] = None
  for key, count in counts:
    interp = _interpreter(data, path, count, op_resolver)
    values = _prepare(interp, path, batch, np.random.default_rng(seed))
    dtypes = tuple(v.dtype.name for v in values)
    detected = any(v.dtype in [np.dtype(t) for t in _QUANTIZED_IO]
                   for v in values)
    if int_io is not None and bool(int_io) != detected:
      raise ValueError(f"int_io={int_io} but {path!r} has inputs {dtypes}; "
                       "leave int_io=None to detect it.")
    delegated = _delegate_applied(interp)
    invoke = interp.invoke
    warm = _time_invokes(invoke, warmup)
    count_repeats = repeats
    if count_repeats is None:
      # The median of the later warm-up invokes (the first packs weights).
      estimate = (float(np.median(warm[1:])) if len(warm) > 1
                  else float(_time_invokes(invoke, 1)[0]))
      count_repeats = int(min(_MAX_REPEATS, max(
          min_repeats, math.ceil(budget_s * 1e9 / max(estimate, 1.0)))))
    times_ms = _time_invokes(invoke, count_repeats) / 1e6
    q1, median, q3 = np.percentile(times_ms, [25, 50, 75])
    timings[key] = ThreadLatency(threads=count, median_ms=float(median),
                                 q1_ms=float(q1), q3_ms=float(q3),
                                 repeats=count_repeats)
    del invoke, interp
  return LatencyReport(
      path=path, file_bytes=len(data), timings=timings, batch=batch,
      int_io=detected, input_dtypes=dtypes, op_resolver=op_resolver,
      default_delegate_applied=delegated,
      budget_s=budget_s if repeats is None else None)


def latency_table(reports: Mapping[str, LatencyReport]) -> str:
  """A Markdown table: file, bytes, median ms at 1 thread and all cores.

  With a "float" entry, two more columns give each median divided by the
  float file's (1 thread, all cores). Medians have 4 significant digits;
  missing values show as "-".

  Example:
    >>> f = LatencyReport("f.tflite", 4000, {
    ...     "1": ThreadLatency(1, 0.6, 0.5, 0.7, 50),
    ...     "all": ThreadLatency(2, 0.4, 0.3, 0.5, 50)})
    >>> q = LatencyReport("q.tflite", 1000, {
    ...     "1": ThreadLatency(1, 0.15, 0.1, 0.2, 50),
    ...     "all": ThreadLatency(2, 0.2, 0.1, 0.3, 50)})
    >>> print(latency_table({"float": f, "int8": q}))
    | file | bytes | median ms, 1 thread | median ms, all cores | ratio to float, 1 thread | ratio to float, all cores |
    |---|---:|---:|---:|---:|---:|
    | float | 4000 | 0.6 | 0.4 | 1.00 | 1.00 |
    | int8 | 1000 | 0.15 | 0.2 | 0.25 | 0.50 |
  """
  base = reports.get("float")
  header = ["file", "bytes", "median ms, 1 thread", "median ms, all cores"]
  if base is not None:
    header += ["ratio to float, 1 thread", "ratio to float, all cores"]
  lines = ["| " + " | ".join(header) + " |",
           "|---|" + "---:|" * (len(header) - 1)]
  for name, report in reports.items():
    medians = [report.timings.get(k) for k in ("1", "all")]
    row = [name, str(report.file_bytes)] + [
        "-" if t is None else f"{t.median_ms:.4g}" for t in medians]
    if base is not None:
      ratios = report.ratio_to(base)
      row += ["-" if k not in ratios else f"{ratios[k]:.2f}"
              for k in ("1", "all")]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _profiler_probe() -> Tuple[List[str], str]:
  """Profiling entry points the installed ai_edge_litert exposes to Python.

  Returns (names found, reason op_profile cannot run). Searches the public
  Python classes and their pybind wrappers for a name containing "profil",
  and the package for a shipped `benchmark_model` executable.

  Example:
    >>> found, reason = _profiler_probe()
    >>> isinstance(found, list) and "ai-edge-litert" in reason
    True
  """
  # pylint: disable=g-import-not-at-top
  import ai_edge_litert
  from ai_edge_litert import interpreter as interpreter_lib
  # pylint: enable=g-import-not-at-top
  version = getattr(ai_edge_litert, "__version__", "?")
  places: Dict[str, Any] = {
      "interpreter.Interpreter": interpreter_lib.Interpreter,
      "_pywrap_litert_interpreter_wrapper.InterpreterWrapper": getattr(
          interpreter_lib._interpreter_wrapper,  # pylint: disable=protected-access
          "InterpreterWrapper", None),
  }
  try:
    from ai_edge_litert import compiled_model  # pylint: disable=g-import-not-at-top
    places["compiled_model.CompiledModel"] = compiled_model.CompiledModel
    places["CompiledModelWrapper"] = getattr(
        compiled_model._cm, "CompiledModelWrapper", None)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    pass
  found = [f"{where}.{name}" for where, obj in places.items()
           if obj is not None for name in dir(obj) if "profil" in name.lower()]
  package = os.path.dirname(os.path.abspath(ai_edge_litert.__file__))
  for root, _, files in os.walk(package):
    for name in files:
      full = os.path.join(root, name)
      if "benchmark_model" in name and not name.endswith((".py", ".pyc")) \
          and os.access(full, os.X_OK):
        found.append(os.path.relpath(full, package))
  searched = ", ".join(places)
  if found:
    reason = (f"ai-edge-litert {version} exposes {found}, which op_profile "
              "does not drive yet; no per-op timings were taken.")
  else:
    reason = (
        f"ai-edge-litert {version} has no per-op profiler reachable from "
        f"Python: no attribute containing 'profil' on {searched}, and no "
        "benchmark_model binary in the wheel (tools/benchmark_litert_model.py "
        "times whole runs only). The constructor flag "
        "experimental_force_delegate_node_profiling only matters once a C++ "
        "profiler is attached. libLiteRt.so exports a C profiler API "
        "(LiteRtCompiledModelGetProfiler, LiteRtGetProfilerEvents) for "
        "CompiledModel, but turning profiling on needs runtime options the "
        "wheel does not expose (checked by hand for 2.3.0). Use LiteRT's C++ "
        "benchmark_model --enable_op_profiling=true for per-op times.")
  return found, reason


def op_profile(path: str, *, threads: int = 1, runs: int = 20
               ) -> Tuple[Optional[List[OpTiming]], Optional[str]]:
  """Per-op timings from LiteRT's op profiler, or (None, why not).

  Checks the file loads (with `threads` threads), then looks for a profiler
  the Python runtime exposes (`_profiler_probe`). ai-edge-litert 2.3.0 has
  none, so this returns (None, reason); no estimate stands in for a profile.

  Args:
    path: the .tflite file.
    threads: interpreter threads for the profiled runs.
    runs: profiled invokes, once a profiler is available.

  Returns:
    (list of `OpTiming`, None) with a profiler; (None, reason) without.

  Raises:
    FileNotFoundError: `path` cannot be read.
    ValueError: not a TFLite file, or bad `threads` / `runs`.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "relu.tflite")
    >>> _write_example_model(path)
    >>> timings, reason = op_profile(path)
    >>> (timings is None) == (reason is not None)
    True
  """
  if runs < 1:
    raise ValueError(f"runs={runs}: pass >= 1.")
  _interpreter(_read(path), path, _resolve_threads(threads), "AUTO")
  _, reason = _profiler_probe()
  return None, reason


# A one-op float model, RELU on [batch, 4] with a dynamic batch axis, written
# with ai_edge_litert.schema_py_generated (372 bytes). For the examples.
_EXAMPLE_MODEL = (
    "CAAAAFRGTDOm////FAAAACAAAABEAAAAPAEAAAMAAAABAAAACAAAAAQABAAEAAAA"
    "IQAAAGtxcmVnIGV4YW1wbGU6IFJFTFUgb24gW2JhdGNoLCA0XQAAAAEAAAAUAAAA"
    "AAAOABgAFAAQAAwACAAEAA4AAAAUAAAAHAAAAEgAAABMAAAAUAAAAAQAAABtYWlu"
    "AAAAAAEAAAAQAAAAAAAKAAwAAAAIAAQACgAAAAgAAAAMAAAAAQAAAAEAAAABAAAA"
    "AAAAAAEAAAABAAAAAQAAAAAAAAACAAAATAAAAAQAAADQ////DAAAABQAAAAYAAAA"
    "AgAAAP////8EAAAAAQAAAHkAAAACAAAAAQAAAAQAAAAUABAADAAAAAAACAAAAAAA"
    "AAAEABQAAAAMAAAAFAAAABgAAAACAAAA/////wQAAAABAAAAeAAAAAIAAAABAAAA"
    "BAAAAAEAAAAQAAAADAAMAAsAAAAAAAQADAAAABMAAAAAAAAT")


def _write_example_model(path: str) -> None:
  """Writes the example RELU model to `path`."""
  with open(path, "wb") as f:
    f.write(base64.b64decode(_EXAMPLE_MODEL))
