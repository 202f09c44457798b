"""Run a torchvision download and turn any failure into one clear :class:`DatasetNotFoundError`."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from maskrank.data.messages import one_line
from maskrank.errors import DatasetNotFoundError, MaskRankError

__all__ = ["download_or_raise"]


def download_or_raise(fetch: Callable[[], object], dataset: str, url: str, target: str) -> None:
    """Call ``fetch()`` (a torchvision download); on failure raise :class:`DatasetNotFoundError`.

    Args:
        fetch: performs the download, e.g. ``lambda: CIFAR10(root, download=True)``.
        dataset: human-readable dataset name for the message, e.g. ``"CIFAR-10"``.
        url: a URL the download uses; its host is named in the message.
        target: where the files can be placed by hand instead, e.g. ``data/cifar-10-batches-py/``.
    """
    try:
        fetch()
    except MaskRankError:
        raise
    except Exception as exc:  # offline: URLError/OSError; bad mirror: RuntimeError; ...
        host = urlparse(url).netloc or url
        raise DatasetNotFoundError(
            f"downloading {dataset} failed: {host} cannot be reached or refused the download "
            f"({type(exc).__name__}: {one_line(exc)}); place the files manually at {target}"
        ) from None
