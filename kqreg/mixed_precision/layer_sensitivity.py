"""Per-layer sensitivity to weight quantization: one row per (layer, bits).

For each quantizable layer l and bit-width b, `sensitivity` quantizes l's
kernels alone on kqreg's b-bit weight grid (every other weight float) and
measures, on one calibration batch:

* `measured`: ‖y_q − y‖/‖y‖ at the model output;
* `measured_local` and `predicted`: the perturbation at the layer itself and
  the additive model's first-order prediction of it (`first_order`):
  for y = w * x with independent noise of variance Δ_c²/12 on channel c's
  weights, E‖δ * x‖² = Σ_c Δ_c²/12 · Σ_positions ‖x_rf‖². Both are taken at
  the linear output, relative to ‖w * x + b‖, before the activation (as
  `noise.propagation` does). The prediction is not propagated to the output:
  that needs the rest of the network's Jacobian, one backward pass per
  output, which costs more than measuring;
* `loss_increase`: the loss with l at b bits minus the float loss (with
  labels);
* `weight_bytes`: what l's kernels take in the exported .tflite file at b
  bits (`stored_bytes`).

Data first, printing on top (`kqreg.sensitivity_report`), as larq's
profiles do. Which layers count and their bytes: `kqreg.quantizable`. `kqreg.allocate` turns the rows into a `BitPolicy` under
a size budget.

Example:

```python
import kqreg, numpy as np, tf_keras
model = tf_keras.Sequential([
    tf_keras.Input((8, 8, 1)),
    tf_keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
    tf_keras.layers.Flatten(),
    tf_keras.layers.Dense(10, name="head"),
])
x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
rows = kqreg.sensitivity(model, x, bits=(2, 4, 8))
from kqreg.mixed_precision.sensitivity_report import sensitivity_table
print(sensitivity_table(rows))
```
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg.qat import families as configs_lib
from kqreg.noise import first_order
from kqreg.qat import policy as policy_lib
from kqreg.qat import grid
from kqreg.qat import quantizers
from kqreg.qat.rewrites import flatten_nested
from kqreg.mixed_precision.quantizable import quantizable_layers, storage_type, stored_bytes
from kqreg.qat.introspect import is_quantized
from kqreg.qat import introspect

__all__ = ["SENSITIVITY_KEYS", "DEFAULT_BITS", "sensitivity", "split_data"]

SENSITIVITY_KEYS = ("layer", "layer_type", "bits", "params", "weight_bytes",
                    "storage", "measured", "measured_local", "predicted",
                    "loss_increase")
DEFAULT_BITS = (2, 3, 4, 6, 8)

# A fresh tfmot weight quantizer holds this range until its first training
# step sets the weights' own (tfmot's LastValueQuantizer initializers).
_UNSET_RANGE = 6.0


# ----------------------------------------------------------------------------
# Kernels with a writable slot the forward pass reads.


class _Kernel:
  """One kernel: its float value, the variable the forward pass reads, and
  kqreg's b-bit weight quantizer on its range."""

  def __init__(self, slot: tf.Variable, template: quantizers.WeightQuantizer,
               ranges: Optional[Dict[str, tf.Variable]]):
    self.slot = slot
    self.value = tf.constant(slot.numpy())
    self.template = template
    if ranges is None or _is_unset(ranges):
      # No trained range: set it from the weights, as a training call does.
      self._ranges = _fresh_ranges(template, self.value.shape)
      self._training = True
    else:
      self._ranges = ranges
      self._training = False

  @property
  def params(self) -> int:
    return int(np.prod(self.value.shape))

  def quantized(self, bits: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """(Q_b(w), Δ per channel of its channels-last layout, or a scalar)."""
    quantizer = quantizers.WeightQuantizer(
        bits, per_axis=self.template.per_axis,
        symmetric=self.template.symmetric,
        narrow_range=self.template.narrow_range,
        layout=getattr(self.template, "layout", "last"))
    q = quantizer(self.value, training=self._training, weights=self._ranges)
    step = quantizers.nudged_grid(self._ranges["min_var"],
                                  self._ranges["max_var"], bits,
                                  quantizer.narrow_range)[2]
    return tf.convert_to_tensor(q), step


def _is_unset(ranges: Dict[str, tf.Variable]) -> bool:
  low = ranges["min_var"].numpy()
  high = ranges["max_var"].numpy()
  return bool(np.all(low == -_UNSET_RANGE) and np.all(high == _UNSET_RANGE))


def _fresh_ranges(template: quantizers.WeightQuantizer, shape
                  ) -> Dict[str, tf.Variable]:
  """Range variables shaped as `WeightQuantizer.build` makes them."""
  range_shape = ((template.channels_last_shape(shape)[-1],)
                 if template.per_axis else ())
  return {"min_var": tf.Variable(tf.zeros(range_shape), trainable=False),
          "max_var": tf.Variable(tf.zeros(range_shape), trainable=False)}


@dataclasses.dataclass
class _Target:
  name: str
  layer: tf_keras.layers.Layer
  kernels: List[_Kernel]
  node: Any = None  # its one node in the graph; None if called twice

  @property
  def params(self) -> int:
    return sum(k.params for k in self.kernels)


def _float_model(model: tf_keras.Model
                 ) -> Tuple[tf_keras.Model, Dict[Tuple[str, str], Any]]:
  """(the float graph to run, {(layer, i): the QAT `QuantizedWeight` of the
  layer's i-th kernel in its family's order}).

  A QAT model runs as its float counterpart: the same graph holding the
  float shadow weights with every quantizer removed (activations too), so
  the rows measure weight noise alone, as on the float model.
  """
  if not is_quantized(model):
    return flatten_nested(model), {}
  trained, counts = {}, {}
  for qw in introspect.quantized_weights(model):
    # A wrapper's kernels come in its config's order, the family's.
    index = counts[qw.layer_name] = counts.get(qw.layer_name, -1) + 1
    trained[(qw.layer_name, index)] = qw
  return introspect.float_counterpart(model), trained


def _targets(flat: tf_keras.Model, names, trained) -> List[_Target]:
  targets = []
  for layer in flat.layers:
    if layer.name not in names:
      continue
    config = configs_lib.config_for_layer(layer, weight_bits=8,
                                          activation_bits=None)
    kernels = []
    for index, (attr, _) in enumerate(configs_lib.family_of(layer).weights):
      qw = trained.get((layer.name, index))
      template = qw.quantizer if qw else config.weight_quantizer(attr)
      kernels.append(_Kernel(configs_lib.resolve(layer, attr), template,
                             qw.variables if qw else None))
    nodes = _tfmot.nodes_in_graph(flat, layer)
    targets.append(_Target(layer.name, layer, kernels,
                           nodes[0] if len(nodes) == 1 else None))
  return targets


# ----------------------------------------------------------------------------
# Data.


def split_data(model: tf_keras.Model, data) -> Tuple[Any, Any]:
  """(x, y or None) from x, (x, y) or a tf.data.Dataset (its first element).

  x comes back as tensors of the model's input dtypes.
  """
  if isinstance(data, tf.data.Dataset):
    data = next(iter(data.take(1)))
  y = None
  if isinstance(data, (tuple, list)):
    items = list(data)
    if len(model.inputs) == 1 or (items and isinstance(items[0],
                                                       (tuple, list))):
      if not 1 <= len(items) <= 3:
        raise ValueError(
            f"`data` must be x, (x,), (x, y) or (x, y, sample_weight); got a "
            f"sequence of {len(items)} items.")
      x, y = items[0], (items[1] if len(items) > 1 else None)
    else:
      x = items
  else:
    x = data
  inputs = [tf.convert_to_tensor(v, dtype=spec.dtype)
            for v, spec in zip(tf.nest.flatten(x), model.inputs)]
  if len(inputs) != len(model.inputs):
    raise ValueError(
        f"`data` holds {len(inputs)} input arrays; model {model.name!r} has "
        f"{len(model.inputs)} inputs.")
  x = inputs[0] if len(inputs) == 1 else inputs
  return x, y


def _loss_fn(model: tf_keras.Model, loss) -> Callable:
  if loss is None:
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (dict, list, tuple)):
      raise ValueError(
          "`data` has labels but `loss` is None and the model has no single "
          "compiled loss: pass loss= (a tf_keras loss, its name, or a "
          "callable (y_true, y_pred) -> scalar), or pass x only to skip "
          "loss_increase.")
  return tf_keras.losses.get(loss) if isinstance(loss, str) else loss


