"""Graph rewrites before quantization: nested models flattened, separable
convolutions split, tf ops made layers.

tfmot's `quantize_apply` takes one flat Sequential or Functional graph:
`flatten_nested` inlines Functional sub-models (a backbone inside a
detector). TFLite needs a range between the two halves of a SeparableConv2D
to run it in integers: `_split_separable` rebuilds such layers as a
DepthwiseConv2D `<name>_depthwise` and a 1x1 Conv2D `<name>` with the same
weights, as tfmot's own 8-bit scheme does; `_split_activations` takes an
activation TFLite does not fuse (swish, sigmoid) out of a convolution into
an Activation layer after it, so that the conv's output gets a range.
`_swap_layers` rebuilds layers the converter would keep float as the same
function in a form it keeps in integers (`_integer_friendly`): a
MultiHeadAttention as `attention.QuantizableMultiHeadAttention`, with range
hooks where TFLite's int8 kernels need them, a Dense on a sequence as an
EinsumDense, a BatchNormalization no conv folds into as a
`depthwise_bn.DepthwiseBatchNormalization`, a LayerNormalization as a
`layer_norm.QuantizableLayerNormalization`. `tf_ops_as_layers` rebuilds
concat, add and nearest-repeat tf ops, and arithmetic with a number, as the
Keras layers they compute, so activation policies reach them.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg.qat import attention
from kqreg.qat import depthwise_bn
from kqreg.qat import layer_norm
from kqreg.qat.scalar_op import ScalarOp

__all__ = ["FUSED_ACTIVATIONS", "QuantizeError", "flatten_nested",
           "tf_ops_as_layers", "unfused_activation"]


class QuantizeError(ValueError):
  """A model kqreg cannot annotate or quantize, with what to do about it.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> class Sub(tf_keras.Model):
  ...   def call(self, x):
  ...     return x
  >>> try:
  ...   kqreg.quantize(Sub(), "w4")
  ... except kqreg.QuantizeError as e:
  ...   print(type(e).__name__)
  QuantizeError
  """


def _check_graph_model(model, what: str) -> None:
  if not isinstance(model, tf_keras.Model):
    raise QuantizeError(
        f"`{what}` must be a tf_keras Model. Received: {type(model)!r}. "
        "If it is a Keras 3 model, build it after `import kqreg` so it "
        "uses tf_keras.")
  if not (isinstance(model, tf_keras.Sequential) or
          getattr(model, "_is_graph_network", False)):
    raise QuantizeError(
        f"`{what}` is a subclassed model ({type(model).__name__}), which "
        "cannot be cloned layer by layer. Rebuild it as a Sequential or "
        "Functional model, or quantize its layers one by one with "
        "`kqreg.qat.quantize_annotate_layer`.")
  if not model.built:
    raise QuantizeError(
        f"`{what}` is not built. Call `model.build(input_shape)` or give "
        "its first layer an `input_shape` before quantizing.")


def _is_graph_submodel(layer) -> bool:
  return (isinstance(layer, tf_keras.Model) and
          getattr(layer, "_is_graph_network", False))


def _run_graph(model: tf_keras.Model, inputs: List[tf.Tensor],
               replace: Optional[Dict[str, Callable]] = None):
  """Calls `model`'s layers on `inputs`, inlining nested graph models.

  `replace` maps a layer name to a callable used in that layer's place.
  """
  replace = replace or {}
  tensor_dict = {}
  usage = model._tensor_usage_count  # pylint: disable=protected-access
  for x, y in zip(model.inputs, inputs):
    tensor_dict[str(id(x))] = [y] * usage[str(id(x))]
  nodes_by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  for depth in sorted(nodes_by_depth, reverse=True):
    for node in nodes_by_depth[depth]:
      if node.is_input or any(i not in tensor_dict
                              for i in node.flat_input_ids):
        continue
      args, kwargs = node.map_arguments(tensor_dict)
      if _is_graph_submodel(node.layer):
        sub_inputs = tf.nest.flatten(args[0] if args else kwargs["inputs"])
        outputs = _run_graph(node.layer, sub_inputs, replace)
      else:
        outputs = replace.get(node.layer.name, node.layer)(*args, **kwargs)
      for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
        tensor_dict[x_id] = [y] * usage[x_id]
  outputs = [tensor_dict[str(id(x))].pop() for x in model.outputs]
  return tf.nest.pack_sequence_as(model._nested_outputs, outputs)  # pylint: disable=protected-access


def _fresh_inputs(model: tf_keras.Model) -> List:
  return [
      tf_keras.Input(batch_shape=x.shape, dtype=x.dtype,
                     name=x.name.split(":")[0].replace("/", "_"))
      for x in model.inputs
  ]


def _weight_options(config: Dict, kernel: str) -> Dict:
  """A layer config's initializer, regularizer and constraint arguments, for
  a new layer whose kernel is `config`'s `<kernel>_...` one."""
  return {"kernel_initializer": config[f"{kernel}_initializer"],
          "kernel_regularizer": config[f"{kernel}_regularizer"],
          "kernel_constraint": config[f"{kernel}_constraint"],
          **{f"bias_{k}": config[f"bias_{k}"]
             for k in ("initializer", "regularizer", "constraint")},
          "activity_regularizer": config["activity_regularizer"]}


