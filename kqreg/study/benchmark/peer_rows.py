"""kqreg beside tfmot's n-bit scheme, QKeras and Larq: one table of peers.

Every tool quantizes the same float model and trains on the same batches in
paired rounds (`paired_training`), then is scored and exported
(`peers.export`); a tool that cannot run here is a row with the measured
reason. `kqreg-benchmark` puts `peers_section` into benchmark.md.
"""

from __future__ import annotations

import time
from typing import Collection, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import _tfmot
from kqreg.qat.transform import quantize
from kqreg.study.benchmark.measurements import _FULL_MODELS
from kqreg.study.benchmark.step_timing import (build_variant, compile_for_timing,
                                     paired_ratios)

__all__ = ["PEER_DATASET", "peer_data", "paired_training", "peer_comparison",
           "peers_section"]


PEER_DATASET = "kqreg_digits"


def peer_data(dataset: str = PEER_DATASET,
              data_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Train and validation splits of an offline dataset as arrays in [0, 1]."""
  from kqreg import data as data_lib  # pylint: disable=g-import-not-at-top
  splits = data_lib.load_splits(dataset, data_dir)
  arrays = {}
  for key, ds in (("train", splits.train), ("val", splits.validation)):
    xs, ys = zip(*data_lib.pipeline(ds, batch_size=1024, training=False,
                                    cache=False).as_numpy_iterator())
    arrays[f"x_{key}"] = np.concatenate(xs)
    arrays[f"y_{key}"] = np.concatenate(ys)
  return arrays


def paired_training(models: Dict[str, tf_keras.Model],
                    data: Dict[str, np.ndarray], *, epochs: int,
                    batch_size: int = 64, baseline: str = "float",
                    may_fail: Collection[str] = ()
                    ) -> Dict[str, Dict[str, object]]:
  """Trains several models on the same batches in paired, timed rounds.

  Every model is compiled alike (Adam 1e-3) and trained `epochs` over the
  full batches of `data`'s train split, one shuffled order for all. Each
  round feeds one batch to every model, in an order rotated from round to
  round, and times each step, as `paired_step_times` does with its fixed
  batch: the training is the timed work. The first round (tracing) is left
  out of the times.

  Args:
    may_fail: names of third-party models whose failing step becomes an
      {"error"} result; any other model's error (kqreg's own, the float
      baseline) propagates.

  Returns:
    name -> {"accuracy": validation accuracy (eval mode), and
    `paired_step_times`' step_s, ratio, ratio_low, ratio_high}; or
    {"error": message} for a `may_fail` model that failed (left out of
    later rounds).

  Raises:
    ValueError: `baseline` is not one of `models`, or is in `may_fail`.
    Exception: whatever a model outside `may_fail` raised in its step.
  """
  if baseline not in models:
    raise ValueError(f"`baseline` {baseline!r} is not among {list(models)}.")
  if baseline in may_fail:
    raise ValueError(f"`baseline` {baseline!r} cannot be in `may_fail`.")
  failed, train_functions = {}, {}
  x, y = data["x_train"], data["y_train"]
  for name, model in models.items():
    compile_for_timing(model)
    try:
      # The optimizer's slots and the loss's accumulators now, so that the
      # first step traces once (as `step_timing.training_step` does).
      _tfmot.build_step_state(model, tf.constant(y[:1]))
    except Exception as e:  # pylint: disable=broad-except
      if name not in may_fail:
        raise
      failed[name] = _failure(e)
      continue
    train_functions[name] = model.make_train_function()
  order = np.random.default_rng(0)
  # Full batches only: a short last batch would trace every step again.
  batches = len(x) // batch_size
  names = list(models)
  times = {name: [] for name in names}
  round_index = 0
  for _ in range(epochs):
    index = order.permutation(len(x))
    # Each model steps as `fit` does, its train function on an iterator, all
    # over the same batches (see `step_timing.training_step`).
    epoch = tf.data.Dataset.from_tensor_slices((x[index], y[index])).batch(
        batch_size, drop_remainder=True)
    iterators = {name: iter(epoch) for name in names}
    for _ in range(batches):
      live = [n for n in names if n not in failed]
      shift = round_index % len(live)
      for name in live[shift:] + live[:shift]:
        start = time.perf_counter()
        try:
          train_functions[name](iterators[name])
        except Exception as e:  # pylint: disable=broad-except
          if name not in may_fail:
            raise  # kqreg's own rows and the baseline fail loudly
          failed[name] = _failure(e)
          continue
        if round_index:
          times[name].append(time.perf_counter() - start)
      round_index += 1
  results = paired_ratios({n: times[n] for n in names if n not in failed},
                          baseline)
  for name, result in results.items():
    correct = 0
    # Eager calls: a predict function would be one more trace per model.
    for start in range(0, len(data["x_val"]), 256):
      logits = models[name](data["x_val"][start:start + 256], training=False)
      correct += int(np.sum(np.argmax(logits, -1) ==
                            data["y_val"][start:start + 256]))
    result["accuracy"] = correct / len(data["x_val"])
  return {name: results.get(name) or failed[name] for name in models}


def _failure(error: Exception) -> Dict[str, str]:
  return {"error": f"{type(error).__name__}: {str(error)[:80]}"}


def peer_comparison(data: Dict[str, np.ndarray], models, *,
                    bits: Tuple[int, ...] = (8, 4), activation_bits: int = 8,
                    epochs: int = 3, batch_size: int = 64, peers=None,
                    references: Tuple[str, ...] = ("tfmot_8bit", "kqreg"),
                    bn_momentum: Optional[float] = 0.9,
                    export_rows: bool = True) -> List[Dict[str, object]]:
  """kqreg, stock tfmot and the peers on the same models, data and training.

  Per model: the float model (seed 0), kqreg at each of `bits`
  (w<b>a<activation_bits>), stock tfmot 8-bit (if in `references`) and every
  available peer at each of `bits` are built from it, trained together by
  `paired_training` (step time against float, validation accuracy), then
  exported with `peers.export`. A peer that cannot run here gives one row
  with its measured reason; a model a peer cannot build, a row with the
  reason ("unsupported: <layer>"). Only third-party tools (the peers and
  stock tfmot) fail softly, as a row's note: an error in building,
  training or exporting kqreg's own rows (float, kqreg) propagates.

  Args:
    data: `peer_data()`'s arrays.
    models: (name, kwargs) pairs of `kqreg.classification.models` presets.
    peers: `kqreg.study.benchmark.peers.Peer`s (default: all of `PEERS`).
    bn_momentum: set on every BatchNormalization of the float model before
      any tool sees it (None: keep the model's). kqreg's own presets use 0.9;
      MobileNetV2 from `tf_keras.applications` keeps Keras' 0.999, whose
      moving statistics need thousands of steps to follow the weights: after
      a short training every model then predicts one class in eval mode.

  Returns:
    One dict per row: model, tool, version, bits, accuracy, step_ms, ratio,
    ratio_ci, exported, file_bytes, kernels, kernel_levels, float_ops, note.
  """
  import kqreg  # pylint: disable=g-import-not-at-top
  from kqreg.study.benchmark import peers as peers_lib
  peers = peers_lib.PEERS if peers is None else peers
  shape = tuple(data["x_train"].shape[1:])
  # Labels are 0..k-1 with every class present (small balanced sets).
  classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
  status = {peer.name: peer.available() for peer in peers}
  a = activation_bits
  rows = []
  for model_name, kwargs in models:
    def fresh(model_name=model_name, kwargs=kwargs):
      model = build_variant(model_name, "float", shape, classes, **kwargs)
      for layer in model.layers:
        if bn_momentum is not None and isinstance(
            layer, tf_keras.layers.BatchNormalization):
          layer.momentum = bn_momentum  # in its config: every clone keeps it
      return model

    float_model = fresh()
    # (tool, version, bits, builder or None, note); the references as
    # `build_variant` makes them, from the same float model. Tools in
    # `_OWN_TOOLS` are kqreg's: their errors propagate.
    plan = [("float", None, "fp", lambda: float_model, "")]
    if "tfmot_8bit" in references:
      plan.append(("tfmot_8bit", tfmot.__version__, "w8a8",
                   lambda: tfmot.quantization.keras.quantize_model(fresh()),
                   ""))
    if "kqreg" in references:
      plan += [("kqreg", kqreg.__version__, f"w{b}a{a}",
                lambda b=b: quantize(fresh(), f"w{b}a{a}"), "") for b in bits]
    for peer in peers:
      ok, reason = status[peer.name]
      if not ok:  # one row with the measured reason, nothing built
        plan.append((peer.name, None, "–", None, reason))
        continue
      missing = peer.unsupported(float_model)
      note = (f"unsupported (kept float): {', '.join(missing)}" if missing
              else "")
      plan += [(peer.name, peer.version(), f"w{b}a{a}",
                lambda b=b, peer=peer: peer.build(fresh(), b, a), note)
               for b in bits]
    built = {}
    for tool, version, label, build, note in plan:
      row = _peer_row(model_name, tool, version, label, note)
      rows.append(row)
      if build is None:
        continue
      if tool in _OWN_TOOLS:
        built[f"{tool} {label}"] = (row, build())  # kqreg's errors propagate
        continue
      try:
        built[f"{tool} {label}"] = (row, build())
      except Exception as e:  # pylint: disable=broad-except
        # A third-party tool: the row says why (PeerError: "unsupported:
        # <layer>"); the other tools still run.
        row["note"] = (str(e) if isinstance(e, peers_lib.PeerError) else
                       f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    trained = paired_training(
        {k: m for k, (_, m) in built.items()}, data, epochs=epochs,
        batch_size=batch_size, baseline="float fp",
        may_fail=[k for k, (row, _) in built.items()
                  if row["tool"] not in _OWN_TOOLS])
    for key, (row, model) in built.items():
      result = trained[key]
      if "error" in result:
        row["note"] = result["error"]
        continue
      row.update(accuracy=result["accuracy"], step_ms=result["step_s"] * 1e3,
                 ratio=result["ratio"],
                 ratio_ci=[result["ratio_low"], result["ratio_high"]])
      if export_rows and row["tool"] != "float":
        representative = data["x_train"][:64]
        exported = peers_lib.export(model, representative)
        if exported["error"] and row["tool"] in _OWN_TOOLS:
          _raise_export_error(model, representative, exported["error"])
        row.update(exported=exported["exported"],
                   file_bytes=exported["size_bytes"],
                   kernels=exported["kernels"],
                   kernel_levels=exported["kernel_levels"],
                   float_ops=exported["float_ops"])
        if exported["error"]:
          row["note"] = "; ".join(filter(None, (row["note"],
                                                exported["error"])))
      print(f"peers {model_name} {key}: val acc {row['accuracy']:.3f}, "
            f"{row['ratio']:.2f}x float step, tflite "
            f"{row['file_bytes'] if row['exported'] else 'no'}", flush=True)
  return rows


# kqreg's own rows: errors there are kqreg's bugs, raised, never a note.
_OWN_TOOLS = ("float", "kqreg")


def _raise_export_error(model: tf_keras.Model, representative: np.ndarray,
                        error: str) -> None:
  """Raises what `peers.export` turned into `error` for one of kqreg's rows.

  `peers.export` keeps any conversion failure as the row's answer, as a
  peer's must be; for kqreg's own model the conversion runs again outside
  it, so the original exception (and traceback) propagates.
  """
  import warnings  # pylint: disable=g-import-not-at-top
  from kqreg.export import converter  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    converter.convert(model, optimize=True, representative=converter.
                      representative(representative, model))
  raise RuntimeError(f"kqreg's own model {model.name!r} failed to export: "
                     f"{error}")


def _peer_row(model, tool, version, bits, note="") -> Dict[str, object]:
  return {"model": model, "tool": tool, "version": version, "bits": bits,
          "accuracy": None, "step_ms": None, "ratio": None, "ratio_ci": None,
          "exported": None, "file_bytes": None, "kernels": "",
          "kernel_levels": None, "float_ops": None, "note": note}


def peers_section(quick: bool) -> Dict[str, object]:
  """The peers table: the tiny cnn at 4 bits in quick mode, else every model."""
  data = peer_data()
  if quick:
    # One epoch is 17 steps: with BN momentum 0.9 the moving statistics
    # trail the weights for ~50 steps (every model then predicts one class
    # in eval mode); with 0.5 they keep up.
    models = (("cnn", {"widths": (16, 32, 64)}),)
    bits, epochs, references, momentum = (4,), 1, ("kqreg",), 0.5
  else:
    models = tuple((name, kwargs) for name, kwargs, _ in _FULL_MODELS)
    bits, epochs = (8, 4), 10
    references, momentum = ("tfmot_8bit", "kqreg"), 0.9
  rows = peer_comparison(data, models, bits=bits, epochs=epochs,
                         references=references, bn_momentum=momentum)
  return {"dataset": PEER_DATASET, "epochs": epochs, "batch_size": 64,
          "bn_momentum": momentum,
          "input_shape": list(data["x_train"].shape[1:]),
          "train_examples": int(len(data["x_train"])),
          "val_examples": int(len(data["x_val"])), "rows": rows}
