"""Low-rank adapters (LoRA) on the Linear layers of a timm ViT (SCIENCE.md §6).

``h = W₀x + b + (α/r) B A x`` with ``A`` (r, k) Kaiming-uniform and ``B`` (d, r) zero, so training
starts at the pretrained function; merging writes ``W₀ + (α/r) B A`` into a plain ``nn.Linear``.

- :mod:`~maskrank.models.lora.spec`: ``LoRASpec`` (checked once), name matching, rank-map files;
- :mod:`~maskrank.models.lora.kernel`: the fused forward/backward (:func:`lora_linear`);
- :mod:`~maskrank.models.lora.layer`: :class:`LoRALinear` (peft's names) and views of both engines;
- :mod:`~maskrank.models.lora.inject`: :func:`apply_lora`, :func:`merge_lora`;
- :mod:`~maskrank.models.lora.init`: PiSSA and gradient-subspace inits (SCIENCE.md §8);
- :mod:`~maskrank.models.lora.deep`: Deep LoRA (three factors, compression);
- :mod:`~maskrank.models.lora.export`: merged timm folders and peft adapters (with offset bases).
"""

from maskrank.models.lora.deep import DeepLoRALinear, compress_deep_lora
from maskrank.models.lora.export import (
    adapter_deltas,
    save_adapter,
    save_lora_artefacts,
    save_merged,
    strip_lora,
)
from maskrank.models.lora.init import gradient_init, pissa_init
from maskrank.models.lora.inject import apply_lora, merge_lora
from maskrank.models.lora.kernel import lora_linear
from maskrank.models.lora.layer import LoRALinear, LoRAView, delta_weight, lora_layers, unmerge_all
from maskrank.models.lora.spec import (
    DEFAULT_TARGETS,
    LoRASpec,
    adapter_rank,
    as_lora_spec,
    load_rank_map,
    target_matches,
    write_rank_map,
)

__all__ = [
    "DEFAULT_TARGETS",
    "DeepLoRALinear",
    "LoRALinear",
    "LoRASpec",
    "LoRAView",
    "adapter_deltas",
    "adapter_rank",
    "apply_lora",
    "compress_deep_lora",
    "as_lora_spec",
    "delta_weight",
    "gradient_init",
    "load_rank_map",
    "lora_layers",
    "lora_linear",
    "merge_lora",
    "pissa_init",
    "save_adapter",
    "save_lora_artefacts",
    "save_merged",
    "strip_lora",
    "target_matches",
    "unmerge_all",
    "write_rank_map",
]
