"""maskrank: masked self-supervised learning on Vision Transformers, with low-rank structure made visible."""

from maskrank.errors import (
    ConfigError,
    CorruptFileError,
    DatasetNotFoundError,
    MaskRankError,
    MissingFileError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DatasetNotFoundError",
    "MaskRankError",
    "MissingFileError",
    "__version__",
]
