"""COCO-style mean average precision in NumPy.

pycocotools (which keras-cv's BoxCOCOMetrics needs) is not installed here, so
this is a small re-implementation of COCO's bbox evaluation for the "all
areas, up to 100 detections" setting:

* per class and IoU threshold, detections of all images are sorted by score
  and each is matched greedily to the unmatched ground-truth box of its image
  with the highest IoU >= threshold (true positive) or counts as a false
  positive;
* precision is made monotone (the envelope) and sampled at 101 recall points
  0, 0.01, ..., 1 (0 where the recall is never reached); AP is their mean;
* classes without ground truth are left out of the mean (as COCO does).

mAP@0.5 uses IoU 0.5; mAP@[0.5:0.95] averages over 0.50, 0.55, ..., 0.95.
Boxes are xyxy in any consistent unit; crowd regions are not modelled.
`evaluate_map` runs a detector (or its TFLite file) over a dataset and
scores its keras-cv NMS output this way.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["COCO_IOU_THRESHOLDS", "iou_matrix", "average_precision",
           "mean_average_precision", "evaluate_map"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(len(a), len(b)) IoU of xyxy boxes."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0.0, None), axis=-1)
  area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
  area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def average_precision(tp: np.ndarray, scores: np.ndarray,
                      num_gt: int) -> float:
  """101-point interpolated AP from per-detection TP flags and scores."""
  if num_gt == 0:
    return float("nan")
  if tp.size == 0:
    return 0.0
  order = np.argsort(-scores, kind="mergesort")  # stable, as COCO
  tp = tp[order].astype(np.float64)
  tp_cum, fp_cum = np.cumsum(tp), np.cumsum(1.0 - tp)
  recall = tp_cum / num_gt
  precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
  # Envelope: the best precision at this recall or any higher one.
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  index = np.searchsorted(recall, _RECALL_POINTS, side="left")
  sampled = np.where(index < len(precision),
                     precision[np.minimum(index, len(precision) - 1)], 0.0)
  return float(np.mean(sampled))


def _match(gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes,
           cls: int, thresholds: np.ndarray):
  """TP flags (len(thresholds), n_det), scores (n_det,), number of GT."""
  tps, scores, num_gt = [], [], 0
  for gb, gc, pb, ps, pc in zip(gt_boxes, gt_classes, pred_boxes, pred_scores,
                                pred_classes):
    g = np.asarray(gb, np.float64).reshape(-1, 4)[np.asarray(gc) == cls]
    keep = np.asarray(pc) == cls
    p = np.asarray(pb, np.float64).reshape(-1, 4)[keep]
    s = np.asarray(ps, np.float64).reshape(-1)[keep]
    order = np.argsort(-s, kind="mergesort")[:MAX_DETECTIONS]
    p, s = p[order], s[order]
    num_gt += len(g)
    flags = np.zeros((len(thresholds), len(p)), bool)
    if len(g) and len(p):
      ious = iou_matrix(p, g)
      for t, threshold in enumerate(thresholds):
        taken = np.zeros(len(g), bool)
        for d in range(len(p)):
          candidates = np.where(taken, -1.0, ious[d])
          best = int(np.argmax(candidates))
          if candidates[best] >= threshold:
            taken[best] = True
            flags[t, d] = True
    tps.append(flags)
    scores.append(s)
  return (np.concatenate(tps, axis=1) if tps else np.zeros((len(thresholds), 0),
                                                           bool),
          np.concatenate(scores) if scores else np.zeros(0), num_gt)


def mean_average_precision(gt_boxes: Sequence[np.ndarray],
                           gt_classes: Sequence[np.ndarray],
                           pred_boxes: Sequence[np.ndarray],
                           pred_scores: Sequence[np.ndarray],
                           pred_classes: Sequence[np.ndarray],
                           num_classes: int) -> Dict[str, float]:
  """COCO-style mAP over a list of images.

  Args:
    gt_boxes: per image, (n, 4) xyxy ground-truth boxes.
    gt_classes: per image, (n,) integer classes.
    pred_boxes: per image, (m, 4) xyxy detections.
    pred_scores: per image, (m,) confidences.
    pred_classes: per image, (m,) integer classes.
    num_classes: classes 0 .. num_classes - 1 are evaluated.

  Returns:
    {"map50": mAP@0.5, "map": mAP@[0.5:0.95], "classes_with_gt": k,
    "ap50_per_class": [AP@0.5 of class 0, 1, ...], "ap_per_class": [...]};
    the mAPs are NaN when no image holds ground truth, a class's AP is NaN
    when it has none (and is left out of the means).

  Raises:
    ValueError: the per-image lists differ in length.
  """
  lists = (gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes)
  if len({len(x) for x in lists}) != 1:
    raise ValueError(
        "gt_boxes, gt_classes, pred_boxes, pred_scores and pred_classes must "
        f"hold one entry per image; got lengths {[len(x) for x in lists]}.")
  ap = np.full((num_classes, len(COCO_IOU_THRESHOLDS)), np.nan)
  for cls in range(num_classes):
    tp, scores, num_gt = _match(*lists, cls, COCO_IOU_THRESHOLDS)
    for t in range(len(COCO_IOU_THRESHOLDS)):
      ap[cls, t] = average_precision(tp[t], scores, num_gt)
  has_gt = ~np.isnan(ap[:, 0])
  per_class = {"ap50_per_class": [float(v) for v in ap[:, 0]],
               "ap_per_class": [float(v) for v in np.mean(ap, axis=1)]}
  if not has_gt.any():
    return {"map50": float("nan"), "map": float("nan"), "classes_with_gt": 0,
            **per_class}
  return {"map50": float(np.mean(ap[has_gt, 0])),
          "map": float(np.mean(ap[has_gt])),
          "classes_with_gt": int(has_gt.sum()), **per_class}


def _unpad(boxes: np.ndarray, classes: np.ndarray):
  keep = classes >= 0
  return boxes[keep], classes[keep].astype(np.int64)


def _predict_fn(model):
  """Forward pass + keras-cv decoding and NMS, traced once per model.

  `predict_on_batch` cannot be used: keras-cv's `predict_step` reads the
  image shape from the tuple Keras wraps the batch in. The pass runs in the
  model's strategy as one replica's step: read across replicas, every
  batch-norm statistic of a multi-worker model would be all-reduced.
  """
  fn = getattr(model, "_kqreg_predict", None)
  if fn is None:
    strategy = model.distribute_strategy

    def replica_step(images):
      return model.decode_predictions(model(images, training=False), images)

    @tf.function(reduce_retracing=True)
    def predict(images):
      outputs = strategy.run(replica_step, args=(images,))
      return tf.nest.map_structure(
          lambda v: strategy.experimental_local_results(v)[0], outputs)

    fn = model._kqreg_predict = predict  # pylint: disable=protected-access
  return fn


def evaluate_map(model, ds, num_classes: int,
                 predict: Optional[Callable] = None) -> Dict[str, float]:
  """COCO-style mAP of a detector's NMS output on a `pipeline` dataset.

  Args:
    model: a keras-cv detector (e.g. from `build_detector`).
    ds: batches of `{"images", "bounding_boxes"}` (`data.pipeline`).
    num_classes: classes of the dataset.
    predict: images -> keras-cv's decoded dict (`boxes`, `confidence`,
      `classes`, `num_detections`); default `model`'s forward pass, box
      decoding and NMS. The TFLite check passes the file's outputs through
      the same decoding.

  Returns:
    `mean_average_precision`'s dict: mAP@0.5, mAP@[0.5:0.95] and per class.
  """
  gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes = ([] for _ in
                                                                 range(5))
  predict = predict or _predict_fn(model)
  for batch in ds:
    preds = {k: v.numpy() for k, v in predict(batch["images"]).items()}
    boxes = batch["bounding_boxes"]["boxes"].numpy()
    classes = batch["bounding_boxes"]["classes"].numpy()
    for i in range(boxes.shape[0]):
      g, c = _unpad(boxes[i], classes[i])
      n = int(preds["num_detections"][i])
      gt_boxes.append(g)
      gt_classes.append(c)
      pred_boxes.append(np.asarray(preds["boxes"][i][:n]))
      pred_scores.append(np.asarray(preds["confidence"][i][:n]))
      pred_classes.append(np.asarray(preds["classes"][i][:n]).astype(np.int64))
  return mean_average_precision(
      gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes, num_classes)
