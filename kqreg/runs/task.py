"""A task's hooks into the run library: data, model, evaluation, export.

`kqreg.runs.train.run` owns everything shared (model dir, resume, strategy,
callbacks, result.json); a `Task` supplies what differs between
classification and detection. Tasks are found by name (`task_named`) and
imported on demand, so classification never pays for keras-cv.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
from typing import Any, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg.runs.config import ConfigError, RunConfig

__all__ = ["Data", "InitialWeights", "TASKS", "Task", "learning_rate_schedule",
           "task_named"]


@dataclasses.dataclass(frozen=True)
class InitialWeights:
  """A finished float run's weights, for a new run's float model.

  Attributes:
    flag: the flag that named the run, for messages (`--init_from='...'`).
    weights: its weights, in `model.get_weights()` order.

  Example:
  >>> import kqreg.runs, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> init = kqreg.runs.InitialWeights(flag="--init_from='runs/fp'",
  ...                                  weights=[w * 0 for w in model.get_weights()])
  >>> init.apply(model)
  >>> float(abs(model.get_weights()[0]).sum())
  0.0
  """
  flag: str
  weights: List[Any]

  def apply(self, float_model: tf_keras.Model) -> None:
    """Sets `float_model`'s weights; refuses another architecture.

    Raises:
      ConfigError: the shapes differ from the source run's.
    """
    ours = [tuple(w.shape) for w in float_model.weights]
    theirs = [tuple(w.shape) for w in self.weights]
    if ours != theirs:
      raise ConfigError(
          f"{self.flag} holds another architecture ({len(theirs)} weights "
          f"against {len(ours)}, or other shapes); pass a run of the same "
          "--model and --model_args on the same dataset.")
    float_model.set_weights(self.weights)


# Task name -> module holding its `TASK` (imported on demand: detection
# pulls in keras-cv).
TASKS = {"classify": "kqreg.classification.task", "detect": "kqreg.detection.task"}


@dataclasses.dataclass
class Data:
  """What a task's `load` hook returns.

  Attributes:
    train, validation, test: raw TFDS splits (`test` may be None).
    info: the task's dataset info (`num_classes`, `splits`, ...).
    splits: the TFDS split strings used (`kqreg.data.Splits`).
    n_train: training examples used (after `train_examples`).
    extra: task figures for result.json (e.g. the label-noise record).

  Example:
  >>> import kqreg.runs
  >>> data = kqreg.runs.Data(train=None, validation=None, test=None, info={},
  ...                        splits=None, n_train=0)
  >>> data.extra
  {}
  """
  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: Optional[tf.data.Dataset]
  info: Any
  splits: Any
  n_train: int
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Task(abc.ABC):
  """A task's hooks into `run`: everything else is shared.

  Example:
  >>> import kqreg.runs
  >>> task = kqreg.runs.task_named("classify")
  >>> isinstance(task, kqreg.runs.Task)
  True
  """

  name: str = ""
  config_class: type = RunConfig
  # keras-cv models refuse the graph serialization TensorBoard would do.
  write_graph: bool = True

  @abc.abstractmethod
  def load(self, config: RunConfig) -> Data:
    """The raw splits, by `kqreg.data.splits`' validation rule."""

  @abc.abstractmethod
  def datasets(self, config: RunConfig, data: Data
               ) -> Dict[str, tf.data.Dataset]:
    """Batched pipelines: `train`, `train_eval`, `val`, and `test` if any,
    plus any the task's `callbacks` read."""

  @abc.abstractmethod
  def probe(self, config: RunConfig, data: Data) -> tf.Tensor:
    """A few validation inputs for the noise callback's propagation."""

  @abc.abstractmethod
  def build(self, config: RunConfig, data: Data, steps_per_epoch: int, *,
            initial: Optional[InitialWeights] = None) -> tf_keras.Model:
    """The compiled (quantized) model; called under the strategy's scope.

    `initial`: `--init_from`'s float weights, for the float model before it
    is quantized (`InitialWeights.apply`).
    """

  def loss_inputs(self, model: tf_keras.Model, element_spec: Any
                  ) -> Tuple[Any, Any]:
    """(y_true, y_pred) as the compiled loss and metrics receive them.

    Zeros for one example, so that `run` creates the train step's variables
    before its first trace (`_tfmot.build_step_state`). Default: the labels
    of `(inputs, labels)` batches and (None) the model's output.
    """
    del model
    labels = element_spec[1]
    return tf.zeros([1, *labels.shape[1:]], labels.dtype), None

  def callbacks(self, config: RunConfig, data: Data,
                pipelines: Dict[str, tf.data.Dataset]
                ) -> List[tf_keras.callbacks.Callback]:
    """Callbacks that add to the epoch logs (run before history.csv).

    `pipelines`: what `datasets` returned, as built (not sharded).
    """
    del config, data, pipelines
    return []

  @abc.abstractmethod
  def evaluate(self, model: tf_keras.Model, config: RunConfig, data: Data,
               datasets: Dict[str, tf.data.Dataset]) -> Dict[str, Any]:
    """Final figures for result.json (train/val/test losses and metrics)."""

  @abc.abstractmethod
  def export(self, model: tf_keras.Model, config: RunConfig, data: Data,
             path: str, **options) -> Dict[str, Any]:
    """Writes `path` (.tflite) and returns its checked figures."""

  # (result key, label, format) of the headline figures `summary` prints.
  headline: Tuple[Tuple[str, str, str], ...] = ()

  def summary(self, result: Dict[str, Any]) -> str:
    """The headline figures of a finished run's result, in one line."""
    return "  ".join(f"{label} {format(result[key], spec)}"
                     for key, label, spec in self.headline)

  def tflite_summary(self, figures: Dict[str, Any]) -> str:
    """One line on an exported file (`result["tflite"]`)."""
    return (f"model.tflite: {figures['size_bytes']:,} bytes "
            f"({figures['ratio_to_float']:.2f}x float)")

  def quiet(self):
    """A context in which the task's own library noise is muted."""
    return contextlib.nullcontext()

  def header(self, config: RunConfig, data: Data) -> Dict[str, Any]:
    """The first keys of result.json."""
    return {"task": self.name, "bits": str(config.bits),
            "dataset": config.dataset, "seed": config.seed,
            "epochs": config.epochs, "train_examples": data.n_train,
            "val_split": data.splits.validation}


