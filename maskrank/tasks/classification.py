"""Image classification with a timm ViT: from scratch, or adapting a pretrained encoder.

``adaptation`` picks how a pretrained encoder (``encoder_ckpt`` from an MAE stage, or timm's
``pretrained`` weights) is adapted: ``finetune`` (all weights, optional layer-wise lr decay),
``linear_probe`` (frozen encoder, BatchNorm + linear head) or ``lora`` (low-rank adapters);
see :mod:`maskrank.tasks.adaptation` (SCIENCE.md §6).

Logged tags: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
Batches arrive already normalized (and augmented in training) by the datamodule's
``on_after_batch_transfer``, so this module only sees float tensors of shape (B, C, H, W).

MAE's fine-tuning recipe (``main_finetune.py``) is a set of switches whose defaults here are the
plain ones, each set to MAE's value in ``configs/adapt/finetune_cifar10.yaml``:
``vit.global_pool: avg`` with ``fc_norm`` (mean of the patch tokens, then a fresh LayerNorm),
``vit.drop_path_rate`` 0.1, ``label_smoothing`` 0.1, ``mixup`` (mixup 0.8 / CutMix 1.0 on the
device, :mod:`maskrank.tasks.mixup`), ``layer_decay`` 0.75, ``warmup_fraction`` (MAE: 5 of 100
epochs), ``head_init_std`` 2e-5 and the rule ``lr = base_lr * effective_batch / 256``
(``lr: null``). RandAugment runs in the data layer's loader workers
(``ImageFolderDataModule(in_memory=False, auto_augment=...)``). Weight decay always skips the
ViT's ``no_weight_decay()`` names (``pos_embed``, ``cls_token``), in every adaptation
(:mod:`maskrank.optim.plan`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torchmetrics.classification import MulticlassAccuracy

from maskrank.data import is_image_data
from maskrank.data.describe import data_config
from maskrank.errors import ConfigError, check_interval, flag_of
from maskrank.io.checkpoints import load_encoder, resolve_checkpoint
from maskrank.models.dropout import DropoutSpec
from maskrank.models.dropout_apply import install_dropout
from maskrank.models.features import EncoderFeatures, encoder_features
from maskrank.models.lora import LoRASpec, as_lora_spec
from maskrank.models.lora.deep import compress_deep_lora, factor_parameters
from maskrank.models.lora.init import gradient_init
from maskrank.models.vit import ViTSpec, as_spec
from maskrank.optim import (
    OptimizerSpec,
    as_optimizer_spec,
    build_optimizer,
    plan_optimizer,
    warmup_cosine_schedule,
)
from maskrank.optim.plan import model_no_weight_decay
from maskrank.tasks.adaptation import (
    Adaptation,
    check_adaptation,
    check_dropout_acts,
    init_head,
    setup_adaptation,
)
from maskrank.tasks.compiling import check_compile, compile_blocks
from maskrank.tasks.mixup import BatchMixer, MixupSpec, as_mixup_spec, soft_target_cross_entropy
from maskrank.tasks.pretrain import effective_batch_size
from maskrank.tasks.sharding import shard_for_strategy, shard_model


class ImageClassifier(pl.LightningModule):
    """A timm ViT with a linear head trained by cross-entropy.

    Args:
        vit: encoder architecture (preset and overrides; see ``maskrank.models.ViTSpec``).
        num_classes: number of classes; the CLI links it from the datamodule.
        img_size: image side in pixels; the CLI links it from the datamodule.
        in_chans: image channels; the CLI links it from the datamodule.
        lr: peak learning rate of AdamW; null: ``base_lr * effective_batch / 256`` (MAE's rule,
            effective batch = batch x accumulation x processes).
        base_lr: learning rate per 256 images, used when ``lr`` is null (MAE fine-tunes ViT-B
            with 5e-4, ViT-L/H with 1e-3).
        weight_decay: AdamW weight decay, applied to tensors with ndim >= 2 only, never to the
            ViT's ``no_weight_decay()`` names (``pos_embed``, ``cls_token``), as MAE fine-tunes.
        betas: AdamW betas.
        warmup_fraction: fraction of the total optimizer steps spent in linear warmup.
        min_lr_ratio: final learning rate of the cosine decay, as a fraction of ``lr``.
        label_smoothing: cross-entropy label smoothing in [0, 1); with ``mixup`` it is folded
            into the mixed targets instead (validation and test always use plain cross entropy
            with this smoothing).
        fused_adamw: use torch's fused AdamW kernel (None: fused on CPU and CUDA).
        encoder_ckpt: start from the encoder of this checkpoint (an MAE pretraining or classifier
            checkpoint, or a timm ViT state_dict); the head stays freshly initialised.
            ``last:<experiment>`` names the newest ``runs/<experiment>/version_N/checkpoints/
            last.ckpt``; the resolved path is what the checkpoint records.
        pretrained: start from timm's pretrained weights for ``vit.preset`` (a timm name such as
            ``vit_small_patch16_224.augreg_in21k``; needs the network once, then timm's cache).
        adaptation: ``finetune`` (every weight trains), ``linear_probe`` (frozen encoder in eval
            mode; BatchNorm without affine + linear head) or ``lora`` (adapters from ``lora``;
            adapters and head train).
        layer_decay: layer-wise learning-rate decay for ``finetune`` (1.0: off; MAE uses
            0.65-0.75): block ``i`` of ``L`` trains at ``lr · layer_decay^(L - i)``.
        lora: adapter spec for ``adaptation: lora`` (``maskrank.models.lora.LoRASpec``: ``r``,
            ``alpha``, ``dropout``, ``targets`` among qkv/proj/fc1/fc2, ``rank_pattern`` (a map
            or the file written by ``maskrank lora-rank``), ``alpha_pattern``, ``engine``,
            ``init`` default/pissa/gradient (+ peft's inits), ``init_batches``, ``use_dora``,
            ``use_rslora``, ``depth`` 1/3 (Deep LoRA), ``init_scale``, ``compress_after``, ``r_c``).
        dropout: dropout variant(s) installed in the ViT (``maskrank.models.dropout.DropoutSpec``:
            ``variant`` feature/attention/drop_path/dropconnect/token, ``rate``, ``where``,
            ``blocks``, ``targets``, ``mode``); a list combines variants. ``mode: explicit``
            (feature dropout on ``mlp.drop1`` only) switches that dropout off and adds its
            closed-form penalty ``λ Σ_j ‖u_j‖² mean(a_j²)`` to the training objective instead
            (SCIENCE.md §4), logged as ``train/dropout_penalty`` (``train/loss`` stays the
            data loss).
        optimizer: ``adamw`` (default) or ``galore_adamw`` with ``rank``, ``update_proj_gap``,
            ``scale``, ``proj_type``, ``targets`` (``maskrank.optim.OptimizerSpec``; SCIENCE.md
            §8); every non-target parameter stays on AdamW (with ``layer_decay``'s groups).
        mixup: mix training batches on the device (``maskrank.tasks.mixup.MixupSpec``:
            ``mixup_alpha`` 0.8, ``cutmix_alpha`` 1.0, ``cutmix_minmax``, ``prob`` 1.0,
            ``switch_prob`` 0.5, ``mode`` batch/pair/elem: MAE's values) and train on the soft
            targets with ``label_smoothing`` folded in; null: off. Needs an even
            ``data.batch_size``. ``train/acc`` then counts a prediction right when it is the
            class with the largest share of the mixed target (the argmax of the soft target).
        head_init_std: re-draw the linear head's weight from a normal truncated at 2 std with
            this std (bias 0) after the encoder is loaded, as MAE does before fine-tuning (2e-5:
            the first logits are near 0); null keeps timm's init (std 0.02).
        compile: ``torch.compile`` every transformer block in place, after the adaptation
            wrapped its layers (:mod:`maskrank.tasks.compiling`); the first steps are slow while
            it compiles, and a device it cannot compile for is refused before training.
    """

    def __init__(
        self,
        vit: ViTSpec | None = None,
        num_classes: int = 10,
        img_size: int = 32,
        in_chans: int = 3,
        lr: float | None = 1e-3,
        base_lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        fused_adamw: bool | None = None,
        encoder_ckpt: str | None = None,
        dropout: DropoutSpec | list[DropoutSpec] | None = None,
        pretrained: bool = False,
        adaptation: Adaptation = "finetune",
        layer_decay: float = 1.0,
        lora: LoRASpec | None = None,
        optimizer: OptimizerSpec | None = None,
        mixup: MixupSpec | None = None,
        head_init_std: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        spec = as_spec(vit)
        if lr is None:  # then lr = base_lr x batch / 256
            check_interval(base_lr, "base_lr", 0.0, low_open=True)
        else:
            check_interval(lr, "lr", 0.0, low_open=True)
        if head_init_std is not None:
            check_interval(head_init_std, "head_init_std", 0.0, low_open=True)
        if num_classes < 2:
            raise ConfigError(
                f"{{field}} = {num_classes} must be >= 2 (set by the datamodule)", "num_classes"
            )
        check_interval(label_smoothing, "label_smoothing", 0.0, 1.0)
        check_adaptation(adaptation, layer_decay)
        # settings of a mode that is not selected would be silently ignored: refuse them
        if lora is not None and adaptation != "lora":
            raise ConfigError(
                f"{{field}} is set but {flag_of('adaptation')} is {adaptation!r}: the adapters "
                "are used only with adaptation: lora (set it, or drop the lora settings)",
                "lora",
            )
        if layer_decay != 1.0 and adaptation != "finetune":
            raise ConfigError(
                f"{{field}} = {layer_decay} applies to adaptation: finetune only, but "
                f"{flag_of('adaptation')} is {adaptation!r}",
                "layer_decay",
            )
        # Specs are stored as plain dicts so checkpoints load with weights_only=True; a rank map
        # file is stored as its content, so the checkpoint does not depend on the file.
        lora_spec = as_lora_spec(lora) if adaptation == "lora" else None
        optimizer_spec = as_optimizer_spec(optimizer)
        mixup_spec = as_mixup_spec(mixup)
        if encoder_ckpt is not None:
            encoder_ckpt = str(resolve_checkpoint(encoder_ckpt, flag_of("encoder_ckpt")))
        self.save_hyperparameters(ignore=["vit", "dropout", "lora", "optimizer", "mixup"])
        self.hparams["encoder_ckpt"] = encoder_ckpt  # resolved: lora-rank reads this file later
        self.hparams["optimizer"] = asdict(optimizer_spec)
        self.hparams["vit"] = asdict(spec)
        self.hparams["lora"] = None if lora_spec is None else asdict(lora_spec)
        self.hparams["mixup"] = None if mixup_spec is None else asdict(mixup_spec)
        self.model = spec.build(
            img_size=img_size, in_chans=in_chans, num_classes=num_classes, pretrained=pretrained
        )
        if encoder_ckpt is not None:
            load_encoder(self.model, encoder_ckpt)
        if head_init_std is not None:
            init_head(self.model.head, head_init_std)
        # explicit_dropout is None without a `mode: explicit` spec, else its `.rates` map the
        # hooked fc2 names to p
        dropout_specs, self.explicit_dropout = install_dropout(self.model, dropout)
        self.hparams["dropout"] = [asdict(s) for s in dropout_specs]
        layers = setup_adaptation(self.model, adaptation, lora_spec)  # after loading: wraps it
        penalty_sites = [] if self.explicit_dropout is None else list(self.explicit_dropout.rates)
        rates = [s.rate for s in dropout_specs]
        check_dropout_acts(adaptation, rates, penalty_sites, layers, lora_spec)
        # After adaptation (trainable weights only) and before a strategy wraps or shards the
        # ViT: decided by name; a bad GaLore rank or target fails here. Unlike pretraining, every
        # adaptation skips the ViT's no_weight_decay() names (MAE's fine-tuning rule).
        self.optimizer_plan = plan_optimizer(
            self.model, optimizer_spec, layer_decay, model_no_weight_decay(self.model)
        )
        self.mixer = (
            None if mixup_spec is None else BatchMixer(mixup_spec, num_classes, label_smoothing)
        )
        if compile:  # after the adapters and dropout are in place, so that it traces them
            compile_blocks(self.model.blocks)
        if lora_spec is not None and lora_spec.init == "gradient":
            # set once the adapters are initialised from data; a resumed fit restores it (and the
            # offset base weights), so the init never runs twice
            self.register_buffer("lora_init_done", torch.tensor(False))
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # held-out preprocessing + class names of the training data (maskrank.data.describe)
        self.data_config: dict | None = None

    def train(self, mode: bool = True):
        """A linear probe's frozen encoder stays in eval mode (no dropout, fixed statistics)."""
        super().train(mode)
        if self.hparams.adaptation == "linear_probe":
            self.model.eval()
            self.model.head.train(mode)
        return self

    @property
    def encoder(self):
        """The timm ViT (its head included); callbacks read features and weights from it."""
        return self.model

    @property
    def masked_autoencoder(self) -> None:
        """A classifier has no MAE (the monitors then run the encoder unmasked)."""
        return None

    @property
    def masking(self) -> None:
        """A classifier masks nothing."""
        return None

    def explicit_dropout_rates(self) -> dict[nn.Module, float]:
        """``fc2`` module -> ``p`` of every explicit dropout penalty (empty without one)."""
        return {} if self.explicit_dropout is None else self.explicit_dropout.fc2_rates

    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """Unmasked features for probes and rank metrics (call in eval mode)."""
        return encoder_features(self.model, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for normalized images (B, C, H, W)."""
        return self.model(images)

    def setup(self, stage: str) -> None:
        """Refuse, before fitting, ``compile`` where torch.compile cannot build kernels and an
        odd batch with ``mixup`` (timm mixes mirrored pairs)."""
        if self.hparams.compile and self._trainer is not None:
            check_compile(self.trainer.strategy.root_device)
        if self.mixer is None or stage != "fit" or self._trainer is None:
            return
        datamodule = self.trainer.datamodule
        batch = getattr(datamodule, "batch_size", None) if is_image_data(datamodule) else None
        if isinstance(batch, int) and batch % 2:
            raise ConfigError(
                f"{{field}} mixes each training image with its mirror in the batch, which needs "
                f"an even batch, but --data.batch_size is {batch}; set an even batch size or "
                "mixup: null",
                "mixup",
            )

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        if stage == "train" and self.mixer is not None:
            images, targets = self.mixer(images, labels)  # targets (B, K), smoothing folded in
            logits = self(images)
            loss = soft_target_cross_entropy(logits, targets)
            labels = targets.argmax(dim=-1)  # train/acc: the class with the largest share
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        acc = getattr(self, f"{stage}_acc")
        acc(logits.detach(), labels)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=labels.shape[0],
            sync_dist=not on_step,
        )
        self.log(f"{stage}/acc", acc, prog_bar=stage != "train", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.explicit_dropout is None:
            return self._step(batch, "train")
        self.explicit_dropout.reset()
        loss = self._step(batch, "train")
        penalty = self.explicit_dropout.pop()  # summed over the hooked fc2s of this forward
        self.log("train/dropout_penalty", penalty)
        return loss + penalty

    def on_train_start(self) -> None:
        """``lora.init: gradient``: initialise the adapters from the first training batches, once.

        The batches are drawn and augmented under a forked RNG, so training sees the random
        stream it would see without the init.
        """
        if getattr(self, "lora_init_done", None) is None or bool(self.lora_init_done):
            return
        trainer, count = self.trainer, self.hparams.lora["init_batches"]
        batches = itertools.islice(iter(trainer.train_dataloader), count)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            gradient_init(
                self.model,
                (trainer.strategy.batch_to_device(b) for b in batches),
                lambda logits, y: F.cross_entropy(
                    logits, y, label_smoothing=self.hparams.label_smoothing
                ),
                reduce=lambda t: trainer.strategy.reduce(t, reduce_op="mean"),
            )
        self.lora_init_done.fill_(True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Deep LoRA: compress the factors once ``lora.compress_after`` steps are done."""
        spec = self.hparams.lora
        if not spec or spec["depth"] != 3 or spec["compress_after"] is None:
            return
        if self.global_step < spec["compress_after"]:
            return
        changes = compress_deep_lora(self.model, as_lora_spec(spec).compressed_width)
        if changes:  # the factors were rewritten: their optimizer state restarts
            factors = factor_parameters(self.model, list(changes))
            for optimizer in self.trainer.optimizers:
                for param in factors:
                    optimizer.state.pop(param, None)
            worst = max(changes.values())
            self.log("lora/compress/relative_change", worst, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    # ------------------------------------------------------------ predict and export
    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per image: ``pred`` (B,) class index, ``probs`` and ``logits`` (B, num_classes), and
        ``label`` (B,) when the data is labelled; ``maskrank predict`` writes them to the run
        directory (:class:`~maskrank.callbacks.predictions.PredictionWriter`)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(images)
        out = {"pred": logits.argmax(dim=-1), "probs": logits.softmax(dim=-1), "logits": logits}
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            out["label"] = batch[1]
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The held-out preprocessing and class names of the training data, so an export can
        # describe its inputs (maskrank export -> timm's config.json); kept from a loaded
        # checkpoint when no datamodule is attached.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if is_image_data(datamodule):
            self.data_config = data_config(datamodule)
        if self.data_config is not None:
            checkpoint["data_config"] = self.data_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_config = checkpoint.get("data_config")

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: FSDP2 over the ViT's blocks and the ViT
        (:mod:`maskrank.tasks.sharding`); a no-op under every other strategy."""
        shard_for_strategy(self._trainer, self.shard)

    def shard(self, mesh: DeviceMesh) -> None:
        """FSDP2 units: every ViT block, then the ViT around them."""
        shard_model(self.model.blocks, self.model, mesh)

    def configure_optimizers(self):
        hp = self.hparams
        total_steps = self.trainer.estimated_stepping_batches  # also loads the train dataloader
        lr = hp.lr if hp.lr is not None else hp.base_lr * effective_batch_size(self.trainer) / 256
        # every trainable parameter lives in the ViT (its head included)
        spec = as_optimizer_spec(hp.get("optimizer"))
        optimizer = build_optimizer(
            self.model,
            spec,
            lr,
            hp.weight_decay,
            tuple(hp.betas),
            hp.fused_adamw,
            hp.layer_decay,
            plan=self.optimizer_plan,
            strategy=type(self.trainer.strategy).__name__,
        )
        schedule = warmup_cosine_schedule(
            optimizer, total_steps, hp.warmup_fraction, hp.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
