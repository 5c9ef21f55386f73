"""The sensitivity heat map's symlog colour bar: no two tick labels overlap."""

import itertools

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kqreg.mixed_precision import sensitivity_report as report  # noqa: E402


def _loss_grid(peak, layers, smallest, seed=0):
  """Loss increases falling a decade per bit width, some of them negative."""
  rng = np.random.default_rng(seed)
  values = peak * 10.0 ** (-1.1 * np.arange(5)[None, :]
                           - 0.3 * np.arange(layers)[:, None])
  values *= np.where(rng.random(values.shape) < 0.3, -1.0, 1.0)
  values[0, -1] = smallest
  return values


@pytest.mark.parametrize("peak,layers,smallest", [
    (0.3, 7, 1e-7),     # the MNIST CNN's figure: 1e-4 sat next to 0
    (2e-3, 7, 1.5e-3),  # small losses, linear part up to 1.5e-3
    (4e-3, 2, 2.5e-3),  # no decade between the linear part and the peak
    (1.0, 30, 1e-9),    # many layers, three decades a side
])
def test_symlog_colour_bar_labels_do_not_overlap(peak, layers, smallest):
  values = _loss_grid(peak, layers, smallest)
  names = [f"layer{i}" for i in range(layers)]
  fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.25 * layers + 1.5)))
  try:
    report._heat_map(ax, fig, names, [2, 3, 4, 6, 8], values, "loss",
                     "loss(b bits) − loss(float)\n(symlog scale)", True)
    fig.canvas.draw()
    bar = fig.axes[-1]
    labels = [t for t in bar.get_yticklabels() if t.get_text()
              and t.get_visible()]
    ticks = bar.get_yticks()
    assert 0.0 in ticks and len(labels) >= 3
    lo, hi = bar.get_ylim()
    assert all(lo <= t <= hi for t in ticks)
    boxes = [t.get_window_extent() for t in labels]
    for a, b in itertools.combinations(boxes, 2):
      assert not a.overlaps(b), [t.get_text() for t in labels]
  finally:
    plt.close(fig)


def test_symlog_ticks_are_zero_and_decades_outside_the_linear_part():
  assert report._symlog_ticks(3e-4, 0.3) == pytest.approx(
      [-0.1, -0.01, -1e-3, 0.0, 1e-3, 0.01, 0.1])
  assert report._symlog_ticks(2e-3, 5e-3) == pytest.approx([-5e-3, 0, 5e-3])
  assert [report._tick_label(v) for v in (-0.01, 0.0, 1.0, 5e-3)] == [
      "$-10^{-2}$", "0", "$10^{0}$", "5.0e-03"]