def task_named(name: str) -> Task:
  """The `Task` registered as `name` ("classify" or "detect").

  Example:
  >>> import kqreg.runs
  >>> sorted(kqreg.runs.TASKS)
  ['classify', 'detect']
  >>> type(kqreg.runs.task_named("classify")).__name__
  'ClassificationTask'
  """
  if name not in TASKS:
    raise ConfigError(f"--task: unknown task {name!r}; use one of "
                      f"{', '.join(TASKS)}")
  return importlib.import_module(TASKS[name]).TASK


def learning_rate_schedule(name: str, learning_rate: float,
                           total_steps: int):
  """`LR_SCHEDULES[name]` over `total_steps` (a float for "constant").

  "step" divides by 10 at half and three quarters of the run.

  Example:
  >>> import kqreg.runs
  >>> kqreg.runs.learning_rate_schedule("constant", 0.1, 100)
  0.1
  >>> schedule = kqreg.runs.learning_rate_schedule("step", 0.1, 100)
  >>> [round(float(schedule(step)), 4) for step in (0, 60, 90)]
  [0.1, 0.01, 0.001]
  """
  if name == "cosine":
    return tf_keras.optimizers.schedules.CosineDecay(learning_rate,
                                                     decay_steps=total_steps)
  if name == "step":
    return tf_keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(total_steps * 0.5), int(total_steps * 0.75)],
        [learning_rate, learning_rate * 0.1, learning_rate * 0.01])
  return learning_rate
