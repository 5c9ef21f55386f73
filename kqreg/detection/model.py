"""A quantization-aware keras-cv YOLOv8 detector built from explicit sizes.

`build_detector` builds keras-cv's float `YOLOV8Detector` on a
`YOLOV8Backbone` of the chosen size (no presets: nothing can be downloaded),
takes the Functional graph from its input to the head's concatenated output,
and quantizes that whole graph with `kqreg.quantize` — every Conv2D of the
backbone, the path-aggregation FPN and the head follows the bit policy. The
result is wrapped back into `QuantizedYOLOV8Detector`, a `YOLOV8Detector`
that keeps keras-cv's own loss (`compute_loss`, the task-aligned label
encoder), box decoding and non-max suppression. One departure from keras-cv:
the class biases start at YOLOv8's object prior (`class_prior_bias`), as in
Ultralytics' reference, not at 0.

Left out of the quantized graph on purpose: the head's final `box_outputs`
Activation and the `box`/`class` no-op Concatenates. Under an `aN` policy kqreg
would put an N-bit output quantizer on `box_outputs`, which concatenates box
logits (range ~±20) with class probabilities (range [0, 1]) and would crush
the probabilities to a handful of levels; the head's concatenations of box
and class outputs stay tf ops for the same reason. The sigmoid
`*_classifier` activations before them are quantized on the sigmoid's fixed
grid (`quantizers.FixedRangeQuantizer`: 1/256 at 8 bits, TFLite's int8
LOGISTIC output), not on a moving-average range: one starting at ±6 put the
class probabilities below one step, and a8 detectors never learned.

keras-cv builds the backbone's and FPN's CSP blocks and the FPN's upsampling
from tf ops (concat, add, repeat, split). Before quantizing, the concats,
adds and repeat pairs are rebuilt as `Concatenate`, `Add` and
`UpSampling2D(interpolation="nearest")` layers (`kqreg.graph.tf_ops_as_layers`;
the float outputs are unchanged), so an `aN` policy gives each concatenation
and add an N-bit output range, as TFLite's int8 kernels need: detectors
trained with activation bits ("w8a8", "w4a8") export to integer TFLite
(`kqreg.detection.export_detector`). `tf.split` stays a tf op; its outputs
are slices on its input's grid.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from typing import Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tf_keras
import keras_cv
from keras_cv.src.models.object_detection.yolo_v8 import (
    yolo_v8_detector as _yolo)
from keras_cv.src.models.task import Task

from kqreg import _tfmot
from kqreg.qat import policy as policy_lib
from kqreg.detection.autograph import trace_keras_cv_as_written
from kqreg.qat.rewrites import tf_ops_as_layers
from kqreg.qat.transform import quantize
from kqreg.runs.config import ConfigError

__all__ = ["BACKBONES", "SHORT_RUN_BN_MOMENTUM", "DetectorError",
           "QuantizedYOLOV8Detector", "quiet_keras_cv_warnings",
           "layer_output", "class_prior_bias",
           "build_detector", "build_backbone"]

# stackwise_channels, stackwise_depth per size (keras-cv's xs/s/m presets).
BACKBONES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "xs": ((16, 32, 64, 128), (1, 1, 1, 1)),
    "s": ((32, 64, 128, 256), (1, 2, 2, 1)),
    "m": ((48, 96, 192, 384), (2, 4, 4, 2)),
}
# The backbone's P5 is 1/32 of the input.
SIZE_MULTIPLE = 32
_LEVELS = ("P3", "P4", "P5")
_STRIDES = (8, 16, 32)
# Saved with each quantized detector. 2: keras-cv's tf ops as layers and the
# class sigmoids on a fixed grid, which changed the graphs of aN policies.
GRAPH_VERSION = 2
# Objects per image the class prior assumes (Ultralytics' YOLOv8 value).
PRIOR_OBJECTS = 5.0
SHORT_RUN_BN_MOMENTUM = 0.9
"""BatchNormalization momentum of kqreg's detectors (keras-cv's is 0.97).