def _norm(t) -> tf.Tensor:
  return tf.norm(tf.cast(t, tf.float32))


def _flat(outputs) -> tf.Tensor:
  return tf.concat([tf.reshape(tf.cast(o, tf.float32), (-1,))
                    for o in tf.nest.flatten(outputs)], 0)


def _ratio(num: float, den: float) -> float:
  return num / den if den > 0 else float("nan")


# ----------------------------------------------------------------------------
# The measurement.


class _Local:
  """The layer's own perturbation on its float input (per target)."""

  def __init__(self, target: _Target, x_in, y_out):
    layer = target.layer
    self.target = target
    self.kind = (first_order.kind(layer) if len(target.kernels) == 1 and
                 x_in is not None else None)
    self.x_in, self.y_out = x_in, y_out
    if self.kind is not None:
      x_in = self.x_in = tf.cast(x_in, tf.float32)
      w = target.kernels[0].value
      y_lin = first_order.linear(layer, self.kind, x_in, w)
      if getattr(layer, "bias", None) is not None:  # Dense, Conv, EinsumDense
        y_lin = y_lin + layer.bias
      self.ref = float(_norm(y_lin))
      self.energy = first_order.receptive_energy(layer, self.kind, x_in)
    else:
      self.ref = float(_norm(y_out)) if y_out is not None else 0.0

  def linear(self, delta: tf.Tensor, step: tf.Tensor
             ) -> Tuple[float, float]:
    """(measured_local, predicted) for kernel noise `delta` of step Δ."""
    layer = self.target.layer
    measured = float(_norm(first_order.linear(layer, self.kind, self.x_in,
                                              delta)))
    variance = tf.broadcast_to(tf.reshape(tf.square(step) / 12.0, (-1,)),
                               self.energy.shape)
    predicted = float(tf.sqrt(tf.reduce_sum(variance * self.energy)))
    return _ratio(measured, self.ref), _ratio(predicted, self.ref)

  def layer_output(self) -> Optional[float]:
    """‖y_q − y‖/‖y‖ at the layer's output, with the slots as they are."""
    if self.x_in is None or self.y_out is None:
      return None
    y_q = self.target.layer(self.x_in, training=False)
    return _ratio(float(_norm(_flat(y_q) - _flat(self.y_out))), self.ref)