def _separable_halves(layer: tf_keras.layers.SeparableConv2D
                     ) -> Tuple[tf_keras.layers.DepthwiseConv2D,
                                tf_keras.layers.Conv2D]:
  """`layer` as DepthwiseConv2D + 1x1 Conv2D holding copies of its weights.

  TFLite needs an activation range between the two (tfmot's 8-bit scheme
  splits the layer the same way, `SeparableConvQuantize`); without one the
  converter leaves both float. The pointwise half keeps `layer`'s name, the
  depthwise half is named `<name>_depthwise`.
  """
  config = layer.get_config()
  depthwise = tf_keras.layers.DepthwiseConv2D(
      kernel_size=config["kernel_size"], strides=config["strides"],
      padding=config["padding"], depth_multiplier=config["depth_multiplier"],
      data_format=config["data_format"],
      dilation_rate=config["dilation_rate"], use_bias=False,
      depthwise_initializer=config["depthwise_initializer"],
      depthwise_regularizer=config["depthwise_regularizer"],
      depthwise_constraint=config["depthwise_constraint"],
      name=f"{layer.name}_depthwise", dtype=layer.dtype_policy)
  pointwise = tf_keras.layers.Conv2D(
      config["filters"], 1, data_format=config["data_format"],
      activation=config["activation"], use_bias=config["use_bias"],
      **_weight_options(config, "pointwise"),
      trainable=layer.trainable, name=layer.name, dtype=layer.dtype_policy)
  # Build from the kernels' shapes: a layer shared by several graphs has no
  # single input shape.
  _, _, channels, multiplier = layer.depthwise_kernel.shape

  def _shape(c):
    return ((None, c, None, None) if config["data_format"] == "channels_first"
            else (None, None, None, c))

  depthwise.build(_shape(channels))
  pointwise.build(_shape(channels * multiplier))
  depthwise.set_weights([layer.depthwise_kernel.numpy()])
  pointwise.set_weights([layer.pointwise_kernel.numpy()] +
                        ([layer.bias.numpy()] if layer.use_bias else []))
  return depthwise, pointwise


def _rebuilt(layer, make) -> Callable:
  """Calls `make(layer, first input)`'s layer in `layer`'s place, made and
  given `layer`'s weights on its first call (shared layers stay shared)."""
  copies = []

  def call(*args, **kwargs):
    if not copies:  # built by its first call, so named as `layer` is
      copies.append(make(layer, tf.nest.flatten(args or kwargs)[0]))
      outputs = copies[0](*args, **kwargs)
      copies[0].set_weights(layer.get_weights())
      return outputs
    return copies[0](*args, **kwargs)
  return call


