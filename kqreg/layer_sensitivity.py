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

Data first, printing on top (`sensitivity_table`, `write_sensitivity`), as
larq's profiles do. `kqreg.allocate` turns the rows into a `BitPolicy` under
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
from kqreg.layer_sensitivity import sensitivity_table
print(sensitivity_table(rows))
```
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg import configs as configs_lib
from kqreg import first_order
from kqreg import noise as noise_lib
from kqreg import policy as policy_lib
from kqreg import quantizers
from kqreg.graph import flatten_nested
from kqreg.io_utils import atomic_write_text
from kqreg.quantize import is_quantized

__all__ = [
    "SENSITIVITY_KEYS",
    "DEFAULT_BITS",
    "QuantizableLayer",
    "quantizable_layers",
    "stored_bytes",
    "storage_type",
    "sensitivity",
    "sensitivity_table",
    "split_data",
    "write_sensitivity",
]

SENSITIVITY_KEYS = ("layer", "layer_type", "bits", "params", "weight_bytes",
                    "storage", "measured", "measured_local", "predicted",
                    "loss_increase")
DEFAULT_BITS = (2, 3, 4, 6, 8)

# A fresh tfmot weight quantizer holds this range until its first training
# step sets the weights' own (tfmot's LastValueQuantizer initializers).
_UNSET_RANGE = 6.0


# ----------------------------------------------------------------------------
# Which layers, and what their kernels cost in the file.


def stored_bytes(params: int, bits: int, int4: bool) -> int:
  """Bytes of a `params`-element kernel at `bits` in kqreg's .tflite export.

  `export_tflite` stores <= 4-bit kernels as packed INT4 (two per byte) and
  5..8-bit ones as INT8 (`kqreg.export.convert`); a weight-only model (no
  activation quantizer anywhere) is calibrated by the converter, which
  stores every kernel as INT8 (`int4=False`). Kernel data only: the float32
  scale per channel, the zero points and the int32 biases are not counted.
  """
  if int4 and bits <= 4:
    return (int(params) + 1) // 2
  return int(params)


def storage_type(bits: int, int4: bool) -> str:
  """"INT4" or "INT8": the tensor type `stored_bytes` counts."""
  return "INT4" if int4 and bits <= 4 else "INT8"


@dataclasses.dataclass(frozen=True)
class QuantizableLayer:
  """One layer whose kernels a policy quantizes.

  Attributes:
    name: the layer's name (the wrapped layer's for a QAT model), as a
      policy names it.
    layer_type: its class name.
    params: kernel elements (biases not counted).
    bits: the `Bits` the base policy resolves it to.
    pinned: an override of the base policy (not its default token) sets its
      bits: `first=`, `last=`, a name, glob or class.
  """
  name: str
  layer_type: str
  params: int
  bits: policy_lib.Bits
  pinned: bool


def _resolve(layers: Sequence, weighted: Sequence, policy: policy_lib.BitPolicy
             ) -> Dict[str, policy_lib.Bits]:
  """Layer name -> bits under `policy`, as `quantize.plan` resolves them."""
  first = weighted[0].name if weighted else None
  last = weighted[-1].name if weighted else None
  return {l.name: policy.bits_for(l, is_first=l.name == first,
                                  is_last=l.name == last) for l in layers}


def _is_weighted(layer) -> bool:
  family = configs_lib.family_of(layer)
  return family is not None and family.weighted


def _graph_layers(model: tf_keras.Model) -> Tuple[tf_keras.Model, List]:
  """(the flat model, its layers as a policy sees them: wrappers unwrapped)."""
  if is_quantized(model):
    flat = model
  else:
    flat = flatten_nested(model)
  layers = []
  for layer in flat.layers:
    if isinstance(layer, (tf_keras.layers.InputLayer, _tfmot.QuantizeLayer)):
      continue
    layers.append(layer.layer if isinstance(layer, _tfmot.QuantizeWrapper)
                  else layer)
  return flat, layers


def _kernel_params(model: tf_keras.Model) -> Dict[str, int]:
  """Layer name -> kernel elements of every layer kqreg can quantize."""
  if is_quantized(model):
    found: Dict[str, int] = {}
    for qw in noise_lib.quantized_weights(model):
      found[qw.layer_name] = found.get(qw.layer_name, 0) + int(
          np.prod(qw.weight.shape))
    return found
  _, layers = _graph_layers(model)
  return {l.name: sum(int(np.prod(getattr(l, attr).shape))
                      for attr, _ in configs_lib.family_of(l).weights)
          for l in layers if _is_weighted(l)}


def quantizable_layers(model: tf_keras.Model,
                       base: Union[None, str, policy_lib.BitPolicy] = None
                       ) -> Tuple[List[QuantizableLayer], bool]:
  """The layers whose weight bits can be chosen, and whether INT4 is stored.

  Args:
    model: a float model, or a QAT model from `kqreg.quantize` (then only
      its layers with weight quantizers count).
    base: a `BitPolicy` or its string. Its `skip` patterns and overrides to
      float weights leave layers out; its other overrides pin layers; the
      default token's weight bits are ignored (its activation bits are
      not). None: every quantizable layer is free (for a QAT model: weight
      bits as trained, storage as its activation quantizers imply).

  Returns:
    (layers in graph order, int4): `int4` is True when the exported file
    stores <= 4-bit kernels as INT4, i.e. when some activation is quantized
    (see `stored_bytes`).

  Raises:
    PolicyError: `base` is malformed or names layers the model lacks.
  """
  _, layers = _graph_layers(model)
  params = _kernel_params(model)
  weighted = [l for l in layers if _is_weighted(l)]
  if base is None:
    if is_quantized(model):
      from kqreg.export import model_info  # pylint: disable=g-import-not-at-top
      int4 = bool(model_info.activation_bits(model))
    else:
      int4 = False
    bits = {l.name: policy_lib.Bits(8) for l in layers}
    pinned = {l.name: False for l in layers}
  else:
    base = policy_lib.BitPolicy.parse(base)
    if base.default.weight is None:
      # `fp` or `a8`: the layers its default reaches are free all the same;
      # their weight bits are what is being chosen.
      base = dataclasses.replace(
          base, default=policy_lib.Bits(8, base.default.activation))
    base.check_against(layers)
    bits = _resolve(layers, weighted, base)
    # A layer the default token reaches changes with it; a pinned one not.
    other = 2 if base.default.weight != 2 else 3
    moved = _resolve(layers, weighted, dataclasses.replace(
        base, default=dataclasses.replace(base.default, weight=other)))
    pinned = {name: moved[name] == bits[name] for name in bits}
    int4 = any(bits[l.name].activation is not None for l in layers
               if configs_lib.family_of(l) is not None)
  found = [QuantizableLayer(l.name, type(l).__name__, params[l.name],
                            bits[l.name], pinned[l.name])
           for l in weighted
           if l.name in params and bits[l.name].weight is not None]
  return found, int4


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
  """(the float graph to run, {(layer, attr): the QAT `QuantizedWeight`}).

  A QAT model runs as its float counterpart: the same graph holding the
  float shadow weights with every quantizer removed (activations too), so
  the rows measure weight noise alone, as on the float model.
  """
  if not is_quantized(model):
    return flatten_nested(model), {}
  from kqreg.export import model_info  # pylint: disable=g-import-not-at-top
  trained = {(qw.layer_name, qw.weight.name.split("/")[-1].split(":")[0]): qw
             for qw in noise_lib.quantized_weights(model)}
  return model_info.float_counterpart(model), trained


def _targets(flat: tf_keras.Model, names, trained) -> List[_Target]:
  targets = []
  for layer in flat.layers:
    if layer.name not in names:
      continue
    config = configs_lib.config_for_layer(layer, weight_bits=8,
                                          activation_bits=None)
    kernels = []
    for attr, _ in configs_lib.family_of(layer).weights:
      qw = trained.get((layer.name, attr))
      template = qw.quantizer if qw else config.weight_quantizer(attr)
      kernels.append(_Kernel(getattr(layer, attr), template,
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
      if getattr(layer, "use_bias", False) and layer.bias is not None:
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

  For each layer a policy can quantize and each b in `bits`, the layer's
  kernels are put on kqreg's b-bit weight grid (the `WeightQuantizer` of its
  family: per channel for conv, per tensor for Dense, symmetric narrow
  range), every other weight stays float, and the calibration batch is run
  once (inference mode). The float kernel is put back in a `finally`, so
  the model is unchanged afterwards. Cost: one forward pass of the batch per (layer,
  bits), traced once, plus the layer's own op for the local figures.

  Ranges: on a float model each kernel's range is its min/max as kqreg's
  first training step sets it (max |w| per channel). A QAT model from
  `kqreg.quantize` runs as its float counterpart (the same graph with the
  float shadow weights and no quantizer, activation quantizers included,
  so its rows measure weight noise alone and compare with the float
  model's), each kernel quantized on the range its QAT quantizer holds now
  (set by the last training step; a never-trained model still holds
  tfmot's initial ±6, so the weights' own range is used).

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
    `SENSITIVITY_KEYS`: `layer`, `layer_type`, `bits`, `params` (kernel
    elements), `weight_bytes` (`stored_bytes`: the kernels' data in the
    exported .tflite at b bits; scales, zero points and biases not counted),
    `storage` ("INT4"/"INT8"), `measured` (‖y_q − y‖/‖y‖ at the model
    output, all outputs concatenated), `measured_local` (at the layer: for
    Dense, Conv2D and DepthwiseConv2D ‖δ * x‖/‖w * x + b‖ at the linear
    output, elsewhere ‖y_q − y‖/‖y‖ at its output; None for a layer called
    more than once), `predicted` (first-order prediction of
    `measured_local` from Δ and the layer's input energy; None where that
    model does not apply), `loss_increase` (loss at b bits minus float loss,
    or None).

  Raises:
    ValueError: bad `bits` or `data`; labels without a loss.
    PolicyError: bad `base`.
  """
  bits = sorted({quantizers.check_bits(b, quantizers.WEIGHT_BITS, "bits")
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


# ----------------------------------------------------------------------------
# Printing and files.


def _grid(rows: Sequence[Dict[str, Any]], key: str
          ) -> Tuple[List[str], List[int], np.ndarray]:
  """(layers in row order, bits, values[layer, bits]) of one column."""
  layers = list(dict.fromkeys(r["layer"] for r in rows))
  bits = sorted({r["bits"] for r in rows})
  values = np.full((len(layers), len(bits)), np.nan)
  for r in rows:
    if r.get(key) is not None:
      values[layers.index(r["layer"]), bits.index(r["bits"])] = r[key]
  return layers, bits, values


def _fmt(value: float) -> str:
  return "-" if value is None or math.isnan(value) else f"{value:.2e}"


def sensitivity_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The rows as printable text: one line per layer, one column per bits.

  The first block holds `measured` (‖y_q − y‖/‖y‖ at the model output),
  a second `loss_increase` when the rows have it.
  """
  if not rows:
    return "(no quantizable layers)"
  info = {r["layer"]: (r["layer_type"], r["params"]) for r in rows}
  blocks = [("measured", "‖y_q − y‖/‖y‖ at the model output, that layer "
                         "alone at b bits")]
  if any(r.get("loss_increase") is not None for r in rows):
    blocks.append(("loss_increase", "loss increase, that layer alone at b "
                                    "bits"))
  lines = []
  for key, title in blocks:
    layers, bits, values = _grid(rows, key)
    header = ["layer", "type", "params"] + [f"w{b}" for b in bits]
    table = [header] + [
        [name, info[name][0], f"{info[name][1]:,}"] +
        [_fmt(v) for v in values[i]] for i, name in enumerate(layers)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines.append(title)
    for row in table:
      lines.append("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))))
    lines.append("")
  return "\n".join(lines).rstrip()


def _csv_text(rows: Sequence[Dict[str, Any]]) -> str:
  buffer = io.StringIO()
  keys = list(SENSITIVITY_KEYS) + sorted(
      {k for r in rows for k in r} - set(SENSITIVITY_KEYS))
  writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
  return buffer.getvalue()


def _heat_map(ax, fig, layers, bits, values, title, label, symmetric):
  import matplotlib.colors as mcolors  # pylint: disable=g-import-not-at-top
  finite = values[np.isfinite(values)]
  if symmetric:
    # Loss increases can be negative: linear near 0, log beyond.
    peak = float(np.max(np.abs(finite))) if finite.size else 1.0
    small = finite[np.abs(finite) > 0]
    # At most three decades of log scale a side: below that, linear.
    linthresh = max(float(np.min(np.abs(small))) if small.size else 1.0,
                    peak * 1e-3)
    norm = mcolors.SymLogNorm(linthresh=linthresh, vmin=-peak, vmax=peak)
    cmap = "RdBu_r"
  else:
    positive = finite[finite > 0]
    low = float(positive.min()) if positive.size else 1e-6
    high = float(positive.max()) if positive.size else 1.0
    norm = mcolors.LogNorm(vmin=low, vmax=max(high, low * 10))
    cmap = "viridis"
  image = ax.imshow(np.where(values > 0, values, np.nan)
                    if not symmetric else values,
                    aspect="auto", cmap=cmap, norm=norm)
  ax.set_xticks(range(len(bits)), [f"w{b}" for b in bits])
  ax.set_yticks(range(len(layers)), layers,
                fontsize=8 if len(layers) <= 40 else 5)
  ax.set_xlabel("weight bits of that layer (all others float)")
  ax.set_title(title)
  if len(layers) <= 40:
    for i in range(len(layers)):
      for j in range(len(bits)):
        if np.isfinite(values[i, j]):
          # Dark text on the light end of either colour map.
          level = float(norm(values[i, j]))
          light = level > 0.7 or (symmetric and 0.3 < level < 0.7)
          ax.text(j, i, f"{values[i, j]:.1e}", ha="center", va="center",
                  fontsize=6, color="black" if light else "white")
  fig.colorbar(image, ax=ax, label=label)


def write_sensitivity(rows: Sequence[Dict[str, Any]],
                      output_dir: str) -> Dict[str, str]:
  """Writes `sensitivity.csv` and `sensitivity.png` into `output_dir`.

  The CSV holds one line per row (`SENSITIVITY_KEYS`, empty for None). The
  PNG is a heat map, layers × bits, of `measured` on a log colour scale,
  with a second panel of `loss_increase` (symmetric log scale) when the
  rows have a non-zero one.

  Returns:
    {"csv": path, "png": path}.
  """
  os.makedirs(output_dir, exist_ok=True)
  csv_path = os.path.join(output_dir, "sensitivity.csv")
  png_path = os.path.join(output_dir, "sensitivity.png")
  atomic_write_text(csv_path, _csv_text(rows))
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display on training machines
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [("measured", "Output perturbation, one layer quantized",
             "‖y_q − y‖/‖y‖ (log scale)", False)]
  # An untrained model's loss may not move at all: no empty panel then.
  if any(r.get("loss_increase") for r in rows):
    panels.append(("loss_increase", "Loss increase, one layer quantized",
                   "loss(b bits) − loss(float) (symlog scale)", True))
  n_layers = len({r["layer"] for r in rows})
  fig, axes = plt.subplots(
      1, len(panels), squeeze=False,
      figsize=(4.5 * len(panels) + 2, max(3.0, 0.25 * n_layers + 1.5)))
  for ax, (key, title, label, symmetric) in zip(axes[0], panels):
    layers, bits, values = _grid(rows, key)
    _heat_map(ax, fig, layers, bits, values, title, label, symmetric)
  fig.tight_layout()
  # Save to a temporary name, then rename: a killed run leaves no half PNG.
  tmp = png_path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, png_path)
  return {"csv": csv_path, "png": png_path}
