"""Tests for kqreg._tfmot, the one seam to tfmot's and Keras's internals."""

import pytest

import kqreg
import tf_keras
from kqreg import _tfmot


def _dense_model(name):
  inputs = tf_keras.Input((4,))
  outputs = tf_keras.layers.Dense(3, name=f"{name}_dense")(inputs)
  return tf_keras.Model(inputs, outputs, name=name)


def test_iter_wrappers_recurses_into_nested_models():
  inner = kqreg.quantize(_dense_model("inner"), "w4a8")
  inputs = tf_keras.Input((4,))
  x = inner(inputs)
  outer = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="top")(x))
  names = [w.layer.name for w in _tfmot.iter_wrappers(outer)]
  assert names == ["inner_dense"]
  assert len(list(_tfmot.iter_quantize_layers(outer))) == 1
  assert kqreg.qat.is_quantized(outer)
  assert not kqreg.qat.is_quantized(_dense_model("float"))


def test_public_tfmot_classes_are_the_ones_tfmot_wraps_with():
  qat = kqreg.quantize(_dense_model("m"), "w8a8")
  wrapper = next(_tfmot.iter_wrappers(qat))
  assert isinstance(wrapper, _tfmot.QuantizeWrapperV2)
  assert isinstance(wrapper, _tfmot.QuantizeWrapper)


def test_nodes_in_graph_skips_other_models_nodes():
  shared = tf_keras.layers.Dense(2, name="shared")
  a_in, b_in = tf_keras.Input((3,)), tf_keras.Input((3,))
  model_a = tf_keras.Model(a_in, shared(a_in))
  model_b = tf_keras.Model(b_in, shared(b_in))
  (node_b,) = _tfmot.nodes_in_graph(model_b, shared)
  assert node_b.outputs is model_b.outputs[0]
  (node_a,) = _tfmot.nodes_in_graph(model_a, shared)
  assert node_a.outputs is model_a.outputs[0]


def test_inbound_layers_and_consumers_read_one_models_graph():
  shared = tf_keras.layers.Dense(2, name="shared")
  a_in = tf_keras.Input((3,), name="a_in")
  b_in = tf_keras.Input((3,), name="b_in")
  relu = tf_keras.layers.ReLU(name="relu")
  model_a = tf_keras.Model(a_in, relu(shared(a_in)))
  model_b = tf_keras.Model(b_in, shared(b_in))
  assert [l.name for l in _tfmot.inbound_layers(model_a, shared)] == ["a_in"]
  assert [l.name for l in _tfmot.inbound_layers(model_b, shared)] == ["b_in"]
  consumers = _tfmot.graph_consumers(model_a)
  assert {k: [l.name for l in v] for k, v in consumers.items()} == {
      "a_in": ["shared"], "shared": ["relu"], "relu": []}
  assert [l.name for l in _tfmot.graph_consumers(model_b)["shared"]] == []


def test_freeze_variables_keeps_values_and_functional_control_flow():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  scale = tf.Variable(3.0)

  @tf.function(autograph=False)
  def scaled(x):
    return tf.cond(tf.reduce_sum(x) > 0, lambda: x * scale, lambda: x - scale)

  function = scaled.get_concrete_function(tf.TensorSpec((2,), tf.float32))
  frozen = _tfmot.freeze_variables(function)
  assert not frozen.variables
  ops = {op.type for op in frozen.graph.get_operations()}
  assert ops & {"If", "StatelessIf"} and not ops & {"Switch", "Merge"}
  for x in ([1.0, 2.0], [-1.0, -2.0]):
    (out,) = frozen(tf.constant(x))
    assert out.numpy().tolist() == function(tf.constant(x)).numpy().tolist()
  scale.assign(5.0)  # a constant now: the variable no longer reaches it
  assert frozen(tf.constant([1.0, 2.0]))[0].numpy().tolist() == [3.0, 6.0]


_PROBE = '''
import tensorflow as tf


def halve_if_positive(x):
  if tf.reduce_sum(x) > 0:  # a Python branch on a tensor: needs autograph
    return x / 2
  return x
'''


def test_exempt_from_autograph_calls_the_module_unconverted(tmp_path, monkeypatch):
  import tensorflow as tf
  from tensorflow.python.autograph.core import config
  (tmp_path / "kqreg_autograph_probe.py").write_text(_PROBE)
  monkeypatch.syspath_prepend(str(tmp_path))
  import kqreg_autograph_probe as probe
  monkeypatch.setattr(config, "CONVERSION_RULES", config.CONVERSION_RULES)

  def traced(x):  # converted (a tf.function's own code), calls the probe
    return probe.halve_if_positive(x)

  assert tf.function(traced)(tf.constant([4.0])).numpy() == [2.0]
  before = len(config.CONVERSION_RULES)
  _tfmot.exempt_from_autograph("kqreg_autograph_probe")
  _tfmot.exempt_from_autograph("kqreg_autograph_probe")  # idempotent
  assert len(config.CONVERSION_RULES) == before + 1
  with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
    tf.function(traced)(tf.constant([4.0]))
