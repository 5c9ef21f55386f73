"""Exports a trained kqreg run to an integer .tflite file and checks it.

  python -m trainers.export --model_dir=runs/digits_w4a8
  python -m trainers.export --model_dir=runs/shapes_sweep/runs/w4_seed0

A kqreg-detect run exports its network (image to raw head output) and is
checked by mAP: LiteRT's outputs through the detector's own decoding and NMS
against Keras's, on the validation images.

Reads model.keras and params.json from --model_dir, writes the .tflite file
(default <model_dir>/model.tflite) and its report (<output>.json), runs the
file in ai-edge-litert next to the Keras model on the validation split (the
test split if the dataset has none) and prints one line per weight tensor
plus size, ratio to float32, agreement, accuracy and latency. Exits 2 with one
line on a missing file or a model that cannot be exported.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging

from trainers import flags as kqreg_flags

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

import kqreg  # noqa: E402  pylint: disable=unused-import
from kqreg import data as data_lib  # noqa: E402
from kqreg import export as export_lib  # noqa: E402

PROG = "kqreg-export"
FLAGS = flags.FLAGS

# trainers.flags defines --model_dir for the training entry points; define it
# here only when they are not loaded in the same process.
if "model_dir" not in FLAGS:
  flags.DEFINE_string("model_dir", None,
                      "kqreg run folder holding model.keras and params.json.")
flags.DEFINE_string("output", None,
                    "The .tflite file to write (default "
                    "<model_dir>/model.tflite); its report goes to "
                    "<output>.json.")
flags.DEFINE_bool("int_io", False, "int8 input and output tensors.")
flags.DEFINE_bool("allow_activation_widening", False,
                  "Export models with activations below 8 bits anyway "
                  "(TFLite computes them in 8 bits).")
flags.DEFINE_bool("allow_float", False,
                  "Export a run that was never quantized as float32.")
flags.DEFINE_integer("verify_examples", 256,
                     "Validation examples to compare file and Keras model on "
                     "(0: skip verification).", lower_bound=0)

# Training inputs used to calibrate activation ranges the model lacks.
_CALIBRATION_EXAMPLES = 256


def _read_params(model_dir: str) -> dict:
  path = os.path.join(model_dir, "params.json")
  try:
    with open(path) as f:
      params = json.load(f)
  except FileNotFoundError as e:
    raise export_lib.ExportError(
        f"--model_dir={model_dir!r} has no params.json; pass a folder written "
        "by kqreg-classify or kqreg-detect.") from e
  except (OSError, ValueError) as e:
    raise export_lib.ExportError(f"{path!r} is unreadable: {e}") from e
  config = params.get("config", params)
  if "dataset" not in config:
    raise export_lib.ExportError(
        f"{path!r} names no dataset under 'config'; pass a folder written by "
        "kqreg-classify.")
  return config


def _load_model(model_dir: str) -> tf_keras.Model:
  path = os.path.join(model_dir, "model.keras")
  if not os.path.isfile(path):
    raise export_lib.ExportError(
        f"--model_dir={model_dir!r} has no model.keras; train the run to the "
        "end first (kqreg-classify and kqreg-detect write it when they "
        "finish).")
  try:
    with kqreg.quantize_scope():
      return tf_keras.models.load_model(path)
  except Exception as e:  # pylint: disable=broad-except
    raise export_lib.ExportError(f"{path!r} cannot be loaded: {e}") from e


def _arrays(dataset: str, split: str, data_dir, take: int):
  ds, _ = data_lib.load(dataset, split, data_dir=data_dir)
  xs, ys = [], []
  for x, y in data_lib.pipeline(ds, batch_size=256, training=False,
                                take=take):
    xs.append(x.numpy())
    ys.append(y.numpy())
  return np.concatenate(xs), np.concatenate(ys)


def _cell(value) -> str:
  return "-" if value is None else str(value)


def _table(report: dict, check: dict) -> str:
  lines = [f"{'tensor':<48} {'layer':<24} {'type':<8} {'elements':>9} "
           f"{'levels':>6} {'per ch':>6} {'bits':>4}"]
  for row in report["weights"]:
    if row["role"] != "weights":
      continue
    name = row["name"].split(";")[0]
    name = name if len(name) <= 48 else "..." + name[-45:]
    cells = [_cell(row[k]) for k in ("levels", "levels_per_channel", "bits")]
    lines.append(
        f"{name:<48} {row['layer'] or '-':<24} {row['type']:<8} "
        f"{row['elements']:>9} {cells[0]:>6} {cells[1]:>6} {cells[2]:>4}")
  size, float_size = report["size_bytes"], report["float_size_bytes"]
  ratio = (f"{report['ratio_to_float']:.3f} of float32 ({float_size} bytes)"
           if float_size else "float32 size unknown")
  lines.append(f"file: {report['path']}: {size} bytes, {ratio}")
  lines.append("ops: " + ", ".join(f"{op} x{n}"
                                   for op, n in report["op_counts"].items()))
  if report["float_ops"]:
    lines.append(f"float ops: {', '.join(report['float_ops'])}")
  if report["float_layers"]:
    lines.append(f"float layers: {', '.join(report['float_layers'])}")
  if report["activation_widening"]:
    lines.append("activation widening (computed in 8 bits): " + ", ".join(
        f"{k} {v}-bit" for k, v in report["activation_widening"].items()))
  if check:
    agreement = check["top1_agreement"]
    lines.append(
        f"verify on {check['examples']} {check['split']} examples: top-1 "
        f"agreement {agreement if agreement is None else f'{agreement:.4f}'}, "
        f"max |diff| {check['max_abs_diff']:.3g} / mean |diff| "
        f"{check['mean_abs_diff']:.3g} ({check['diff_units']}), accuracy "
        f"tflite {check.get('tflite_accuracy', float('nan')):.4f} vs keras "
        f"{check.get('keras_accuracy', float('nan')):.4f}, latency "
        f"{check['latency_ms_per_example']:.3f} ms/example (1 thread)")
  lines.append(f"report: {report['report_path']}")
  return "\n".join(lines)


def _run_detection(model_dir: str, config: dict) -> str:
  """Exports a kqreg-detect run: the network, checked by mAP in LiteRT."""
  from kqreg.detection import data as det_data  # pylint: disable=g-import-not-at-top
  from kqreg.detection import export as det_export  # pylint: disable=g-import-not-at-top
  model = _load_model(model_dir)
  dataset, data_dir = config["dataset"], config.get("data_dir")
  train, info = det_data.load_detection(dataset, "train", data_dir)
  val_split = det_data.validation_split(info)
  val, _ = det_data.load_detection(dataset, val_split, data_dir)
  common = dict(image_size=config["image_size"], batch_size=16,
                max_boxes=config["max_boxes"], training=False, cache=False)
  calibration = np.concatenate([
      batch["images"].numpy() for batch in det_data.pipeline(
          train, take=_CALIBRATION_EXAMPLES // 2, **common)])
  check_ds = det_data.pipeline(val, take=FLAGS.verify_examples or 1, **common)
  output = FLAGS.output or os.path.join(model_dir, "model.tflite")
  t = det_export.export_detector(model, output, calibration, check_ds,
                                 info.num_classes)
  return "\n".join([
      f"file: {t['path']}: {t['size_bytes']} bytes, "
      f"{t['ratio_to_float']:.3f} of float32; kernels "
      f"{', '.join(t['weight_types'])}; float ops: "
      f"{', '.join(t['float_ops']) or 'none'}",
      f"verify on {t['examples']} {val_split} images: mAP@0.5 "
      f"{t['tflite_map50']:.3f} in LiteRT vs {t['keras_map50']:.3f} in Keras "
      f"(mAP@[.5:.95] {t['tflite_map']:.3f} vs {t['keras_map']:.3f}); mean "
      f"|LiteRT - Keras| {t['box_abs_diff']:.3g} in box logits, "
      f"{t['class_abs_diff']:.3g} in class probabilities; latency "
      f"{t['latency_ms_per_example']:.2f} ms/image (1 thread)",
      f"report: {t['path']}.json"])


def _run() -> str:
  model_dir = FLAGS.model_dir
  if not model_dir or not os.path.isdir(model_dir):
    raise export_lib.ExportError(
        f"--model_dir={model_dir!r} is not a folder; pass a kqreg run folder "
        "holding model.keras and params.json.")
  config = _read_params(model_dir)
  if "backbone" in config:
    return _run_detection(model_dir, config)
  model = _load_model(model_dir)
  dataset, data_dir = config["dataset"], config.get("data_dir")
  _, info = data_lib.load(dataset, "train", data_dir=data_dir)
  split = "validation" if "validation" in info.splits else "test"
  calibration, _ = _arrays(dataset, "train", data_dir, _CALIBRATION_EXAMPLES)
  output = FLAGS.output or os.path.join(model_dir, "model.tflite")
  report = export_lib.export_tflite(
      model, output, representative_data=calibration, int_io=FLAGS.int_io,
      allow_activation_widening=FLAGS.allow_activation_widening,
      allow_float=FLAGS.allow_float)
  check = {}
  if FLAGS.verify_examples:
    x, y = _arrays(dataset, split, data_dir, FLAGS.verify_examples)
    check = export_lib.verify_tflite(output, model, x, labels=y)
    check["split"] = split
  return _table(report, check)


def _main(argv) -> None:
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info and timing notes; kqreg warns via `warnings`
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    text = _run()
  except (export_lib.ExportError, data_lib.DatasetError) as e:
    kqreg_flags.fail(PROG, e)
  print(text)


def main() -> None:
  flags.mark_flag_as_required("model_dir")
  app.run(_main, flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
