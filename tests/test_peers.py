"""Peer adapters: build, a train step, quantized values against each peer's own
formula, the export row, and the row a missing or refusing peer gets.

A peer that is not installed here is never skipped silently: its test checks
the row the benchmark reports for it instead. Larq pins numpy<2 but
runs on numpy 2: the README's test command installs it with --no-deps, so its
DoReFa values are tested, and so is the row it gets where it is missing.
"""

import sys
import types

import kqreg  # noqa: F401  (Keras 2 first)
import numpy as np
import pytest
import tf_keras

from kqreg import _tfmot
from kqreg.export import ExportError
from kqreg.study.benchmark import report as benchmark_report
from kqreg.study.benchmark import peer_rows as peer_benchmark
from kqreg.study.benchmark import peers


def _train_step(model, batch):
  model.compile(tf_keras.optimizers.Adam(1e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  loss = model.train_on_batch(*batch)
  assert np.isfinite(loss)


def _dense_relu_dense():
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((6,))
  x = tf_keras.layers.Dense(5, name="d1")(inputs)
  x = tf_keras.layers.ReLU(name="relu")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(x))


def _tiny_data(shape=(8, 8, 1), train=128, val=32):
  rng = np.random.default_rng(0)
  return {"x_train": rng.random((train, *shape), dtype=np.float32),
          "y_train": np.arange(train) % 10,
          "x_val": rng.random((val, *shape), dtype=np.float32),
          "y_val": np.arange(val) % 10}


def _reported_when_missing(peer) -> bool:
  """True if `peer` runs here; else checks the benchmark's row for it."""
  ok, reason = peer.available()
  if ok:
    return True
  assert reason.startswith("not importable") or "not tf_keras" in reason
  rows = peer_benchmark.peer_comparison(_tiny_data(), [("mlp", {"hidden": (4,)})],
                                   bits=(4,), epochs=1, peers=[peer],
                                   references=())
  row = [r for r in rows if r["tool"] == peer.name]
  assert len(row) == 1 and row[0]["note"] == reason
  assert row[0]["accuracy"] is None and row[0]["exported"] is None
  return False


def test_tfmot_nbit_kernels_sit_on_its_grid(cnn, batch):
  peer = peers.get("tfmot_nbit")
  ok, reason = peer.available()
  assert ok, reason  # tfmot is a kqreg dependency
  assert peer.unsupported(cnn) == []
  qat = peer.build(cnn, weight_bits=4, activation_bits=8)
  _train_step(qat, batch)
  checked = 0
  for wrapper in _tfmot.iter_wrappers(qat):
    for weight, quantizer, variables in wrapper._weight_vars:  # pylint: disable=protected-access
      q = quantizer(weight, training=False, weights=variables).numpy()
      # Symmetric narrow range [-m, m] per output channel, 2^4 - 2 steps.
      m = variables["max_var"].numpy()
      step = 2 * m / (2**4 - 2)
      expected = np.clip(np.round(weight.numpy() / step), -7, 7) * step
      np.testing.assert_allclose(q, expected, atol=1e-5 * float(np.max(m)))
      checked += 1
  assert checked == 3  # conv_a, conv_b, head
  row = peers.export(qat, batch[0])
  assert row["exported"] and row["error"] == ""
  assert row["kernel_types"] == {"INT4": 3} and row["kernel_levels"] <= 15
  assert row["float_ops"] == 0 and row["size_bytes"] > 0


def test_tfmot_nbit_refuses_what_it_cannot_express(cnn):
  peer = peers.get("tfmot_nbit")
  with pytest.raises(peers.PeerError, match="no weight-only mode"):
    peer.build(cnn, 4, None)
  with pytest.raises(peers.PeerError, match="`weight_bits` must be"):
    peer.build(cnn, 9, 8)
  inputs = tf_keras.Input((4, 4, 4, 1))
  x = tf_keras.layers.Conv3D(2, 3, name="conv3d")(inputs)
  x = tf_keras.layers.Flatten()(x)
  volume = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(x))
  assert peer.unsupported(volume) == ["Conv3D"]
  with pytest.raises(peers.PeerError, match="unsupported: Conv3D"):
    peer.build(volume, 4, 8)
  assert peers.get("qkeras").unsupported(volume) == ["Conv3D"]