def sensitivity(model: tf_keras.Model,
                data,
                bits: Sequence[int] = DEFAULT_BITS,
                *,
                loss=None,
                base: Union[None, str, policy_lib.BitPolicy] = None
                ) -> List[Dict[str, Any]]:
  """How much quantizing each layer alone at b bits perturbs the model.

  Each layer's kernels alone go on kqreg's b-bit weight grid (its
  family's `WeightQuantizer`), the calibration batch runs once in inference
  mode, and the float kernel is put back. A QAT model runs as its float
  counterpart, each kernel on the range its quantizer holds now.

  Args:
    model: a float model (Sequential or Functional, nested models allowed)
      or a QAT model from `kqreg.quantize`.
    data: the calibration batch: x, (x, y), or a `tf.data.Dataset` whose
      first element is used. Without labels `loss_increase` is None.
    bits: weight bit-widths to try, each 2..8.
    loss: a tf_keras loss, its name, or a callable (y_true, y_pred) ->
      scalar; None uses the model's compiled loss. Needed only with labels.
    base: a `BitPolicy` (or string) that limits the layers: those it skips
      or keeps at float weights are left out (`quantizable_layers`); its
      activation bits decide the storage type (`stored_bytes`). None: every
      layer kqreg quantizes (on a QAT model: every quantized layer).

  Returns:
    One dict per (layer, bits), layers in graph order, keys
    `SENSITIVITY_KEYS`: `weight_bytes` (`stored_bytes`), `storage`
    ("INT4"/"INT8"), `measured` (‖y_q − y‖/‖y‖ at the model output),
    `measured_local` (at the layer; None for a shared layer), `predicted`
    (its first-order estimate, or None), `loss_increase` (or None without
    labels).

  Raises:
    ValueError: bad `bits` or `data`; labels without a loss.
    PolicyError: bad `base`.

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> rows = kqreg.sensitivity(model, x, bits=(2, 8))
  >>> [(row["layer"], row["bits"], row["storage"]) for row in rows]
  [('a', 2, 'INT8'), ('a', 8, 'INT8'), ('b', 2, 'INT8'), ('b', 8, 'INT8')]
  >>> rows[0]["measured"] > rows[1]["measured"]   # 2 bits perturb more than 8
  True
  """
  bits = sorted({grid.check_bits(b, grid.WEIGHT_BITS, "bits")
                 for b in bits})
  if not bits:
    raise ValueError("`bits` must name at least one bit-width in 2..8.")
  layers, int4 = quantizable_layers(model, base)
  flat, trained = _float_model(model)
  x, y = split_data(flat, data)
  loss_fn = _loss_fn(model, loss) if y is not None else None
  order = {l.name: i for i, l in enumerate(layers)}
  targets = sorted(_targets(flat, set(order), trained),
                   key=lambda t: order[t.name])
  # Traced once: each row then costs one graph-speed pass, which reads the
  # kernel variables as they are at call time.
  forward = tf.function(lambda inputs: flat(inputs, training=False))
  y_ref = forward(x)
  ref_flat = _flat(y_ref)
  ref_norm = float(_norm(ref_flat))
  ref_loss = float(loss_fn(y, y_ref)) if loss_fn else None
  probed = [t for t in targets if t.node is not None]
  tensors = [tensor for t in probed
             for tensor in (t.node.input_tensors, t.node.outputs)]
  values = (tf_keras.Model(flat.inputs, tensors)(x, training=False)
            if probed else [])
  io_of = {t.name: (values[2 * i], values[2 * i + 1])
           for i, t in enumerate(probed)}
  rows = []
  for target in targets:
    local = _Local(target, *io_of.get(target.name, (None, None)))
    for b in bits:
      grids = [k.quantized(b) for k in target.kernels]
      measured_local = predicted = None
      if local.kind is not None:
        q, step = grids[0]
        measured_local, predicted = local.linear(
            q - target.kernels[0].value, step)
      try:
        for kernel, (q, _) in zip(target.kernels, grids):
          kernel.slot.assign(q)
        y_q = forward(x)
        if local.kind is None:
          measured_local = local.layer_output()
      finally:
        for kernel in target.kernels:
          kernel.slot.assign(kernel.value)
      rows.append({
          "layer": target.name,
          "layer_type": type(target.layer).__name__,
          "bits": b,
          "params": target.params,
          "weight_bytes": sum(stored_bytes(k.params, b, int4)
                              for k in target.kernels),
          "storage": storage_type(b, int4),
          "measured": _ratio(float(_norm(_flat(y_q) - ref_flat)), ref_norm),
          "measured_local": measured_local,
          "predicted": predicted,
          "loss_increase": (float(loss_fn(y, y_q)) - ref_loss
                            if loss_fn else None),
      })
  return rows
