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

from absl import app

from . import flags as kqreg_flags

PROG = "kqreg-sensitivity"


def _bits(values, flag: str):
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  try:
    return tuple(int(v) for v in values)
  except ValueError as e:
    raise runs.ConfigError(
        f"--{flag}={','.join(values)}: give whole bit-widths such as "
        "2,3,4,8.") from e


def _calibration(task, config, examples: int):
  """One batch of `examples` training inputs (and labels), unshuffled."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(config, batch_size=examples, augment=False)
  with runs.data_errors(config):
    data = task.load(config)
    return next(iter(task.datasets(config, data)["train_eval"]))


def _run(holders) -> str:
  from kqreg import auto_bits, bit_allocation, layer_sensitivity, runs  # pylint: disable=g-import-not-at-top
  from kqreg import sensitivity_report  # pylint: disable=g-import-not-at-top
  from kqreg import policy as policy_lib  # pylint: disable=g-import-not-at-top
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
      bit_allocation.parse_budget(budget)
    except ValueError as e:
      raise runs.ConfigError(f"--budget: {e}") from e
  task, config, model = runs.load_run(model_dir)
  batch = _calibration(task, config, holders.calibration_examples.value)
  loss = auto_bits.loss_of(model)
  rows = layer_sensitivity.sensitivity(
      model, batch, bits=tuple(sorted(set(bits) | set(choices))),
      loss=loss, base=base)
  output_dir = holders.output_dir.value or os.path.join(model_dir,
                                                        "sensitivity")
  runs.make_dir(output_dir, "output_dir")
  sensitivity_report.write_sensitivity(rows, output_dir)
  shown = [r for r in rows if r["bits"] in bits]
  lines = [sensitivity_report.sensitivity_table(shown),
           f"written: {os.path.join(output_dir, 'sensitivity.csv')}, "
           f"{os.path.join(output_dir, 'sensitivity.png')}"]
  if budget is not None:
    chosen = bit_allocation.allocation(model, batch, budget, choices=choices,
                                       base=base, rows=rows)
    lines.append(
        f"budget {budget}: mean {chosen.mean_bits:.2f} weight bits, "
        f"{chosen.weight_bytes:,} kernel bytes "
        f"({chosen.weight_bytes / chosen.float32_bytes:.3f} of float32)")
    lines.append(f"--bits='{chosen.policy}'")
  return "\n".join(lines)


def _main(argv, holders) -> None:
  print(kqreg_flags.run_main(PROG, argv, lambda: _run(holders)))


def main() -> None:
  kqreg_flags.quiet_import()
  holders = kqreg_flags.define_flags("model_dir", "sensitivity")
  app.run(lambda argv: _main(argv, holders),
          flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
