"""The one seam to tfmot's, Keras's and TensorFlow's internals.

Every other kqreg module imports tfmot and Keras-graph names from here, so a
tfmot upgrade breaks (at most) this file. Public tfmot names come from
`tfmot.quantization.keras` (0.8.1 exports `QuantizeWrapper[V2]`,
`QuantizeScheme`, `QuantizeRegistry`, `QuantizeLayoutTransform` and
`graph_transformations.{model_transformer, transforms}`); only the names
tfmot keeps private (`QuantizeAnnotate`, `QuantizeLayer`) are imported from
its `python.core` modules. The TensorFlow internals kqreg uses are its
XLA-context check (`in_xla_context`), its variable freezing
(`freeze_variables`) and autograph's module rules
(`exempt_from_autograph`), which TensorFlow 2 keeps private; Keras's, the
weights store of its `.keras` loader (`keras_archive_read_in_memory`).
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Dict, Iterator, List

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow.python.autograph.core import config as _autograph_config  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.autograph.core import config_lib as _autograph_rules  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import
# Private in tfmot 0.8.1: no public alias exists for these two classes.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (  # pylint: disable=line-too-long
    QuantizeAnnotate)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # pylint: disable=line-too-long
    QuantizeLayer)
# The op behind MovingAverageQuantizer, whose __call__ fixes ema_decay=0.999.
from tensorflow_model_optimization.python.core.quantization.keras.quant_ops import (  # pylint: disable=line-too-long
    MovingAvgQuantize)
from tf_keras.src.saving import saving_lib as _keras_saving  # pylint: disable=g-direct-tensorflow-import

__all__ = [
    "in_xla_context",
    "exempt_from_autograph",
    "freeze_variables",
    "tfmot_keras",
    "QuantizeAnnotate",
    "QuantizeLayer",
    "MovingAvgQuantize",
    "QuantizeWrapper",
    "QuantizeWrapperV2",
    "QuantizeScheme",
    "QuantizeRegistry",
    "QuantizeLayoutTransform",
    "ModelTransformer",
    "transforms",
    "iter_wrappers",
    "iter_quantize_layers",
    "iter_activation_quantizers",
    "nodes_in_graph",
    "inbound_layers",
    "graph_consumers",
    "build_step_state",
    "keras_archive_read_in_memory",
]

tfmot_keras = tfmot.quantization.keras
QuantizeWrapper = tfmot_keras.QuantizeWrapper
QuantizeWrapperV2 = tfmot_keras.QuantizeWrapperV2
QuantizeScheme = tfmot_keras.QuantizeScheme
QuantizeRegistry = tfmot_keras.QuantizeRegistry
QuantizeLayoutTransform = tfmot_keras.QuantizeLayoutTransform
_graph = tfmot_keras.graph_transformations
ModelTransformer = _graph.model_transformer.ModelTransformer
transforms = _graph.transforms


def _iter_layers(model: tf_keras.Model) -> Iterator[tf_keras.layers.Layer]:
  """Every layer of `model`, recursing into nested models (not yielded)."""
  for layer in model.layers:
    if isinstance(layer, tf_keras.Model):
      yield from _iter_layers(layer)
    else:
      yield layer


def iter_wrappers(model: tf_keras.Model) -> Iterator[QuantizeWrapper]:
  """Every tfmot `QuantizeWrapper` of `model`, nested models included.

  In layer order; a nested model's wrappers come where the model sits.
  """
  for layer in _iter_layers(model):
    if isinstance(layer, QuantizeWrapper):
      yield layer


def iter_quantize_layers(model: tf_keras.Model) -> Iterator[QuantizeLayer]:
  """Every tfmot `QuantizeLayer` (input quantizer) of `model`, recursively."""
  for layer in _iter_layers(model):
    if isinstance(layer, QuantizeLayer):
      yield layer


def iter_activation_quantizers(model: tf_keras.Model) -> Iterator[object]:
  """Every quantizer of activations, inputs and outputs in `model`, once.

  Those of input `QuantizeLayer`s and, for each built wrapper, of its
  activations and its output; weight quantizers are not included.
  """
  seen = set()
  for layer in _iter_layers(model):
    if isinstance(layer, QuantizeLayer):
      found = [layer.quantizer]
    elif isinstance(layer, QuantizeWrapper):
      found = [a.quantizer for a in getattr(layer, "_quantize_activations", ())]
      found += list(getattr(layer, "_output_quantizers", None) or ())
    else:
      continue
    for quantizer in found:
      if quantizer is not None and id(quantizer) not in seen:
        seen.add(id(quantizer))
        yield quantizer


def nodes_in_graph(model: tf_keras.Model, layer: tf_keras.layers.Layer
                   ) -> List:
  """The inbound nodes of `layer` that belong to `model`'s own graph.

  A layer shared between models (tfmot leaves unwrapped layers shared with
  the float model) has nodes in each; `layer.output` may point into another
  model's graph, these do not.
  """
  network_nodes = model._network_nodes  # pylint: disable=protected-access
  return [node for index, node in enumerate(layer._inbound_nodes)  # pylint: disable=protected-access
          if f"{layer.name}_ib-{index}" in network_nodes]


def inbound_layers(model: tf_keras.Model, layer) -> List:
  """The layers whose outputs `layer` takes in `model`'s graph."""
  return [inbound for node in nodes_in_graph(model, layer)
          for inbound in tf.nest.flatten(node.inbound_layers)]


