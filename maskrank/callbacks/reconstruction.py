"""Log MAE reconstructions to TensorBoard as an image grid (tag ``reconstructions/val``).

Rows of the grid, one column per probe image: original, masked input (masked patches grey),
reconstruction (predicted masked patches pasted into the visible ones), raw prediction. All rows are
in image space: predictions are un-normalized (with the visible patches' statistics under
``norm_pix_loss``) and the datamodule's mean/std normalization is undone.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid

from maskrank.callbacks._common import sharded_skip
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


class ReconstructionLogger(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, log original / masked / reconstructed images.

    Args:
        every_n_epochs: log after every this many validation epochs.
        num_images: how many fixed probe images (columns) to show.
        mask_ratio: the ratio used for the picture (None: the model's ``mask_ratio``).
    """

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 8, mask_ratio: float | None = None
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.mask_ratio = mask_ratio
        self._images: torch.Tensor | None = None
        self._warned: set[str] = set()

    def _probe(self, trainer: pl.Trainer) -> torch.Tensor | None:
        if self._images is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "probe_batch"):
                rank_zero_warn("ReconstructionLogger needs a maskrank datamodule; skipped.")
                return None
            images, _ = dm.probe_batch(self.num_images)
            self._images = images
        return self._images

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if sharded_skip(trainer, type(self).__name__, self._warned):
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        mae = getattr(pl_module, "mae", None)
        raw = self._probe(trainer)
        if logger is None or mae is None or raw is None:
            return
        dm = trainer.datamodule
        images = dm.preprocess(raw.to(pl_module.device), train=False)
        ratio = self.mask_ratio if self.mask_ratio is not None else pl_module.hparams.mask_ratio
        was_training = mae.training
        mae.eval()
        with torch.no_grad():
            rows = reconstruction_rows(
                mae, images, ratio, pl_module.hparams.get("masking", "random")
            )
        mae.train(was_training)
        mean = torch.tensor(dm.mean, device=rows.device).view(1, 1, -1, 1, 1)
        std = torch.tensor(dm.std, device=rows.device).view(1, 1, -1, 1, 1)
        rows = (rows * std + mean).clamp(0, 1)  # (4, B, C, H, W) in [0, 1]
        grid = make_grid(rows.flatten(0, 1).float().cpu(), nrow=rows.shape[1], padding=1)
        logger.experiment.add_image("reconstructions/val", grid, trainer.global_step)