def _chain(first, second) -> Callable:
  def call(inputs, **kwargs):
    return second(first(inputs, **kwargs), **kwargs)
  return call


# Activations TFLite fuses into a conv: any other is an op of its own.
FUSED_ACTIVATIONS = frozenset({"linear", "relu", "relu6"})
# Layers whose activation argument `_split_activations` takes out.
_CONVOLUTIONS = (tf_keras.layers.Conv1D, tf_keras.layers.Conv2D,
                 tf_keras.layers.Conv3D, tf_keras.layers.DepthwiseConv1D,
                 tf_keras.layers.DepthwiseConv2D)


def unfused_activation(layer: tf_keras.layers.Layer) -> Optional[str]:
  """The name of a convolution's activation that TFLite does not fuse into
  it (swish, sigmoid, ...), else None."""
  if not isinstance(layer, _CONVOLUTIONS):
    return None
  name = getattr(layer.activation, "__name__", None)
  return None if name in FUSED_ACTIVATIONS else name


def _split_activations(model: tf_keras.Model, names
                       ) -> Tuple[tf_keras.Model, Dict[str, str]]:
  """`model` with each convolution in `names` as the same convolution
  without activation (same name and weights) and an Activation layer
  `<name>_activation` after it (`_` appended while the name is taken), and
  {conv name: its activation layer's name}.

  TFLite runs an unfused activation (an EfficientNet's swish, a
  squeeze-excite's sigmoid) as ops of its own after the conv: their int8
  kernels need a range on the conv's output, which a conv holding its
  activation does not have, so the conv, LOGISTIC and MUL ran in float.
  """
  taken = {layer.name for layer in model.layers}
  activations = {}
  for name in names:
    activations[name] = f"{name}_activation"
    while activations[name] in taken:
      activations[name] += "_"
    taken.add(activations[name])

  def _without_activation(layer, x):
    return type(layer).from_config({**layer.get_config(),
                                    "activation": "linear"})

  replace = {}
  for name in names:
    layer = model.get_layer(name)
    replace[name] = _chain(_rebuilt(layer, _without_activation),
                           tf_keras.layers.Activation(
                               layer.activation, name=activations[name]))
  inputs = _fresh_inputs(model)
  return tf_keras.Model(inputs, _run_graph(model, inputs, replace),
                        name=model.name), activations


def _split_separable(model: tf_keras.Model, names) -> tf_keras.Model:
  """`model` with each SeparableConv2D in `names` as its two halves."""
  replace = {}
  for name in names:
    depthwise, pointwise = _separable_halves(model.get_layer(name))
    replace[name] = _chain(depthwise, pointwise)
  inputs = _fresh_inputs(model)
  return tf_keras.Model(inputs, _run_graph(model, inputs, replace),
                        name=model.name)


def _dense_as_einsum(layer: tf_keras.layers.Layer, x
                     ) -> tf_keras.layers.Layer:
  """An unbuilt EinsumDense computing Dense `layer` on a sequence `x` (rank
  > 2, as `_integer_friendly` checked), with its name and config.

  Keras's Dense on a sequence is a tensordot with its bias added after a
  reshape: the converter keeps it float. The einsum converts to an integer
  FULLY_CONNECTED with the bias fused.
  """
  config = layer.get_config()
  leading = "abcdefgh"[:x.shape.rank - 1]
  return tf_keras.layers.EinsumDense(
      f"{leading}y,yz->{leading}z", (*x.shape[1:-1], config["units"]),
      activation=config["activation"],
      bias_axes="z" if config["use_bias"] else None,
      **_weight_options(config, "kernel"),
      trainable=layer.trainable, name=layer.name, dtype=layer.dtype_policy)