The stem's batch variance is ~0.001 while a moving variance starts at 1: at
0.97 it keeps 0.97^100 = 0.05 of that start after 100 steps, 48x the true
variance, and a short run evaluates on the wrong scale; at 0.9, 3e-5."""


@contextlib.contextmanager
def quiet_keras_cv_warnings():
  """Mutes keras-cv's deprecation warnings about Keras 2 attributes.

  keras-cv's Task and Backbone `__dir__` read every attribute, including
  Keras 2's deprecated `updates`/`state_updates`, so fitting with
  checkpoints, saving or converting a detector warns dozens of times about
  code that is not the user's. Only those warnings, only from keras-cv, and
  only within the block.
  """
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*updates` will be removed",
                            module=r"keras_cv\.")
    yield


class DetectorError(ConfigError):
  """A detector that cannot be built as asked, with the argument to fix."""


def build_backbone(backbone: str, image_size: int) -> tf_keras.Model:
  """keras-cv's YOLOV8Backbone of size `backbone` (xs, s, m), weights=None."""
  if backbone not in BACKBONES:
    raise DetectorError(f"--backbone={backbone!r}: unknown size; use one of "
                        f"{', '.join(BACKBONES)}.")
  if (isinstance(image_size, bool) or not isinstance(image_size, int)
      or image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE):
    raise DetectorError(
        f"--image_size={image_size!r}: YOLOv8 needs a multiple of "
        f"{SIZE_MULTIPLE} (>= {SIZE_MULTIPLE}), e.g. 64 or 96.")
  channels, depth = BACKBONES[backbone]
  return keras_cv.models.YOLOV8Backbone(
      stackwise_channels=list(channels), stackwise_depth=list(depth),
      include_rescaling=True, activation="swish",
      input_shape=(image_size, image_size, 3))


@tf_keras.utils.register_keras_serializable(package="kqreg")
class QuantizedYOLOV8Detector(_yolo.YOLOV8Detector):
  """keras-cv's YOLOV8Detector over a prebuilt (quantized) Functional graph.

  Skips `YOLOV8Detector.__init__` (which builds the FPN and head itself) and
  initializes the Functional model from `inputs`/`outputs` directly; loss,
  label assignment, decoding and NMS are keras-cv's. Its config is the
  arguments of `build_detector`, so `model.save("m.keras")` and
  `tf_keras.models.load_model("m.keras")` round-trip it (no custom objects
  needed once `kqreg.detection` is imported).
  """

  def __init__(self, inputs, outputs, *, backbone, num_classes: int,
               bounding_box_format: str, fpn_depth: int,
               prediction_decoder=None, build_args=None, **kwargs):
    Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)  # pylint: disable=non-parent-init-called
    self._build_args = dict(build_args or {})
    self.bounding_box_format = bounding_box_format
    self._prediction_decoder = prediction_decoder or (
        keras_cv.layers.NonMaxSuppression(
            bounding_box_format=bounding_box_format, from_logits=False,
            confidence_threshold=0.2, iou_threshold=0.7))
    self.backbone = backbone
    self.fpn_depth = fpn_depth
    self.num_classes = num_classes
    self.label_encoder = _yolo.YOLOV8LabelEncoder(num_classes=num_classes)

  def get_config(self):
    # The quantized graph is rebuilt from the arguments of `build_detector`,
    # not serialized layer by layer; `model.save("x.keras")` then restores
    # the weights into it.
    return dict(self._build_args, name=self.name, graph=GRAPH_VERSION)

  def get_compile_config(self):
    # keras-cv's compile takes loss names Keras cannot restore by itself;
    # a loaded detector is compiled again by whoever trains it further.
    return None

  @classmethod
  def from_config(cls, config, custom_objects=None):
    del custom_objects  # the graph is rebuilt, nothing to look up
    config = dict(config)
    name = config.pop("name", None)
    graph = config.pop("graph", 1)
    if graph < GRAPH_VERSION and policy_lib.BitPolicy.parse(
        config.get("bits", "fp")).has_activation_bits:
      raise DetectorError(
          f"this {config.get('bits')} detector was saved by an older kqreg "
          f"whose activation-quantized graph differs from today's (graph "
          f"{graph}, now {GRAPH_VERSION}: keras-cv's tf ops became layers "
          "with their own ranges, class sigmoids a fixed grid); its weights "
          "do not fit it. Such detectors did not learn (mAP 0): train it "
          "again.")
    model = build_detector(**config)
    if name:
      model._name = name  # pylint: disable=protected-access
    return model


