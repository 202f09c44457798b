"""MAE pretraining as a thin LightningModule (SCIENCE.md §5).

Logged tags: ``train/loss``, ``train/mask_ratio``, ``val/loss``, ``test/loss`` (reconstruction loss
on masked patches; validation and test mask with a fixed-seed generator so epochs are comparable);
with ``online_probe`` also ``train/online_probe_loss`` and ``eval/online_linear_acc``, with
``uniformity_weight > 0`` also ``train/uniformity`` (SCIENCE.md §9,
:mod:`maskrank.tasks.online_probe`). ``predict`` returns each image's CLS and mean-patch features
(and, when asked, its reconstruction), which
:class:`~maskrank.callbacks.predictions.PredictionWriter` writes to the run directory.
The learning rate follows MAE's rule ``lr = base_lr * effective_batch / 256`` unless ``lr`` is set.
"""

from __future__ import annotations

import random
from dataclasses import asdict

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from maskrank.data import is_image_data
from maskrank.errors import ConfigError, check_interval
from maskrank.metrics import uniformity_loss
from maskrank.models.dropout import DropoutSpec
from maskrank.models.dropout_apply import install_dropout
from maskrank.models.features import EncoderFeatures
from maskrank.models.mae import (
    AttentionImpl,
    MaskedAutoencoder,
    masked_mse,
    patchify,
    unpatchify,
)
from maskrank.models.masking import MaskingSpec, Strategy
from maskrank.models.vit import ViTSpec, as_spec
from maskrank.optim import (
    OptimizerSpec,
    as_optimizer_spec,
    build_optimizer,
    plan_optimizer,
    warmup_cosine_schedule,
)
from maskrank.tasks.compiling import check_compile, compile_blocks
from maskrank.tasks.online_probe import (
    Feature,
    OnlineLinearProbe,
    ProbeInput,
    latent_feature,
    unmasked_feature,
)
from maskrank.tasks.sharding import shard_for_strategy, shard_model