def graph_consumers(model: tf_keras.Model) -> Dict[str, List]:
  """Maps each layer name to the layers that consume its outputs in `model`."""
  consumers: Dict[str, List] = {layer.name: [] for layer in model.layers}
  for layer in model.layers:
    for inbound in inbound_layers(model, layer):
      consumers.setdefault(inbound.name, []).append(layer)
  return consumers


def build_step_state(model: tf_keras.Model, y_true, y_pred=None) -> None:
  """Creates, now, the variables Keras creates in the first train step.

  Keras builds the optimizer's slots and the compiled loss's and metrics'
  accumulators inside the first trace of `train_function`, and a
  `tf.function` that creates variables is traced twice (once to create them,
  once without), which doubles the largest cost of a short run's start.
  `y_true` and `y_pred` are tensors of the structure and rank the compiled
  loss and metrics receive (one example is enough: `accuracy` picks its kind
  from the ranks; `y_pred` defaults to zeros shaped as the model's output);
  with `y_true` None the metrics are left to the first step, for models
  whose metrics see other structures than their loss and hold no variables.
  Call it under the strategy's scope, after `compile`.
  """
  if y_pred is None:
    y_pred = tf.nest.map_structure(
        lambda t: tf.zeros([1, *t.shape[1:]], t.dtype), model.output)
  model.optimizer.build(model.trainable_variables)
  if model.compiled_loss is not None and not model.compiled_loss.built:
    model.compiled_loss.build(y_pred)
  if (y_true is not None and model.compiled_metrics is not None
      and not model.compiled_metrics.built):
    model.compiled_metrics.build(y_pred, y_true)


def in_xla_context() -> bool:
  """True while tracing into an XLA-compiled function (`jit_compile=True`).

  TensorFlow's own test, the one `tf.function` uses: XLA cannot compile a
  custom op, so `kqreg.kernels` keeps TensorFlow's ops there.
  """
  graph = tf.compat.v1.get_default_graph()
  return control_flow_util.GraphOrParentsInXlaContext(graph)


def exempt_from_autograph(*module_prefixes: str) -> None:
  """Autograph calls these modules' functions as they are, from now on.

  What TensorFlow does for its own modules and Keras's: their functions
  build graphs with `tf.cond`/`tf.while_loop` themselves, so converting
  them only costs tracing time. Process-wide and idempotent; `prefix`
  covers `prefix.*`.
  """
  present = {rule._prefix for rule in _autograph_config.CONVERSION_RULES  # pylint: disable=protected-access
             if isinstance(rule, _autograph_rules.DoNotConvert)}
  new = tuple(_autograph_rules.DoNotConvert(prefix)
              for prefix in dict.fromkeys(module_prefixes)
              if prefix not in present)
  if new:
    _autograph_config.CONVERSION_RULES = (
        tuple(_autograph_config.CONVERSION_RULES) + new)


def freeze_variables(function: tf.types.experimental.ConcreteFunction
                     ) -> tf.types.experimental.ConcreteFunction:
  """`function` with the variables it reads turned into constants.

  TensorFlow's own freezing, the one its converters use. Functional If and
  While stay as they are (TFLite converts those, not their Switch/Merge
  lowering). The result returns a flat list of `function`'s outputs.
  """
  return convert_to_constants.convert_variables_to_constants_v2(
      function, lower_control_flow=False)


class _H5StoreReadInMemory(_keras_saving.H5IOStore):
  """Keras's weights store, reading an archive's HDF5 file from memory."""

  def __init__(self, root_path, archive=None, mode="r"):  # pylint: disable=super-init-not-called
    if archive is None or mode != "r":
      super().__init__(root_path, archive, mode)
      return
    import h5py  # pylint: disable=g-import-not-at-top  (Keras's own dependency)
    self.root_path, self.mode, self.archive = root_path, mode, archive
    self.io_file = io.BytesIO(archive.read(root_path))
    self.h5_file = h5py.File(self.io_file, mode="r")


_STOCK_H5_STORE = _keras_saving.H5IOStore
_in_memory_lock = threading.Lock()
_in_memory_depth = 0


@contextlib.contextmanager
def keras_archive_read_in_memory() -> Iterator[None]:
  """`tf_keras.models.load_model` reads a `.keras` file's weights from memory.

  Keras hands HDF5 the weights file as a member of the zip archive, and
  Python 3.11's zipfile serves every backward seek by reading the member
  again from its start: HDF5 seeks back at each of its thousands of reads.
  Read once into memory, the weights of a 4-bit YOLOv8-xs run (17 MB) load
  in a tenth of the time, the same values (a whole load: 30-38 s -> 17 s).
  The store is a process-wide name: blocks may overlap (threads, nested
  scopes) and leave in any order; Keras's own store is back when the last
  one leaves. Saving, and `.weights.h5` files outside an archive, go through
  Keras's own code as before.
  """
  global _in_memory_depth
  with _in_memory_lock:
    _in_memory_depth += 1
    _keras_saving.H5IOStore = _H5StoreReadInMemory
  try:
    yield
  finally:
    with _in_memory_lock:
      _in_memory_depth -= 1
      if not _in_memory_depth:
        _keras_saving.H5IOStore = _STOCK_H5_STORE