def test_qkeras_layers_follow_quantized_bits(cnn, batch):
  peer = peers.get("qkeras")
  if not _reported_when_missing(peer):
    return
  qat = peer.build(cnn, weight_bits=4, activation_bits=8)
  kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
  assert (kinds["conv_a"], kinds["conv_b"], kinds["head"], kinds["relu_a"]) == (
      "QConv2D", "QConv2D", "QDense", "QActivation")
  assert kinds["bn_a"] == "BatchNormalization"  # folded by TFLite
  np.testing.assert_array_equal(qat.get_layer("conv_a").kernel.numpy(),
                                cnn.get_layer("conv_a").kernel.numpy())
  _train_step(qat, batch)
  for name in ("conv_a", "conv_b", "head"):
    layer = qat.get_layer(name)
    w = layer.kernel.numpy()
    # quantized_bits(4, 0, alpha=1): step 2^-3 on [-1, 1 - 2^-3].
    np.testing.assert_allclose(layer.kernel_quantizer_internal(w).numpy(),
                               np.clip(np.round(w * 8), -8, 7) / 8, atol=1e-7)

  # The forward pass: x @ Q(W1) + b1 -> quantized_relu(8, 3) -> Dense.
  model = _dense_relu_dense()
  qat = peer.build(model, 4, 8)
  x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
  (w1, b1), (w2, b2) = (model.get_layer(n).get_weights() for n in ("d1", "head"))
  q = lambda w: np.clip(np.round(w * 8), -8, 7) / 8
  h = np.clip(np.round(np.maximum(x @ q(w1) + b1, 0) * 32), 0, 255) / 32
  np.testing.assert_allclose(qat(x).numpy(), h @ q(w2) + b2, atol=1e-5)

  row = peers.export(peer.build(cnn, 4, 8), batch[0])
  # The converter re-quantizes QKeras' float kernels to int8: still <= 16 values.
  assert row["exported"] and row["kernel_types"] == {"INT8": 3}
  assert row["kernel_levels"] <= 16


# Larq 0.14.0 declares numpy<2, so pip will not install it beside this
# stack's numpy 2; installed without its dependencies it imports and trains
# with numpy 2.4.6 (measured; this test passed so). CI does not install it.
LARQ_INSTALL = "pip install --no-deps larq==0.14.0 terminaltables==3.1.10"


def test_larq_row_says_exactly_why_larq_is_unavailable(monkeypatch):
  """The row the benchmark reports where Larq is missing."""
  peer = peers.get("larq")
  if peer.available()[0]:  # installed here: check the row it would get
    monkeypatch.setitem(sys.modules, "larq", None)
  ok, reason = peer.available()
  assert not ok
  error = str(pytest.raises(ImportError, __import__, "larq").value)
  if int(np.__version__.split(".")[0]) >= 2:
    assert reason == (
        f"not importable ({error}); larq 0.14.0 requires numpy<2.0,>=1.15.4 "
        f"but this stack has numpy {np.__version__}: `pip install larq` "
        "would downgrade numpy to 1.26.4; with numpy pinned pip stops with "
        "ResolutionImpossible. It runs on numpy 2 all the same: pip install "
        "--no-deps larq==0.14.0 terminaltables==3.1.10 (what the README's "
        "test command does)")
  else:
    assert reason == (f"not importable ({error}); numpy {np.__version__} fits "
                      "larq 0.14.0 requires numpy<2.0,>=1.15.4: install it")
  rows = peer_benchmark.peer_comparison(_tiny_data(), [("mlp", {"hidden": (4,)})],
                                        bits=(4,), epochs=1, peers=[peer],
                                        references=())
  assert [r["tool"] for r in rows] == ["float", "larq"]  # nothing built
  row = rows[1]
  assert row["note"] == reason and row["bits"] == "–" and row["version"] is None
  assert row["accuracy"] is None and row["exported"] is None