VAL_MASK_SEED = 1234
# What the steps call on the MAE instead of forward (FSDP2 gathers the weights there too).
MAE_FORWARD_METHODS = ("training_loss_and_latent", "forward_with_latent", "encode")


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Images per optimizer step over all processes: batch x accumulation x world size."""
    datamodule = trainer.datamodule
    batch = datamodule.batch_size if is_image_data(datamodule) else None
    if batch is None:
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # what Lightning does to estimate stepping batches
        batch = getattr(trainer.train_dataloader, "batch_size", None)
    if batch is None:
        raise ConfigError("cannot infer the batch size to scale base_lr: set {field}", "lr")
    return int(batch) * trainer.accumulate_grad_batches * trainer.world_size


class MAEPretraining(pl.LightningModule):
    """Masked-autoencoder pretraining of a timm ViT encoder.

    Args:
        vit: encoder architecture (preset and overrides; see ``maskrank.models.ViTSpec``).
        img_size: image side in pixels; the CLI links it from the datamodule.
        in_chans: image channels; the CLI links it from the datamodule.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        mask_ratio: fraction of patches masked (the start value when ``mask_ratio_end`` is set).
        mask_ratio_range: if set, a ratio drawn uniformly from [low, high) for every batch.
        mask_ratio_end: if set, the ratio moves linearly from ``mask_ratio`` to this over training.
        masking: ``random`` (MAE), ``block`` (BEiT-style rectangles) or ``grid`` (one fixed
            ratio with ``1 / (1 - mask_ratio)`` a square). Every ratio a run uses (fixed, the
            ends of the range or schedule) must mask at least one patch after rounding.
        norm_pix_loss: regress per-patch normalized pixels.
        fixed_pos_embed: fixed 2-D sin-cos encoder position embedding (frozen), as in MAE.
        base_lr: learning rate per 256 images; ``lr = base_lr * effective_batch / 256``.
        lr: absolute learning rate; overrides ``base_lr`` when set.
        weight_decay: AdamW weight decay on tensors with ndim >= 2.
        betas: AdamW betas (MAE uses 0.9, 0.95).
        warmup_fraction: fraction of optimizer steps in linear warmup.
        min_lr_ratio: final learning rate of the cosine decay as a fraction of the peak.
        fused_adamw: torch's fused AdamW kernel (None: fused on CPU and CUDA).
        attention: ``auto`` (plain matmul attention on CPU for short sequences, SDPA otherwise),
            ``sdpa`` or ``matmul``; the same function either way.
        compile: ``torch.compile`` every transformer block in place
            (:mod:`maskrank.tasks.compiling`); the first steps are slow while it compiles, and
            a device it cannot compile for is refused before training.
        dropout: dropout variant(s) installed in the encoder and/or decoder blocks
            (``maskrank.models.dropout.DropoutSpec``: ``variant`` feature/attention/drop_path/
            dropconnect, ``rate``, ``where``, ``blocks``, ``targets``, ``mode``); a list
            combines variants. ``mode: explicit``
            (feature dropout on ``mlp.drop1`` only) switches that dropout off and adds its
            closed-form penalty ``λ Σ_j ‖u_j‖² mean(a_j²)`` to the training objective instead
            (SCIENCE.md §4), logged as ``train/dropout_penalty`` (``train/loss`` stays the
            data loss).
        optimizer: ``adamw`` (default) or ``galore_adamw`` with ``rank``, ``update_proj_gap``,
            ``scale``, ``proj_type``, ``targets`` (``maskrank.optim.OptimizerSpec``; SCIENCE.md
            §8); every non-target parameter stays on AdamW.
        num_classes: classes of the datamodule's labels; the CLI links it from the data (only
            the online probe uses labels).
        online_probe: train a linear probe (running whitening + linear) on the
            detached ``probe_feature`` with the training batch's labels, and log its accuracy on
            the validation batches as ``eval/online_linear_acc``. Its gradients never reach the
            encoder.
        probe_input: what the probe reads. ``visible`` (default): the training step's own masked
            pass, the CLS or mean of the visible tokens (no extra pass; validation uses the fixed
            masks of ``val/loss``); ``unmasked``: an extra gradient-free pass of the encoder in
            eval mode over every token (the features an offline probe reads) on every
            ``probe_every_n_steps``-th training batch and on every validation batch. On
            CIFAR-10 both tracked an offline linear probe; ``unmasked`` costs about one encoder
            forward of the full image per probed step (docs/guides/online_eval.md).
        probe_every_n_steps: with ``probe_input: unmasked``, train the probe on every N-th batch.
        probe_feature: ``cls`` (the CLS token) or ``mean`` (mean of the patch tokens it reads).
        probe_lr: the probe's learning rate (its own AdamW parameter group, no weight decay,
            on the run's warmup-cosine schedule); a linear head needs a higher rate than the
            encoder (docs/guides/online_eval.md).
        uniformity_weight: weight of the uniformity loss ``log mean exp(-2 ‖z_i - z_j‖²)`` of the
            L2-normalized ``uniformity_feature`` over the batch (U-MAE), added to the training
            objective and logged as ``train/uniformity``; 0 turns it off.
        uniformity_feature: ``cls`` or ``mean``, as ``probe_feature``.
    """

    def __init__(
        self,
        vit: ViTSpec | None = None,
        img_size: int = 32,
        in_chans: int = 3,
        decoder_dim: int = 128,
        decoder_depth: int = 4,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        mask_ratio_range: tuple[float, float] | None = None,
        mask_ratio_end: float | None = None,
        masking: Strategy = "random",
        norm_pix_loss: bool = True,
        fixed_pos_embed: bool = True,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
        fused_adamw: bool | None = None,
        attention: AttentionImpl = "auto",
        compile: bool = False,
        dropout: DropoutSpec | list[DropoutSpec] | None = None,
        optimizer: OptimizerSpec | None = None,
        num_classes: int | None = None,
        online_probe: bool = False,
        probe_input: ProbeInput = "visible",
        probe_every_n_steps: int = 1,
        probe_feature: Feature = "cls",
        probe_lr: float = 1e-2,
        uniformity_weight: float = 0.0,
        uniformity_feature: Feature = "cls",
    ) -> None:
        super().__init__()
        check_interval(uniformity_weight, "uniformity_weight", 0.0)
        if lr is None:  # then lr = base_lr x batch / 256
            check_interval(base_lr, "base_lr", 0.0, low_open=True)
        if online_probe and (num_classes is None or num_classes < 2):
            raise ConfigError(
                "{field} needs a datamodule with class labels (num_classes >= 2, linked from "
                f"data.num_classes), got num_classes={num_classes}",
                "online_probe",
            )
        if online_probe:
            check_interval(probe_lr, "probe_lr", 0.0, low_open=True)
            if probe_input not in ("visible", "unmasked"):
                raise ConfigError(
                    f"{{field}} = {probe_input!r} must be 'visible' or 'unmasked'", "probe_input"
                )
            if probe_every_n_steps < 1:
                raise ConfigError(
                    f"{{field}} must be >= 1, got {probe_every_n_steps}", "probe_every_n_steps"
                )
        spec = as_spec(vit)
        if spec.global_pool != "token" or spec.fc_norm:
            # timm then makes the encoder's final norm an identity, and MAE's encoder ends in it
            raise ConfigError(
                f"{{field}} = {spec.global_pool!r} with fc_norm {spec.fc_norm!r} is a fine-tuning "
                "head: MAE pretraining needs global_pool: token and no fc_norm (the encoder's "
                "final LayerNorm); set them in the fine-tune config instead",
                "vit.global_pool",
            )
        self.masking = MaskingSpec(mask_ratio, mask_ratio_range, mask_ratio_end, masking)
        optimizer_spec = as_optimizer_spec(optimizer)
        self.save_hyperparameters(ignore=["vit", "dropout", "optimizer"])
        self.hparams["optimizer"] = asdict(optimizer_spec)
        self.hparams["vit"] = asdict(spec)
        encoder = spec.build(img_size=img_size, in_chans=in_chans, num_classes=0)
        self.masking.check_patches(encoder.patch_embed.num_patches)  # an empty loss fails here
        self.mae = MaskedAutoencoder(
            encoder,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            norm_pix_loss=norm_pix_loss,
            fixed_pos_embed=fixed_pos_embed,
            attention=attention,
        )
        # before compile, so that it sees the new modules; explicit_dropout is None without a
        # `mode: explicit` spec, else its `.rates` map the hooked fc2 names to p
        dropout_specs, self.explicit_dropout = install_dropout(self.mae, dropout)
        self.hparams["dropout"] = [asdict(s) for s in dropout_specs]
        # Decided by name now, before a strategy wraps or shards the MAE (flat 1-D shards under
        # FSDP1 would otherwise all look like biases); a bad GaLore rank or target fails here.
        self.optimizer_plan = plan_optimizer(self.mae, optimizer_spec)
        if compile:
            compile_blocks([*encoder.blocks, *self.mae.decoder_blocks])
        self.online_probe = (
            OnlineLinearProbe(encoder.embed_dim, num_classes)
            if online_probe and num_classes is not None
            else None
        )
        self._ratio_rng = random.Random(0)
        self._val_generator: torch.Generator | None = None
        # set by PredictionWriter (--predictions.reconstructions); not a hyperparameter
        self.predict_reconstructions = False

    @property
    def encoder(self):
        """The timm ViT being pretrained."""
        return self.mae.encoder

    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """Unmasked encoder features for probes and rank metrics (call in eval mode)."""
        return self.mae.encode(images)

    @property
    def masked_autoencoder(self) -> MaskedAutoencoder:
        """The MAE (encoder + decoder) the monitors and the reconstruction logger run."""
        return self.mae

    def explicit_dropout_rates(self) -> dict[nn.Module, float]:
        """``fc2`` module -> ``p`` of every explicit dropout penalty (empty without one)."""
        return {} if self.explicit_dropout is None else self.explicit_dropout.fc2_rates

    def current_mask_ratio(self) -> float:
        total = max(1, self.trainer.estimated_stepping_batches) if self._trainer else 1
        return self.masking.ratio_at(self.global_step / total, self._ratio_rng)

    def setup(self, stage: str) -> None:
        """With ``compile``, check that torch.compile works on the training device first."""
        if self.hparams.compile and self._trainer is not None:
            check_compile(self.trainer.strategy.root_device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        ratio = self.current_mask_ratio()
        if self.explicit_dropout is None:
            loss, latent = self.mae.training_loss_and_latent(images, ratio, self.masking.strategy)
        else:  # its fc2 hooks average over every token the full decoder sees
            self.explicit_dropout.reset()
            loss, _, _, latent = self.mae.forward_with_latent(images, ratio, self.masking.strategy)
        self.log("train/loss", loss, prog_bar=True)
        loss = loss + self._online_terms(latent, batch, batch_idx)
        if self.explicit_dropout is not None:
            penalty = self.explicit_dropout.pop()  # summed over the hooked fc2s
            self.log("train/dropout_penalty", penalty)
            loss = loss + penalty
        if self.masking.varies:
            self.log("train/mask_ratio", ratio)
        return loss

    def _online_terms(self, latent: torch.Tensor, batch, batch_idx: int) -> torch.Tensor:
        """Uniformity term (of the visible-token latent (B, 1 + K, D)) and probe loss, 0-d."""
        hp = self.hparams
        extra = latent.new_zeros((), dtype=torch.float32)
        if hp.uniformity_weight > 0:
            uniformity = uniformity_loss(latent_feature(latent, hp.uniformity_feature).float())
            self.log("train/uniformity", uniformity)
            extra = extra + hp.uniformity_weight * uniformity
        if self.online_probe is None:
            return extra
        if hp.probe_input == "unmasked" and batch_idx % hp.probe_every_n_steps:
            return extra
        # detached inside the probe: its loss only trains the probe
        logits = self.online_probe(self._probe_features(batch[0], latent))
        probe_loss = F.cross_entropy(logits.float(), batch[1])
        self.log("train/online_probe_loss", probe_loss)
        return extra + probe_loss

    def _probe_features(self, images: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """What the online probe reads (B, D): from the masked pass's latent, or a pass of its own."""
        hp = self.hparams
        if hp.probe_input == "visible":
            return latent_feature(latent, hp.probe_feature)
        return unmasked_feature(self.mae.encode, self.mae, images, hp.probe_feature)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The per-batch mask-ratio draws (mask_ratio_range) come from their own generator; a
        # resumed fit continues its sequence instead of restarting it (plain ints: weights_only).
        version, internal, gauss = self._ratio_rng.getstate()
        checkpoint["mask_ratio_rng"] = [version, list(internal), gauss]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mask_ratio_rng")
        if state is not None:
            version, internal, gauss = state
            self._ratio_rng.setstate((version, tuple(internal), gauss))

    def on_validation_epoch_start(self) -> None:
        # Same masks every validation epoch, so val/loss curves compare like with like.
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_MASK_SEED)

    def validation_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        ratio = self.masking.eval_ratio
        loss, pred, mask, latent = self.mae.forward_with_latent(
            images, ratio, self.masking.strategy, self._val_generator
        )
        self.log("val/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        # The loss of predicting zeros on the same masked patches: the level val/loss is read
        # against (with norm_pix_loss each target patch has mean 0, variance 1: about (P-1)/P).
        trivial = masked_mse(torch.zeros_like(pred), self.mae.target(images), mask)
        self.log("val/loss_trivial", trivial, batch_size=images.shape[0], sync_dist=True)
        if self.online_probe is not None:
            logits = self.online_probe(self._probe_features(images, latent))
            accuracy = (logits.argmax(dim=1) == batch[1]).float().mean()
            self.log("eval/online_linear_acc", accuracy, batch_size=images.shape[0], sync_dist=True)

    # ------------------------------------------------------------ test and predict
    def on_test_epoch_start(self) -> None:
        # the validation masks, so test/loss and val/loss of one checkpoint are comparable
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_MASK_SEED)

    def test_step(self, batch, batch_idx: int) -> None:
        """Masked reconstruction loss on the test split (``test/loss``), fixed masks."""
        images = batch[0]
        ratio = self.masking.eval_ratio
        loss, _, _ = self.mae(images, ratio, self.masking.strategy, self._val_generator)
        self.log("test/loss", loss, batch_size=images.shape[0], sync_dist=True)

    def on_predict_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_MASK_SEED)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """What a pretrained encoder gives a user, per image.

        Returns ``cls`` and ``patch_mean`` (B, D): the unmasked encoder's final normalized CLS
        token and mean patch token; ``label`` (B,) when the data is labelled; with
        ``predict_reconstructions``, ``recon`` (B, C, H, W): the image rebuilt from its visible
        patches plus the decoder's prediction of the masked ones (in the model's normalized
        input space, masks as in validation) and ``mask`` (B, L), 1 on masked patches.
        """
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        features = self.mae.encode(images)
        out = {"cls": features.cls, "patch_mean": features.patch_mean}
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            out["label"] = batch[1]
        if self.predict_reconstructions:
            mae, ratio = self.mae, self.masking.eval_ratio
            _, pred, mask = mae(images, ratio, self.masking.strategy, self._val_generator)
            pred = mae.unnormalize_prediction(pred, images, mask)  # (B, L, P) input space
            patches = patchify(images, mae.patch)
            merged = torch.where(mask.bool().unsqueeze(-1), pred, patches)
            out["recon"] = unpatchify(merged, mae.patch, mae.grid, mae.chans)
            out["mask"] = mask
        return out

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: FSDP2 over the encoder blocks and the MAE
        (:mod:`maskrank.tasks.sharding`); a no-op under every other strategy."""
        shard_for_strategy(self._trainer, self.shard)

    def shard(self, mesh: DeviceMesh) -> None:
        """FSDP2 units: every encoder block, the MAE around them, the online probe."""
        probe = [self.online_probe] if self.online_probe is not None else []
        shard_model(self.mae.encoder.blocks, self.mae, mesh, MAE_FORWARD_METHODS, probe)

    def configure_optimizers(self):
        hp = self.hparams
        total_steps = self.trainer.estimated_stepping_batches  # also loads the train dataloader
        lr = hp.lr if hp.lr is not None else hp.base_lr * effective_batch_size(self.trainer) / 256
        spec = as_optimizer_spec(hp.get("optimizer"))
        optimizer = build_optimizer(
            self.mae,
            spec,
            lr,
            hp.weight_decay,
            tuple(hp.betas),
            hp.fused_adamw,
            plan=self.optimizer_plan,
            strategy=type(self.trainer.strategy).__name__,
        )
        if self.online_probe is not None:  # its own lr, no weight decay; same schedule shape
            params = list(self.online_probe.parameters())
            optimizer.add_param_group({"params": params, "lr": hp.probe_lr, "weight_decay": 0.0})
        schedule = warmup_cosine_schedule(
            optimizer, total_steps, hp.warmup_fraction, hp.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
