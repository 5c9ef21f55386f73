"""Exports a finished kqreg run to an integer .tflite file and checks it.

  kqreg-export --model_dir=runs/digits_w4a8
  kqreg-export --model_dir=runs/shapes_sweep/runs/w4_seed0

Reads the run with `kqreg.runs.load_run` (its task, config and model.keras),
writes the .tflite file (default <model_dir>/model.tflite) and its report
(<output>.json), and checks the file in ai-edge-litert against the Keras model
on the same validation split training used (`kqreg.data.splits_of`): a
classifier by top-1 agreement, output differences, accuracy and latency; a
detector by mAP through its own decoding and NMS. Exits 2 with one line on a
missing file or a model that cannot be exported.
"""

from __future__ import annotations

import json
import os

from . import app

PROG = "kqreg-export"
# Options that only a classifier's export takes.
_CLASSIFY_OPTIONS = ("int_io", "allow_activation_widening", "allow_float")


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
  table = report.get("storage_table")
  lines.append(f"storage: {report.get('storage', 'size')}" + (
      "" if not table else " (" + ", ".join(
          f"{op} {kind}" for op, kind in sorted(table.items())) + ")"))
  timed = report.get("latency_ms")
  if timed:
    ratio = report.get("latency_ratio_to_float") or {}
    lines.append("latency (LiteRT, batch 1, median): " + ", ".join(
        f"{timed[k]:.3f} ms {'1 thread' if k == '1' else k + ' cores'}" + (
            f" ({ratio[k]:.2f} of float32)" if k in ratio else "")
        for k in timed))
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


def _detection_text(t) -> str:
  return "\n".join([
      f"file: {t['path']}: {t['size_bytes']} bytes, "
      f"{t['ratio_to_float']:.3f} of float32; kernels "
      f"{', '.join(t['weight_types'])}; float ops: "
      f"{', '.join(t['float_ops']) or 'none'}",
      f"verify on {t['examples']} {t['split']} images: mAP@0.5 "
      f"{t['tflite_map50']:.3f} in LiteRT vs {t['keras_map50']:.3f} in Keras "
      f"(mAP@[.5:.95] {t['tflite_map']:.3f} vs {t['keras_map']:.3f}); mean "
      f"|LiteRT - Keras| {t['box_abs_diff']:.3g} in box logits, "
      f"{t['class_abs_diff']:.3g} in class probabilities; latency "
      f"{t['latency_ms_per_example']:.2f} ms/image (1 thread)",
      f"report: {t['path']}.json"])


def _run(holders) -> str:
  from kqreg import runs
  model_dir = holders.model_dir.value
  if not model_dir or not os.path.isdir(model_dir):
    raise runs.ConfigError(
        f"--model_dir={model_dir!r} is not a folder; pass a kqreg run folder "
        "holding model.keras and params.json.")
  task, config, model = runs.load_run(model_dir)
  with runs.data_errors(config):
    data = task.load(config)
  output = holders.output.value or os.path.join(model_dir, "model.tflite")
  options = {name: getattr(holders, name).value for name in _CLASSIFY_OPTIONS
             if app.given(name)}
  if holders.verify_examples.value is not None:
    options["verify_examples"] = holders.verify_examples.value
  if app.given("storage"):
    config.storage = holders.storage.value
  figures = task.export(model, config, data, output, **options)
  if task.name == "detect":
    return _detection_text(figures)
  with open(output + ".json") as f:
    report = json.load(f)
  check = figures if "top1_agreement" in figures else {}
  return _table(report, check)


def _main(argv, holders) -> None:
  output = holders.output.value
  print(app.run_main(PROG, argv, lambda: _run(holders),
                     new_dirs=[os.path.dirname(output) if output else None]))


def main() -> None:
  # detection: a run folder may hold a detector.
  app.start(PROG, ("model_dir", "export"), _main, required=("model_dir",),
            detection=True)


if __name__ == "__main__":
  main()
