"""Log MAE reconstructions to TensorBoard as an image grid (tag ``reconstructions/val``).

Rows of the grid, one column per probe image: original, masked input (masked patches grey),
reconstruction (predicted masked patches pasted into the visible ones), raw prediction. All rows are
in image space: predictions are un-normalized (with the visible patches' statistics under
``norm_pix_loss``) and the datamodule's mean/std normalization is undone.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_only

from maskrank.callbacks._common import (
    due_after_validation,
    eval_mode,
    observed,
    probe_images,
    sharded_skip,
    tensorboard,
)
from maskrank.models.mae import patchify, unpatchify

VIS_SEED = 0


def reconstruction_rows(
    mae, images: torch.Tensor, mask_ratio: float, strategy: str = "random", seed: int = VIS_SEED
) -> torch.Tensor:
    """The four rows (4, B, C, H, W) in normalized-input space for ``images`` (B, C, H, W)."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    _, pred, mask = mae(images, mask_ratio, strategy, gen)  # pred (B, L, P), mask (B, L)
    pred = mae.unnormalize_prediction(pred, images, mask)
    patches = patchify(images, mae.patch)  # (B, L, P)
    m = mask.unsqueeze(-1)  # (B, L, 1)
    grey = torch.zeros_like(patches)  # 0 in normalized space = the dataset mean colour

    def image(p: torch.Tensor) -> torch.Tensor:
        return unpatchify(p, mae.patch, mae.grid, mae.chans)

    return torch.stack(
        [
            images,
            image(patches * (1 - m) + grey * m),
            image(patches * (1 - m) + pred * m),
            image(pred),
        ]
    )


ROW_LABELS = ("original", "masked", "reconstruction", "prediction")


def reconstruction_figure(rows: torch.Tensor, step: int, ratio: float, cell_inches: float = 1.3):
    """A labelled grid of ``rows`` (4, B, C, H, W) in [0, 1]: one row per stage, one column per
    image, the step and mask ratio in the title; pixels drawn without smoothing, so small images
    stay readable at ``cell_inches`` per image."""
    n_rows, n_cols = rows.shape[:2]
    figure = Figure(
        figsize=(cell_inches * n_cols + 1.2, cell_inches * n_rows + 0.5),
        dpi=100,
        layout="constrained",
    )
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    pictures = rows.permute(0, 1, 3, 4, 2).float().cpu().numpy()  # (4, B, H, W, C)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            image = pictures[r, c]
            ax.imshow(
                image[..., 0] if image.shape[-1] == 1 else image,
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(ROW_LABELS[r], fontsize=9)
    figure.suptitle(f"MAE reconstructions, step {step}, mask ratio {ratio:.2f}", fontsize=10)
    return figure


class ReconstructionLogger(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, log original / masked / reconstructed images.

    The grid (tag ``reconstructions/val``) is a labelled figure: rows original, masked input,
    reconstruction, raw prediction; one column per fixed probe image; the step and mask ratio
    in its title.

    Args:
        every_n_epochs: log after every this many validation epochs.
        num_images: how many fixed probe images (columns) to show.
        mask_ratio: the ratio used for the picture (None: the run's evaluation ratio, the one
            ``val/loss`` uses).
    """

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 8, mask_ratio: float | None = None
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.mask_ratio = mask_ratio
        self._warned: set[str] = set()

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due_after_validation(trainer, self.every_n_epochs):
            return
        if sharded_skip(trainer, type(self).__name__, self._warned):
            return
        logger = tensorboard(trainer)
        task = observed(pl_module, type(self).__name__, self._warned)
        if logger is None or task is None or task.masked_autoencoder is None:
            return
        images = probe_images(
            trainer, pl_module, self.num_images, type(self).__name__, self._warned
        )
        if images is None:
            return
        mae, masking = task.masked_autoencoder, task.masking
        ratio = self.mask_ratio if self.mask_ratio is not None else masking.eval_ratio
        with eval_mode(mae), torch.no_grad():
            rows = reconstruction_rows(mae, images, ratio, masking.strategy)
        dm = trainer.datamodule
        mean = torch.tensor(dm.mean, device=rows.device).view(1, 1, -1, 1, 1)
        std = torch.tensor(dm.std, device=rows.device).view(1, 1, -1, 1, 1)
        rows = (rows.float() * std + mean).clamp(0, 1)  # (4, B, C, H, W) in [0, 1]
        figure = reconstruction_figure(rows, trainer.global_step, ratio)
        logger.experiment.add_figure("reconstructions/val", figure, trainer.global_step)
