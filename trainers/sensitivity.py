"""Per-layer quantization sensitivity of a run, and bits under a budget.

  kqreg-sensitivity --model_dir=runs/mnist_fp
  kqreg-sensitivity --model_dir=runs/mnist_fp --budget=0.15x

Measures every quantizable layer of the run's model at each
--sensitivity_bits on one calibration batch of its training data
(`kqreg.sensitivity`), prints the table, writes sensitivity.csv and the heat
map sensitivity.png, and with --budget prints the policy `kqreg.allocate`
chooses: a --bits value for the next run. Exits 2 with one line on a missing
run or a bad budget.
"""

from __future__ import annotations

import os

from . import app

PROG = "kqreg-sensitivity"


def _bits(values, flag: str):
  from kqreg import runs
  try:
    bits = tuple(int(v) for v in values)
  except ValueError:
    bits = ()
  if not bits or not all(2 <= b <= 8 for b in bits):
    raise runs.ConfigError(
        f"--{flag}={','.join(values)}: give whole bit-widths from 2 to 8 "
        "such as 2,3,4,8.")
  return bits


def _calibration(task, config, examples: int):
  """One batch of `examples` training inputs (and labels), unshuffled."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from kqreg import runs
  config = dataclasses.replace(config, batch_size=examples, augment=False)
  with runs.data_errors(config):
    data = task.load(config)
    return next(iter(task.datasets(config, data)["train_eval"]))


def _run(holders) -> str:
  from kqreg.mixed_precision import auto_allocation
  from kqreg.mixed_precision import allocator as bit_allocation
  from kqreg.mixed_precision import layer_sensitivity as layer_sensitivity
  from kqreg import runs
  from kqreg.mixed_precision import sensitivity_report
  from kqreg.qat import policy as policy_lib
  from kqreg.mixed_precision.budget import parse_budget
  model_dir = holders.model_dir.value
  if not model_dir or not os.path.isdir(model_dir):
    raise runs.ConfigError(
        f"--model_dir={model_dir!r} is not a folder; pass a kqreg run folder "
        "holding model.keras and params.json.")
  bits = _bits(holders.sensitivity_bits.value, "sensitivity_bits")
  choices = _bits(holders.choices.value, "choices")
  base = policy_lib.BitPolicy.parse(holders.base.value)
  budget = holders.budget.value
  if budget is not None:
    try:
      parse_budget(budget)
    except ValueError as e:
      raise runs.ConfigError(f"--budget: {e}") from e
  task, config, model = runs.load_run(model_dir)
  batch = _calibration(task, config, holders.calibration_examples.value)
  loss = auto_allocation.loss_of(model)
  rows = layer_sensitivity.sensitivity(
      model, batch, bits=tuple(sorted(set(bits) | set(choices))),
      loss=loss, base=base)
  chosen = None
  if budget is not None:
    try:
      chosen = bit_allocation.allocation(model, batch, budget,
                                         choices=choices, base=base,
                                         rows=rows)
    except ValueError as e:  # a budget below what the model can reach
      raise runs.ConfigError(f"--budget={budget}: {e}") from e
  output_dir = holders.output_dir.value or os.path.join(model_dir,
                                                        "sensitivity")
  runs.make_dir(output_dir, "output_dir")
  sensitivity_report.write_sensitivity(rows, output_dir)
  shown = [r for r in rows if r["bits"] in bits]
  lines = [sensitivity_report.sensitivity_table(shown),
           f"written: {os.path.join(output_dir, 'sensitivity.csv')}, "
           f"{os.path.join(output_dir, 'sensitivity.png')}"]
  if chosen is not None:
    lines.append(
        f"budget {budget}: mean {chosen.mean_bits:.2f} weight bits, "
        f"{chosen.weight_bytes:,} kernel bytes "
        f"({chosen.weight_bytes / chosen.float32_bytes:.3f} of float32)")
    lines.append(f"--bits='{chosen.policy}'")
  return "\n".join(lines)


def _main(argv, holders) -> None:
  print(app.run_main(PROG, argv, lambda: _run(holders),
                     new_dirs=[holders.output_dir.value]))


def main() -> None:
  app.start(PROG, ("model_dir", "sensitivity"), _main)


if __name__ == "__main__":
  main()
