import pytest
import tf_keras

from kqreg.qat.policy import BitPolicy, Bits, FLOAT, PolicyError


@pytest.mark.parametrize("text, default", [
    ("fp", FLOAT),
    ("w8", Bits(8, None)),
    ("w4a8", Bits(4, 8)),
    ("a8", Bits(None, 8)),
    ("W2A16", Bits(2, 16)),
    ("n4", Bits(4, None, noise=True)),
    ("n4a8", Bits(4, 8, noise=True)),
    ("N2A16", Bits(2, 16, noise=True)),
])
def test_parses_default_bits(text, default):
  assert BitPolicy.parse(text).default == default


@pytest.mark.parametrize("text", [
    "fp",
    "w4",
    "w4a8,first=w8a8,last=w8a8,conv2d_3=w2,Dense=w8",
    "w4,skip=head_*+stem",
    "w3a8,block_*_expand=w8,name:Dense=w2",
    "n4",
    "n4a8",
    "n8,first=n4a8,last=w8a8,conv*=n2,Dense=n6,type:ReLU=a8,name:Conv2D=n3",
])
def test_str_round_trips(text):
  policy = BitPolicy.parse(text)
  assert BitPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["n4", "n4a8", "w4,first=n8,last=n2a8,conv*=n3,Dense=n5"])
def test_noise_tokens_print_as_written(text):
  assert str(BitPolicy.parse(text)) == text


def test_noise_tokens_work_wherever_weight_tokens_do():
  model = _model()
  policy = BitPolicy.parse("n4,first=n8a8,mid_*=w3,mid_2=n2,Dense=n6,skip=head")
  weighted = [l for l in model.layers if l.weights]
  got = {l.name: policy.bits_for(l, is_first=l is weighted[0], is_last=l is weighted[-1])
         for l in weighted}
  assert got == {"stem": Bits(8, 8, noise=True), "mid_1": Bits(3),
                 "mid_2": Bits(2, noise=True), "head": FLOAT}
  assert BitPolicy.parse("n4").bits_for(model.get_layer("head")) == Bits(4, noise=True)
  assert Bits(4, noise=True) != Bits(4)


def test_noise_without_weight_bits_is_refused():
  with pytest.raises(ValueError, match="`noise=True` needs `weight` bits"):
    Bits(None, 8, noise=True)


def test_class_keys_and_name_keys_are_told_apart():
  policy = BitPolicy.parse("w4,Dense=w8,dense_1=w2,type:ReLU=a8,name:Conv2D=w3")
  assert policy.types == (("Dense", Bits(8)), ("ReLU", Bits(None, 8)))
  assert policy.names == (("dense_1", Bits(2)), ("Conv2D", Bits(3)))


@pytest.mark.parametrize("text, message", [
    ("", "non-empty string"),
    ("w9", r"weight bits 9 in policy token 'w9'.*between 2 and 8"),
    ("w4a1", r"activation bits 1 .*between 2 and 16"),
    ("x4", r"Bad bits 'x4'"),
    ("w4,first", r"Bad policy token 'first'.*key=bits"),
    ("w4,conv=", r"Bad policy token 'conv='"),
    ("w4,first=w8,first=w6", r"`first` is set twice"),
    ("first=w8", "first policy token must be the default"),
    ("w4,type:Conv9D=w8", r"Unknown layer class 'Conv9D'"),
    ("w4,last=w4b8", r"Bad bits 'w4b8' in policy token 'last=w4b8'"),
    ("n1", r"Bad noise bits 1 in policy token 'n1'.*between 2 and 8\.$"),
    ("n9", r"Bad noise bits 9 in policy token 'n9'.*between 2 and 8\.$"),
    ("n", r"Bad bits 'n' in policy token 'n'.*`n<b>`"),
    ("na8", r"Bad bits 'na8' in policy token 'na8'"),
    ("nfp", r"Bad bits 'nfp' in policy token 'nfp'.*`n` takes weight bits"),
    ("w4,first=n1a8", r"Bad noise bits 1 in policy token 'first=n1a8'"),
    ("w4,conv*=n", r"Bad bits 'n' in policy token 'conv\*=n'"),
])
def test_bad_strings_point_at_the_token(text, message):
  with pytest.raises(PolicyError, match=message):
    BitPolicy.parse(text)


def _model():
  inputs = tf_keras.Input((4,))
  x = tf_keras.layers.Dense(4, name="stem")(inputs)
  x = tf_keras.layers.Dense(4, name="mid_1")(x)
  x = tf_keras.layers.Dense(4, name="mid_2")(x)
  outputs = tf_keras.layers.Dense(2, name="head")(x)
  return tf_keras.Model(inputs, outputs)


def test_lookup_order_skip_name_first_glob_type_default():
  model = _model()
  policy = BitPolicy.parse("w4a8,first=w8a8,mid_*=w3,mid_2=w2,Dense=w6,skip=head")
  weighted = [l for l in model.layers if l.weights]
  got = {l.name: policy.bits_for(l, is_first=l is weighted[0], is_last=l is weighted[-1])
         for l in weighted}
  assert got == {"stem": Bits(8, 8), "mid_1": Bits(3), "mid_2": Bits(2), "head": FLOAT}
  assert BitPolicy.parse("w4,Dense=w6").bits_for(model.get_layer("head")) == Bits(6)


@pytest.mark.parametrize("text, missing", [
    ("w4,conv9=w8", "layer 'conv9'"),
    ("w4,blk_*=w8", "layer 'blk_\\*'"),
    ("w4,Conv2D=w8", "layer class 'Conv2D'"),
    ("w4,skip=nothing", "skip pattern 'nothing'"),
])
def test_overrides_naming_absent_layers_are_refused(text, missing):
  with pytest.raises(PolicyError, match=f"names {missing}, which the model does not have.*stem"):
    BitPolicy.parse(text).check_against(_model().layers)


@pytest.mark.parametrize("text,expected", [
    ("fp", False), ("w4", False), ("n4,first=w8", False), ("w4a8", True),
    ("w4,last=w8a8", True), ("w4,Dense=a8", True), ("w8,conv*=w2a4", True)])
def test_has_activation_bits_looks_at_every_override(text, expected):
  assert BitPolicy.parse(text).has_activation_bits is expected
