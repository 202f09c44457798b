"""What LoRA adapts and how (``LoRASpec``), peft's name-matching rules, and rank-map files.

No torch here: a spec is checked once when it is made (:meth:`LoRASpec.__post_init__`, errors name
the field), and everything below it trusts it. A **rank map** is the YAML file ``maskrank
lora-rank`` writes: ``rank_pattern: {module: rank}`` plus provenance keys; a spec given its path
reads it at once, so what a checkpoint stores never depends on the file again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from maskrank.errors import ConfigError, CorruptFileError, MissingFileError, check_interval
from maskrank.io.atomic import atomic_write_text

__all__ = [
    "DEFAULT_TARGETS",
    "ENGINES",
    "LoRASpec",
    "adapter_rank",
    "as_lora_spec",
    "load_rank_map",
    "target_matches",
    "write_rank_map",
]

DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2")
ENGINES = ("maskrank", "peft")
# adapter initialisations per engine; peft's are passed to its ``init_lora_weights`` (those that
# need no data or quantisation config; ``pissa_niter_<n>`` is peft's fast-SVD PiSSA)
INITS = {
    "maskrank": ("default", "pissa", "gradient"),
    "peft": ("default", "gaussian", "pissa", "olora", "orthogonal"),
}


@dataclass
class LoRASpec:
    """Where and how large the adapters are (``model.init_args.lora``).

    Attributes:
        r: default adapter rank.
        alpha: scale numerator; the update is ``(alpha / r) B A``.
        dropout: dropout on the adapter's input (peft's ``lora_dropout``).
        targets: Linear layers to adapt, matched by name suffix as in peft (``qkv`` matches
            ``blocks.3.attn.qkv``; ``blocks.0.attn.qkv`` matches one layer). Only ``nn.Linear``
            layers of the encoder are adapted (``proj`` never matches the patch-embedding conv).
        rank_pattern: per-module ranks overriding ``r``: a mapping of peft-style patterns
            (``blocks.3.attn.qkv`` or a regex such as ``blocks\\.[0-5]\\.mlp\\.fc1``) to ranks, or
            the path of a rank map written by ``maskrank lora-rank``; rank 0 leaves a layer
            without an adapter.
        alpha_pattern: per-module ``alpha`` overrides, keyed like ``rank_pattern``; without an
            entry a layer keeps ``alpha / r`` of the spec scaled to its own rank
            (``alpha * r_layer / r``), so every layer starts with the same scale.
        engine: ``maskrank`` (one GEMM with the merged weight forward, no ``W₀`` gradient) or
            ``peft`` (peft's LoRA layers; same math).
        init: how the adapter starts (SCIENCE.md §8). ``default``: ``A`` Kaiming, ``B`` zero.
            ``pissa``: ``B A`` the top-``r`` SVD part of ``W₀`` and the residual frozen.
            ``gradient`` (maskrank engine): ``A``, ``B`` from the top-``r`` singular vectors of the
            full-weight gradient averaged over the first ``init_batches`` training batches, ``W₀``
            offset by the initial update. Both keep the initial function. With ``engine: peft``
            the value goes to peft's ``init_lora_weights`` (``pissa``, ``pissa_niter_<n>``,
            ``olora``, ``gaussian``, ``orthogonal``).
        init_batches: batches averaged by ``init: gradient``.
        use_dora: peft's DoRA (weight-decomposed LoRA; ``engine: peft`` only).
        use_rslora: peft's rank-stabilised scale ``alpha / sqrt(r)`` (``engine: peft`` only).
        depth: 1 (LoRA) or 3 (Deep LoRA, maskrank engine: ``ΔW = (alpha/r) W₃ W₂ W₁``).
        init_scale: Deep LoRA's factors start as ``init_scale`` x (semi-)orthogonal matrices.
        compress_after: Deep LoRA: after this many optimizer steps, reduce every factor to its
            top-``r_c`` singular subspace (the invariant subspace its training moved in).
        r_c: Deep LoRA's compressed width (default ``max(1, r // 2)``; at most a layer's rank).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    rank_pattern: dict[str, int] | str | None = None
    alpha_pattern: dict[str, float] | None = None
    engine: Literal["maskrank", "peft"] = "maskrank"
    init: str = "default"
    init_batches: int = 4
    use_dora: bool = False
    use_rslora: bool = False
    depth: int = 1
    init_scale: float = 1e-3
    compress_after: int | None = None
    r_c: int | None = None

    def __post_init__(self) -> None:
        # errors name the task argument that holds the spec: lora.<field>
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRA rank {{field}} = {self.r!r} must be >= 1", "lora.r")
        check_interval(self.alpha, "lora.alpha", 0.0, low_open=True)
        check_interval(self.dropout, "lora.dropout", 0.0, 1.0)
        self.targets = list(self.targets)
        if not self.targets:
            raise ConfigError(
                "{field} is empty: name at least one Linear layer (e.g. qkv)", "lora.targets"
            )
        if self.engine not in ENGINES:
            raise ConfigError(
                f"{{field}} = {self.engine!r}: expected one of {list(ENGINES)}", "lora.engine"
            )
        if isinstance(self.rank_pattern, (str, Path)):
            self.rank_pattern = load_rank_map(self.rank_pattern)
        self._check_patterns()
        self._check_init()
        self._check_depth()

    def _check_patterns(self) -> None:
        # a negative rank would silently mean "no adapter"; an alpha of 0 scales an adapter's
        # update (alpha / r) B A and both its gradients to zero: it could never learn
        for key, rank in (self.rank_pattern or {}).items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                raise ConfigError(
                    f"{{field}}[{key!r}] = {rank!r} must be an integer >= 0 (0: no adapter)",
                    "lora.rank_pattern",
                )
        for key, alpha in (self.alpha_pattern or {}).items():
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
                raise ConfigError(
                    f"{{field}}[{key!r}] = {alpha!r} must be > 0", "lora.alpha_pattern"
                )

    def _check_init(self) -> None:
        inits = INITS[self.engine]
        niter = self.engine == "peft" and re.fullmatch(r"pissa_niter_\d+", str(self.init))
        if self.init not in inits and not niter:
            other = [e for e in ENGINES if e != self.engine and self.init in INITS[e]]
            hint = f" (engine {other[0]} has it)" if other else ""
            raise ConfigError(
                f"{{field}} = {self.init!r} is not an init of engine {self.engine}{hint}; "
                f"expected one of {list(inits)}",
                "lora.init",
            )
        if self.init == "gradient" and (
            not isinstance(self.init_batches, int) or self.init_batches < 1
        ):
            raise ConfigError(
                f"{{field}} = {self.init_batches!r} must be >= 1 for init: gradient",
                "lora.init_batches",
            )
        for flag in ("use_dora", "use_rslora"):
            if getattr(self, flag) and self.engine != "peft":
                raise ConfigError(
                    f"{{field}} is peft's option: it needs engine: peft (engine is {self.engine})",
                    f"lora.{flag}",
                )

    def _check_depth(self) -> None:
        if self.depth not in (1, 3):
            raise ConfigError(f"{{field}} = {self.depth!r}: expected 1 or 3", "lora.depth")
        check_interval(self.init_scale, "lora.init_scale", 0.0, low_open=True)
        if self.depth == 1:
            for name in ("compress_after", "r_c"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        "{field} applies to Deep LoRA only: set lora.depth: 3", f"lora.{name}"
                    )
            return
        if self.engine != "maskrank":
            raise ConfigError(
                "{field} = 3 (Deep LoRA) is maskrank's engine only: set lora.engine: maskrank",
                "lora.depth",
            )
        if self.init != "default":
            raise ConfigError(
                f"{{field}} = {self.init!r}: Deep LoRA (depth 3) starts from its own "
                "orthogonal init; use init: default",
                "lora.init",
            )
        if self.compress_after is not None and (
            not isinstance(self.compress_after, int) or self.compress_after < 1
        ):
            raise ConfigError(
                f"{{field}} = {self.compress_after!r} must be >= 1 (optimizer steps)",
                "lora.compress_after",
            )
        if self.r_c is not None:
            if self.compress_after is None:
                raise ConfigError(
                    "{field} needs lora.compress_after (when to compress)", "lora.r_c"
                )
            if not isinstance(self.r_c, int) or not 1 <= self.r_c <= self.r:
                raise ConfigError(
                    f"{{field}} = {self.r_c!r} must be in [1, lora.r = {self.r}]", "lora.r_c"
                )

    @property
    def offsets_base(self) -> bool:
        """The init moves the frozen base weight (PiSSA, gradient, peft's SVD inits): the
        adapter starts at ``(α/r) B₀A₀ != 0`` and the base at ``W₀ - (α/r) B₀A₀``, so what
        training moved is ``W_merged - W₀``, not ``(α/r) B A``."""
        return self.init not in ("default", "gaussian")

    @property
    def compressed_width(self) -> int:
        """Deep LoRA's width after compression (before clamping to a layer's own rank)."""
        return self.r_c if self.r_c is not None else max(1, self.r // 2)


def as_lora_spec(value: LoRASpec | dict | None) -> LoRASpec:
    """A checked LoRASpec from a spec, its ``asdict`` form (checkpoint hparams) or None."""
    if value is None:
        return LoRASpec()
    if isinstance(value, LoRASpec):
        return value
    known = {f.name for f in fields(LoRASpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {{field}}; expected {sorted(known)}", "lora"
        )
    return LoRASpec(**value)


def target_matches(name: str, target: str) -> bool:
    """peft's rule for ``target_modules`` entries: the module name equals or ends with ``.target``."""
    return name == target or name.endswith("." + target)


def _pattern_value(name: str, pattern: dict, default: Any) -> Any:
    """peft's rule: the first key with ``re.match(rf"(.*\\.)?({key})$", name)`` wins."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def adapter_rank(name: str, spec: LoRASpec) -> tuple[int, float]:
    """(rank, alpha) of the adapter on module ``name``; rank 0 means no adapter."""
    r = int(_pattern_value(name, spec.rank_pattern or {}, spec.r))
    alpha = _pattern_value(name, spec.alpha_pattern or {}, None)
    return r, float(spec.alpha * r / spec.r if alpha is None else alpha)


def load_rank_map(path: str | Path) -> dict[str, int]:
    """The ``rank_pattern`` of a rank-map YAML file (or a file that is a plain mapping).

    Errors name the file and the field ``rank_pattern``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise _RankMapMissing(
            f"rank map {path} ({{field}}) {what}; write one with `maskrank lora-rank`",
            "lora.rank_pattern",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _RankMapCorrupt(
            f"rank map {path} ({{field}}) is not valid YAML: {err}".replace("\n", " "),
            "lora.rank_pattern",
        ) from None
    ranks = data.get("rank_pattern", data) if isinstance(data, dict) else None
    if not isinstance(ranks, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in ranks.items()
    ):
        raise _RankMapCorrupt(
            f"rank map {path} ({{field}}) must map module names to ranks >= 0 "
            "(e.g. 'rank_pattern: {blocks.0.attn.qkv: 4}')",
            "lora.rank_pattern",
        )
    return ranks


class _RankMapMissing(ConfigError, MissingFileError):
    """A rank map that is not there (a missing file, and a setting with a field name)."""


class _RankMapCorrupt(ConfigError, CorruptFileError):
    """A rank map that cannot be read."""


def write_rank_map(path: str | Path, ranks: dict[str, int], **provenance: Any) -> None:
    """Write ``rank_pattern: ranks`` (and provenance keys) atomically to ``path``."""
    atomic_write_text(path, yaml.safe_dump({**provenance, "rank_pattern": ranks}, sort_keys=False))