def test_larq_layers_follow_dorefa(cnn, batch):
  peer = peers.get("larq")
  ok, reason = peer.available()
  # The README's test command installs Larq beside numpy 2: missing here is
  # a broken test environment, not a reason to skip.
  assert ok, (f"Larq is not installed ({reason}); `{LARQ_INSTALL}` installs "
              "it beside numpy 2")
  qat = peer.build(cnn, weight_bits=4, activation_bits=8)
  kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
  assert (kinds["conv_a"], kinds["conv_b"], kinds["head"]) == (
      "QuantConv2D", "QuantConv2D", "QuantDense")
  # The first conv sees the image: Larq leaves its input float.
  assert qat.get_layer("conv_a").input_quantizer is None
  assert qat.get_layer("conv_b").input_quantizer is not None
  _train_step(qat, batch)

  def dorefa_weights(w, k=4):
    t = np.tanh(w)
    n = 2**k - 1
    return 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * n) / n - 1

  model = _dense_relu_dense()
  qat = peer.build(model, 4, 8)
  x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
  (w1, b1), (w2, b2) = (model.get_layer(n).get_weights() for n in ("d1", "head"))
  h = np.maximum(x @ dorefa_weights(w1) + b1, 0)
  h = np.round(np.clip(h, 0, 1) * 255) / 255  # DoReFa(8) on head's input
  np.testing.assert_allclose(qat(x).numpy(), h @ dorefa_weights(w2) + b2,
                             atol=1e-5)
  row = peers.export(peer.build(cnn, 4, 8), batch[0])
  assert row["exported"] and row["kernel_levels"] <= 16


class _Refusing(peers.Peer):
  """A peer that runs but cannot quantize the model's layers."""

  name, module, distribution = "refusing", "math", "refusing"

  def unsupported(self, model):
    return ["Dense"]

  def build(self, model, weight_bits, activation_bits=8):
    raise peers.PeerError("unsupported: Dense")


def test_missing_and_refusing_peers_are_rows(monkeypatch):
  # `import x` raises ImportError while sys.modules holds None for it.
  monkeypatch.setitem(sys.modules, "qkeras", None)
  monkeypatch.setitem(sys.modules, "larq", None)
  ok, reason = peers.get("qkeras").available()
  assert not ok and reason.startswith("not importable (")
  ok, larq_reason = peers.get("larq").available()
  assert not ok and "larq 0.14.0 requires numpy<2.0" in larq_reason
  if int(np.__version__.split(".")[0]) >= 2:
    assert f"this stack has numpy {np.__version__}" in larq_reason
  tool_peers = [peers.get("tfmot_nbit"), peers.get("qkeras"), peers.get("larq"),
                _Refusing()]
  data = _tiny_data()
  rows = peer_benchmark.peer_comparison(data, [("mlp", {"hidden": (8,)})], bits=(4,),
                                   epochs=2, peers=tool_peers,
                                   references=("kqreg",))
  by_tool = {r["tool"]: r for r in rows}
  assert [r["tool"] for r in rows] == ["float", "kqreg", "tfmot_nbit", "qkeras",
                                       "larq", "refusing"]
  assert by_tool["float"]["ratio"] == 1.0 and by_tool["float"]["exported"] is None
  for tool in ("kqreg", "tfmot_nbit"):
    row = by_tool[tool]
    assert row["bits"] == "w4a8" and 0 <= row["accuracy"] <= 1
    assert row["ratio"] > 0 and row["ratio_ci"][0] <= row["ratio_ci"][1]
    assert row["exported"] and row["kernels"] == "INT4 x2" and row["note"] == ""
  assert by_tool["qkeras"]["note"] == reason and by_tool["qkeras"]["bits"] == "–"
  assert by_tool["larq"]["note"] == larq_reason
  assert by_tool["refusing"]["note"] == "unsupported: Dense"
  assert by_tool["refusing"]["accuracy"] is None
  text = "\n".join(benchmark_report.peers_markdown(
      {"dataset": "tiny", "epochs": 2, "batch_size": 64, "input_shape": [8, 8, 1],
       "train_examples": 128, "val_examples": 32, "rows": rows}))
  assert "| mlp | qkeras | – | – | – | – | – | – | not importable (" in text
  assert "| mlp | refusing | w4a8 | – |" in text and "unsupported: Dense |" in text
  assert "| mlp | tfmot_nbit 0.8.1 | w4a8 |" in text and "INT4 x2 (≤15 levels)" in text


def test_availability_checks_and_export_failure(monkeypatch, cnn):
  fake = types.SimpleNamespace(QConv2D=type("QConv2D", (), {}))
  assert "not tf_keras" in peers.get("qkeras")._check(fake)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="Unknown peer 'nope'"):
    peers.get("nope")

  def refuse(*args, **kwargs):
    raise ExportError("TFLite conversion of 'x' failed: boom")

  monkeypatch.setattr(peers.converter, "convert", refuse)
  row = peers.export(cnn)
  assert row["exported"] is False and row["size_bytes"] is None
  assert row["error"] == "ExportError: TFLite conversion of 'x' failed: boom"
