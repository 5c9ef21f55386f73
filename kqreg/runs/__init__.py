"""The run library: one config in, a model dir and a result out, for every task.

  config       `RunConfig`, the fields every task shares, and the run errors
  task         `Task`: the hooks a task supplies (data, model, evaluation)
  train        `run`: the shared steps (resume, strategy, callbacks, fit,
               result.json, export)
  model_dir    params.json, history.csv, result.json, the saved model; the
               folder claimed (created, locked), a finished run read back
  callbacks    the callback order; NaN stop, checked backup, epoch CSV log
  distribute   strategies, virtual CPUs, SIGTERM -> `TrainingInterrupted`
  lock         one writer per model dir
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.runs.callbacks import CheckpointError, TrainingDiverged
from kqreg.runs.config import (LR_SCHEDULES, STRATEGIES, ConfigError,
                               RunConfig, TrainingInterrupted)
from kqreg.runs.lock import RunLock, RunLocked
from kqreg.runs.model_dir import (initial_weights, load_run, make_dir,
                                  read_history, read_params)
from kqreg.runs.task import (TASKS, Data, InitialWeights, Task,
                             learning_rate_schedule, task_named)
from kqreg.runs.train import BAD_INPUT_ERRORS, data_errors, run

__all__ = [
    "BAD_INPUT_ERRORS", "CheckpointError", "ConfigError", "Data",
    "InitialWeights",
    "LR_SCHEDULES", "RunConfig", "RunLock", "RunLocked", "STRATEGIES",
    "TASKS", "Task",
    "TrainingDiverged", "TrainingInterrupted",
    "data_errors", "initial_weights", "learning_rate_schedule", "load_run",
    "make_dir", "read_history", "read_params", "run", "task_named",
]
