import pytest
import tf_keras

import kqreg
from kqreg.qat import families as configs


@pytest.mark.parametrize("layer, weights, per_channel", [
    (tf_keras.layers.Dense(3), (("kernel", "last"),), False),
    (tf_keras.layers.Conv2D(3, 3), (("kernel", "last"),), True),
    (tf_keras.layers.Conv2DTranspose(3, 3), (("kernel", "transpose"),), False),
    (tf_keras.layers.DepthwiseConv2D(3), (("depthwise_kernel", "depthwise"),), True),
    (tf_keras.layers.SeparableConv2D(3, 3),
     (("depthwise_kernel", "depthwise"), ("pointwise_kernel", "last")), True),
])
def test_family_table_gives_kernels_and_channel_layout(layer, weights, per_channel):
  config = configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
  assert config.weights == weights and config.per_channel is per_channel


@pytest.mark.parametrize("layer", [tf_keras.layers.ReLU(), tf_keras.layers.Add(),
                                   tf_keras.layers.Concatenate(),
                                   tf_keras.layers.AveragePooling2D(),
                                   tf_keras.layers.Activation("relu")])
def test_layers_without_weights_quantize_their_output_only(layer):
  config = configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
  assert config.weights == () and config.quantize_output and config.weight_bits is None


def test_activation_the_quantize_aware_activation_lacks_moves_to_output():
  layer = tf_keras.layers.Dense(3, activation="relu6")
  config = configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
  assert config.activations == () and config.quantize_output


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_bits": 9}, "`weight_bits` must be an integer between 2 and 8"),
    ({"weight_bits": 1}, "Received: weight_bits=1"),
    ({"activation_bits": 17}, "`activation_bits` must be an integer between 2 and 16"),
    ({"weight_bits": 4.5}, "Received: weight_bits=4.5"),
])
def test_out_of_range_bits_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    kqreg.qat.BitQuantizeConfig(weights=(("kernel", "last"),), **kwargs)


def test_config_round_trips_through_keras_serialization():
  config = kqreg.qat.BitQuantizeConfig(weights=(("kernel", "last"),), activations=("activation",),
                                   weight_bits=3, activation_bits=None, per_channel=False)
  with kqreg.quantize_scope():
    again = tf_keras.utils.deserialize_keras_object(
        tf_keras.utils.serialize_keras_object(config))
  assert again == config and again is not config
  assert again.weight_quantizer("kernel").num_bits == 3


@pytest.mark.parametrize("layer", [tf_keras.layers.Dense(3), tf_keras.layers.DepthwiseConv2D(3),
                                   tf_keras.layers.SeparableConv2D(3, 3)])
def test_weight_noise_swaps_every_kernel_quantizer_for_its_twin(layer):
  twin = configs.config_for_layer(layer, weight_bits=4, activation_bits=8, weight_noise=True)
  plain = configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
  assert twin != plain
  for attr, layout in twin.weights:
    noisy, rounded = twin.weight_quantizer(attr), plain.weight_quantizer(attr)
    assert type(noisy) is kqreg.qat.quantizers.WeightNoiseQuantizer
    assert type(rounded) is kqreg.qat.quantizers.WeightQuantizer
    assert noisy.get_config() == rounded.get_config()  # same bits, range and layout


def test_weight_noise_config_round_trips_and_needs_weight_bits():
  config = configs.config_for_layer(tf_keras.layers.Conv2D(3, 3), weight_bits=2,
                                    activation_bits=None, weight_noise=True)
  with kqreg.quantize_scope():
    again = tf_keras.utils.deserialize_keras_object(
        tf_keras.utils.serialize_keras_object(config))
  assert again == config and again.weight_noise
  # Configs saved before `weight_noise` existed load as quantizers.
  old = {k: v for k, v in config.get_config().items() if k != "weight_noise"}
  assert not configs.BitQuantizeConfig.from_config(old).weight_noise
  # Output-only layers have no weights to perturb.
  assert not configs.config_for_layer(tf_keras.layers.ReLU(), activation_bits=8,
                                      weight_noise=True).weight_noise
  with pytest.raises(ValueError, match="`weight_noise=True` needs `weight_bits`"):
    kqreg.qat.BitQuantizeConfig(weights=(("kernel", "last"),), weight_bits=None, weight_noise=True)


def test_layer_without_family_is_refused_with_advice():
  with pytest.raises(ValueError, match="has no kqreg quantization family.*QuantizeConfig"):
    configs.config_for_layer(tf_keras.layers.UnitNormalization())


def test_subclass_of_known_layer_uses_nearest_family():
  class MyConv(tf_keras.layers.Conv2D):
    pass

  assert configs.family_of(MyConv(2, 1)).layer_type is tf_keras.layers.Conv2D
  assert configs.family_of(tf_keras.layers.Conv2DTranspose(2, 1)).layer_type is (
      tf_keras.layers.Conv2DTranspose)


@pytest.mark.parametrize("activation,interval", [
    ("sigmoid", (0.0, 1.0)), ("softmax", (0.0, 1.0)), ("tanh", (-1.0, 1.0)),
    ("relu", None), ("swish", None)])
def test_bounded_activation_layers_get_the_fixed_grid(activation, interval):
  layer = tf_keras.layers.Activation(activation)
  config = kqreg.qat.families.config_for_layer(layer, weight_bits=None,
                                          activation_bits=6)
  (quantizer,) = config.get_output_quantizers(layer)
  if interval is None:
    assert isinstance(quantizer, kqreg.qat.ActivationQuantizer)
  else:
    assert quantizer == kqreg.qat.FixedRangeQuantizer(6, *interval)
    assert quantizer.step == pytest.approx((interval[1] - interval[0]) / 64)
