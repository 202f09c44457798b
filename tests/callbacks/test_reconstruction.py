"""ReconstructionLogger's picture: large enough to read, rows labelled, the step in the title."""

from __future__ import annotations

import torch

from maskrank.callbacks.reconstruction import ROW_LABELS, reconstruction_figure


def test_the_reconstruction_figure_is_labelled_and_readable():
    rows = torch.rand(4, 3, 3, 32, 32)  # (rows, images, C, H, W) in [0, 1]
    figure = reconstruction_figure(rows, step=120, ratio=0.75)
    width, height = figure.get_size_inches() * figure.dpi
    assert width >= 400 and height >= 400  # the old grid was 265 x 133 px
    axes = figure.axes
    assert len(axes) == 4 * 3
    assert [axes[r * 3].get_ylabel() for r in range(4)] == list(ROW_LABELS)
    assert ROW_LABELS == ("original", "masked", "reconstruction", "prediction")
    assert "step 120" in figure._suptitle.get_text() and "0.75" in figure._suptitle.get_text()