def _integer_friendly(model: tf_keras.Model, layer: tf_keras.layers.Layer,
                      attention_too: bool = True,
                      layer_norm_too: bool = True) -> Optional[Callable]:
  """How to rebuild `layer` of `model` so that TFLite runs it in integers,
  if it needs it: `(layer, first input) -> unbuilt layer`, else None.
  Attention only with `attention_too`, LayerNormalization only with
  `layer_norm_too`."""
  if attention_too and attention.swappable(layer):
    return lambda layer, x: attention.as_quantizable(layer)
  if isinstance(layer, tf_keras.layers.BatchNormalization):
    nodes = _tfmot.nodes_in_graph(model, layer)
    if len(nodes) == 1 and depthwise_bn.swappable(
        layer, tf.nest.flatten(nodes[0].inbound_layers),
        nodes[0].input_shapes):
      return lambda layer, x: depthwise_bn.DepthwiseBatchNormalization(
          **layer.get_config())
  if layer_norm_too and layer_norm.swappable(layer, _input_shape(layer)):
    return lambda layer, x: layer_norm.QuantizableLayerNormalization(
        **layer.get_config())
  if (type(layer) is tf_keras.layers.Dense and  # pylint: disable=unidiomatic-typecheck
      len(_input_shape(layer) or ()) > 2):
    return _dense_as_einsum
  return None


def _input_shape(layer) -> Optional[Tuple]:
  """`layer`'s one dense input shape, None if it has several, none, or a
  ragged input (an EinsumDense takes no ragged tensor)."""
  try:
    shape, x = layer.input_shape, layer.input
  except (AttributeError, RuntimeError):
    return None
  if isinstance(getattr(x, "type_spec", None), tf.RaggedTensorSpec):
    return None
  return shape if isinstance(shape, tuple) else None


def _swap_layers(model: tf_keras.Model, swaps: Dict[str, Callable]
                 ) -> tf_keras.Model:
  """`model` with each layer named in `swaps` rebuilt by its function (see
  `_integer_friendly`), same name and weights."""
  replace = {name: _rebuilt(model.get_layer(name), make)
             for name, make in swaps.items()}
  inputs = _fresh_inputs(model)
  return tf_keras.Model(inputs, _run_graph(model, inputs, replace),
                        name=model.name)


def flatten_nested(model: tf_keras.Model) -> tf_keras.Model:
  """Inlines nested Functional/Sequential sub-models into one flat graph.

  tfmot's `quantize_apply` refuses a model that holds another model (a
  backbone inside a detector, say). The flat model shares the original layer
  objects, hence their weights; its layers carry their own names, prefixed by
  the sub-model's name only where two would clash.

  Returns:
    `model` itself when nothing is nested, else a new Functional model.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> outer = tf_keras.Sequential([tf_keras.Input((4,)), model])
  >>> flat = kqreg.qat.flatten_nested(outer)
  >>> [type(layer).__name__ for layer in flat.layers]
  ['InputLayer', 'Dense']
  """
  _check_graph_model(model, "model")
  if not any(_is_graph_submodel(layer) for layer in model.layers):
    return model
  names = set()
  for layer in _iter_leaf_layers(model):
    if layer.name in names:
      raise QuantizeError(
          f"Layer name {layer.name!r} occurs in two nested sub-models of "
          f"{model.name!r}; give the layers unique names before quantizing.")
    names.add(layer.name)
  inputs = _fresh_inputs(model)
  outputs = _run_graph(model, inputs)
  return tf_keras.Model(inputs, outputs, name=model.name)


def _iter_leaf_layers(model):
  for layer in model.layers:
    if _is_graph_submodel(layer):
      yield from _iter_leaf_layers(layer)
    elif not isinstance(layer, tf_keras.layers.InputLayer):
      yield layer


_TF_OP_LAMBDA = "TFOpLambda"


def _symbol(layer) -> Optional[str]:
  return getattr(layer, "symbol", None) if (
      type(layer).__name__ == _TF_OP_LAMBDA) else None