def class_prior_bias(num_classes: int, image_size: int, stride: int,
                     objects: float = PRIOR_OBJECTS) -> float:
  """The initial class logit of one anchor on the grid of `stride`.

  YOLOv8 (Ultralytics' `Detect.bias_init`) starts every class score at the
  chance that an anchor holds an object of that class, `objects` per image
  spread over classes and grid cells: p = objects / num_classes / cells,
  here as a logit (p capped at 0.5 for tiny grids). keras-cv leaves the
  bias at 0, so every anchor starts at p = 0.5 for every class: the class
  loss of a fresh 64-px detector is 10-18x higher (measured: 210 against
  12 on kqreg_digit_scenes, 138 against 13 on kqreg_shapes), the first
  steps only push the scores of empty anchors down, and the task-aligned
  assigner, which weighs anchors by their class score, learns little
  until that settles (mAP@0.5 after 6 epochs on kqreg_digit_scenes at
  96 px: 0.59 without the prior, 0.77 with it).
  """
  cells = (image_size / stride) ** 2
  p = min(objects / num_classes / cells, 0.5)
  return float(math.log(p / (1.0 - p)))


def _init_class_prior(detector: tf_keras.Model, num_classes: int,
                      image_size: int) -> None:
  """Sets the head's class biases to `class_prior_bias` (float detector)."""
  for level, stride in enumerate(_STRIDES, start=1):
    layer = detector.get_layer(f"yolo_v8_head_{level}_class_3_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(
        bias, class_prior_bias(num_classes, image_size, stride))])


def layer_output(model: tf_keras.Model, name: str):
  """The output of layer `name` (or its "quant_" wrapper) in `model`'s graph.

  Raises:
    ValueError: `model` has no such layer.
  """
  for candidate in (name, f"quant_{name}"):
    try:
      model.get_layer(candidate)
    except ValueError:
      continue
    return _output_in(model, candidate)
  raise ValueError(f"no layer {name!r}")


def _quantized_name(model: tf_keras.Model, name: str) -> str:
  """The name layer `name` got in `model` (tfmot prefixes wrapped ones)."""
  for candidate in (name, f"quant_{name}"):
    try:
      model.get_layer(candidate)
      return candidate
    except ValueError:
      continue
  raise DetectorError(f"layer {name!r} vanished while quantizing the "
                      "detector; this is a kqreg bug, please report it.")


def _output_in(model: tf_keras.Model, name: str):
  """The output of layer `name` in `model`'s own graph.

  Layers tfmot does not wrap are shared with the float detector, where they
  were called first, so `layer.output` would point into the float graph.
  """
  nodes = _tfmot.nodes_in_graph(model, model.get_layer(name))
  if nodes:
    return nodes[0].outputs
  raise DetectorError(f"layer {name!r} is not in {model.name!r}; this is a "
                      "kqreg bug, please report it.")


def _in_head_tail(layer, input_layers) -> bool:
  """True for the head's concats of box and class outputs (kept tf ops)."""
  del layer
  return any(l.name.startswith("yolo_v8_head_") for l in input_layers)