def _call_args(model: tf_keras.Model, layer):
  """(args, kwargs) of `layer`'s one call in `model`'s graph."""
  (node,) = _tfmot.nodes_in_graph(model, layer)
  return node.call_args, node.call_kwargs


def _repeat(args, kwargs):
  """(repeats, axis) of a `tf.repeat` call with an int count, else None."""
  repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
  axis = kwargs.get("axis", args[2] if len(args) > 2 else None)
  if isinstance(repeats, bool) or not isinstance(repeats, int):
    return None
  return repeats, axis


def _is_keras_tensor(x) -> bool:
  try:
    return tf_keras.backend.is_keras_tensor(x)
  except ValueError:  # not a tensor at all, e.g. a Python number
    return False


def _same_shape_tensors(args) -> bool:
  """True for `x + y` of two graph tensors of one shape (what Add takes)."""
  return (len(args) == 2 and all(_is_keras_tensor(a) for a in args) and
          args[0].shape == args[1].shape)


# tf op symbol -> (ScalarOp's op with the tensor first, with the number first).
_SCALAR_SYMBOLS = {
    "__operators__.add": ("add", "add"),
    "math.add": ("add", "add"),
    "math.subtract": ("subtract", "subtract_from"),
    "math.multiply": ("multiply", "multiply"),
}


def _number(x) -> Optional[float]:
  """`x` as a float if it is a Python number or a constant scalar tensor
  (`3.0 + x` hands the tf op `tf.constant(3.0)`), else None."""
  if isinstance(x, bool):
    return None
  if isinstance(x, (int, float)):
    return float(x)
  if (isinstance(x, tf.Tensor) and not _is_keras_tensor(x) and
      x.shape.rank == 0 and (x.dtype.is_floating or x.dtype.is_integer)):
    return float(x.numpy())
  return None


def _scalar_op(symbol: str, args) -> Optional[Tuple[str, float, int]]:
  """(ScalarOp op, number, position of the tensor) of `x <op> c` or
  `c <op> x` on a float tensor x, else None."""
  if symbol not in _SCALAR_SYMBOLS or len(args) < 2:
    return None
  for position, (tensor, other) in enumerate((args[:2], args[1::-1])):
    value = _number(other)
    if (value is not None and _is_keras_tensor(tensor) and
        tensor.dtype.is_floating):
      return _SCALAR_SYMBOLS[symbol][position], value, position
  return None


def _passthrough(x, *args, **kwargs):
  del args, kwargs
  return x


def tf_ops_as_layers(model: tf_keras.Model,
                     keep: Optional[Callable[[tf_keras.layers.Layer, List],
                                             bool]] = None
                     ) -> tf_keras.Model:
  """`model` with its concat, nearest-repeat and add tf ops, and arithmetic
  with a number, as Keras layers.

  Models built from TensorFlow ops (`TFOpLambda` layers: `tf.concat`,
  `tf.repeat`, `x + y`; keras-cv's YOLOv8 CSP blocks and FPN, for one) hide
  them from kqreg's layer families: under an activation policy they get no
  range, and TFLite's integer kernels need one (an int8 CONCATENATION needs
  one scale for its inputs and output). Rebuilt as layers, they are
  quantized like any model's:

  * `tf.concat(xs, axis)` -> `Concatenate(axis)` (quantized at its output);
  * `tf.repeat(tf.repeat(x, a, axis=1), b, axis=2)` (nearest upsampling) ->
    `UpSampling2D((a, b), interpolation="nearest")`, whose values stay on
    their input's grid;
  * `x + y` of two same-shaped tensors -> `Add()` (quantized at its output);
  * `x + c`, `x - c`, `c - x`, `x * c` (c a number; MobileNetV3's hard
    sigmoid) -> `ScalarOp` (quantized at its output), the same values.

  `tf.split` stays a tf op: its outputs are slices on its input's grid,
  which TFLite's int8 SPLIT takes. The function computed is unchanged.

  Args:
    model: Functional model (nested sub-models are inlined first).
    keep: `keep(layer, input_layers)` is True for tf-op layers to leave as
      they are (`input_layers`: the layers feeding it).

  Returns:
    A new Functional model sharing every other layer (and its weights) with
    `model`; new layers are named `<op>_<i>` in graph order (`concat_0`,
    `upsample_0`, `add_0`, `scalar_multiply_0`), so two builds of one
    architecture name them alike. `model` itself if it holds none of those
    ops.

  Example:
  >>> import kqreg, tf_keras, tensorflow as tf
  >>> x = tf_keras.Input((4,))
  >>> model = tf_keras.Model(x, tf.concat([x, x], axis=-1))
  >>> rebuilt = kqreg.qat.tf_ops_as_layers(model)
  >>> [type(layer).__name__ for layer in rebuilt.layers]
  ['InputLayer', 'Concatenate']
  """
  flat = flatten_nested(model)
  consumers = _tfmot.graph_consumers(flat)
  taken = {layer.name for layer in flat.layers}
  counts: Dict[str, int] = {}

  def _name(op: str) -> str:
    while True:
      index = counts.get(op, 0)
      counts[op] = index + 1
      if f"{op}_{index}" not in taken:
        return f"{op}_{index}"

  def _kept(layer) -> bool:
    return bool(keep and keep(layer, _tfmot.inbound_layers(flat, layer)))

  replace: Dict[str, Callable] = {}
  # Graph order: layers are listed topologically.
  for layer in flat.layers:
    symbol = _symbol(layer)
    if symbol is None or layer.name in replace or _kept(layer):
      continue
    args, kwargs = _call_args(flat, layer)
    if symbol == "concat":
      axis = kwargs.get("axis", args[1] if len(args) > 1 else None)
      if isinstance(axis, int):
        replace[layer.name] = _nth(0, tf_keras.layers.Concatenate(
            axis=axis, name=_name("concat")))
    elif symbol == "__operators__.add" and _same_shape_tensors(args[:2]):
      replace[layer.name] = _binary(tf_keras.layers.Add(name=_name("add")))
    elif (scalar := _scalar_op(symbol, args)) is not None:
      op, value, position = scalar
      replace[layer.name] = _nth(position, ScalarOp(
          op, value, name=_name(f"scalar_{op}")))
    elif symbol == "repeat":
      first = _repeat(args, kwargs)
      following = consumers.get(layer.name, [])
      if first is None or first[1] not in (1, 2) or args[0].shape.rank != 4:
        continue  # not an image-axis repeat of an NHWC map
      size = [1, 1]
      size[first[1] - 1] = first[0]
      if (len(following) == 1 and _symbol(following[0]) == "repeat" and
          not _kept(following[0])):
        second = _repeat(*_call_args(flat, following[0]))
        if second is not None and second[1] in (1, 2) and second[1] != first[1]:
          # keras-cv's upsampling: one op for the pair.
          size[second[1] - 1] = second[0]
          replace[layer.name] = _passthrough
          replace[following[0].name] = _nth(0, tf_keras.layers.UpSampling2D(
              tuple(size), interpolation="nearest", name=_name("upsample")))
          continue
      replace[layer.name] = _nth(0, tf_keras.layers.UpSampling2D(
          tuple(size), interpolation="nearest", name=_name("upsample")))
  if not replace:
    return model
  inputs = _fresh_inputs(flat)
  return tf_keras.Model(inputs, _run_graph(flat, inputs, replace),
                        name=model.name)


def _binary(layer: tf_keras.layers.Layer) -> Callable:
  def call(x, y, *args, **kwargs):
    del args, kwargs  # `name=` of the tf op
    return layer([x, y])
  return call


def _nth(position: int, layer: tf_keras.layers.Layer) -> Callable:
  def call(*args, **kwargs):
    del kwargs  # the tf op's other arguments are now the layer's
    return layer(args[position])
  return call