def build_detector(num_classes: int, backbone: str = "xs",
                   bits: str = "w4a8", image_size: int = 64, *,
                   fpn_depth: int = 1, per_channel: Optional[bool] = None,
                   confidence_threshold: float = 0.001,
                   iou_threshold: float = 0.6,
                   max_detections: int = 100,
                   class_prior: bool = True,
                   bn_momentum: Optional[float] = SHORT_RUN_BN_MOMENTUM
                   ) -> tf_keras.Model:
  """Builds a YOLOv8 detector whose every Conv2D follows `bits`.

  Args:
    num_classes: object classes (no background class).
    backbone: "xs", "s" or "m" (see `BACKBONES`).
    bits: kqreg bit policy, e.g. "fp", "w8", "w4", "w4a8,first=w8".
    image_size: square input size, a multiple of 32.
    fpn_depth: depth of the FPN's CSP blocks.
    per_channel: weight ranges per output channel (None: kqreg's default,
      per channel for convolutions).
    confidence_threshold, iou_threshold, max_detections: of the NMS used by
      `predict`; 0.001 as in COCO evaluation, so mAP sees the whole
      precision curve.
    class_prior: start the class biases at YOLOv8's object prior
      (`class_prior_bias`) instead of keras-cv's 0; False reproduces
      keras-cv's initialization.
    bn_momentum: momentum of every BatchNormalization
      (`SHORT_RUN_BN_MOMENTUM`, so a run of 100 steps evaluates on
      statistics that caught up); None keeps keras-cv's 0.97.

  Returns:
    A `YOLOV8Detector` (float when `bits` is "fp", else a
    `QuantizedYOLOV8Detector`); `bounding_box_format` is "xyxy" pixels.
    Its `backbone` attribute is a Functional view onto the (quantized)
    backbone layers with `pyramid_level_inputs` naming them.
    Building one has TensorFlow trace keras-cv's detection code without
    autograph from then on (`kqreg.detection.autograph`).

  Raises:
    DetectorError: bad size, image size or class count.
    PolicyError: malformed policy.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
      or num_classes < 1:
    raise DetectorError(f"num_classes={num_classes!r}: pass a positive "
                        "integer (the dataset's number of classes).")
  if bn_momentum is not None and not 0.0 <= bn_momentum < 1.0:
    raise DetectorError(f"bn_momentum={bn_momentum!r}: pass a value in "
                        "[0, 1), e.g. 0.9, or None for keras-cv's 0.97.")
  build_args = dict(num_classes=num_classes, backbone=backbone,
                    bits=str(bits), image_size=image_size,
                    fpn_depth=fpn_depth, per_channel=per_channel,
                    confidence_threshold=confidence_threshold,
                    iou_threshold=iou_threshold,
                    max_detections=max_detections, class_prior=class_prior,
                    bn_momentum=bn_momentum)
  policy = policy_lib.BitPolicy.parse(bits)
  trace_keras_cv_as_written()
  float_backbone = build_backbone(backbone, image_size)
  decoder = keras_cv.layers.NonMaxSuppression(
      bounding_box_format="xyxy", from_logits=False,
      confidence_threshold=confidence_threshold, iou_threshold=iou_threshold,
      max_detections=max_detections)
  detector = keras_cv.models.YOLOV8Detector(
      num_classes=num_classes, bounding_box_format="xyxy",
      backbone=float_backbone, fpn_depth=fpn_depth,
      prediction_decoder=decoder)
  if bn_momentum is not None:
    # In each layer's config, which the QAT graph and saved files copy.
    for layer in detector._flatten_layers():  # pylint: disable=protected-access
      if isinstance(layer, tf_keras.layers.BatchNormalization):
        layer.momentum = bn_momentum
  if class_prior:
    # Before quantizing: the QAT graph copies the float weights.
    _init_class_prior(detector, num_classes, image_size)
  if policy.is_float:
    return detector

  head = detector.get_layer("box_outputs")
  # keras-cv's tf-op concats, upsampling and adds as Keras layers, which the
  # policy's activation bits reach (TFLite's int8 kernels need their ranges);
  # the head's box/class concats stay tf ops (see module docstring).
  graph = tf_ops_as_layers(
      tf_keras.Model(detector.inputs, head.input, name="yolo_v8_graph"),
      keep=_in_head_tail)
  with warnings.catch_warnings():
    # keras-cv's CSP blocks split with a tf op; its outputs are slices on the
    # input's grid and need no range, so kqreg's warning does not apply.
    warnings.filterwarnings("ignore", message="kqreg has no quantization")
    qat = quantize(graph, policy, per_channel=per_channel)

  # Rebuild the head's tail float, as keras-cv does (see module docstring).
  outputs = tf_keras.layers.Activation("linear", dtype="float32",
                                       name="box_outputs")(qat.output)
  channels = _yolo.BOX_REGRESSION_CHANNELS
  boxes = tf_keras.layers.Concatenate(axis=1, name="box")(
      [outputs[:, :, :channels]])
  scores = tf_keras.layers.Concatenate(axis=1, name="class")(
      [outputs[:, :, channels:]])

  levels = {level: _quantized_name(
      qat, float_backbone.pyramid_level_inputs[level]) for level in _LEVELS}
  backbone_view = tf_keras.Model(
      qat.inputs, [_output_in(qat, levels[l]) for l in _LEVELS],
      name=f"yolo_v8_{backbone}_backbone")
  backbone_view.pyramid_level_inputs = levels
  return QuantizedYOLOV8Detector(
      qat.inputs, {"boxes": boxes, "classes": scores},
      backbone=backbone_view, num_classes=num_classes,
      bounding_box_format="xyxy", fpn_depth=fpn_depth,
      prediction_decoder=decoder, build_args=build_args,
      name=f"yolo_v8_{backbone}_" + re.sub(r"\W", "_", str(policy)))
