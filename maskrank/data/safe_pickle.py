"""Load pickled dataset files (CIFAR's python batches) without executing arbitrary code.

``pickle.load`` calls whatever global a file names, so a tampered dataset file could run
``os.system``. :class:`RestrictedUnpickler` resolves only the globals that plain containers and numpy
arrays need (array/dtype/scalar reconstruction and a few builtin constructors); any other global,
a truncated file or garbage bytes raises :class:`~maskrank.errors.CorruptFileError` naming the file.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Any

from maskrank.data.messages import one_line
from maskrank.errors import CorruptFileError

__all__ = ["RestrictedUnpickler", "load_pickle"]

# Harmless builtin constructors a data pickle may name.
_BUILTINS = frozenset(
    {"bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list"}
    | {"set", "str", "tuple"}
)

# (module, name) pairs for numpy reconstruction, as written by numpy 1.x and 2.x; the value is the
# module that holds the object in the installed numpy ("_core" in 2.x, "core" in 1.x).
_NUMPY_GLOBALS: dict[tuple[str, str], tuple[str, ...]] = {
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
}
for _prefix in ("numpy.core", "numpy._core"):
    for _module, _name in (("multiarray", "_reconstruct"), ("multiarray", "scalar")):
        _NUMPY_GLOBALS[(f"{_prefix}.{_module}", _name)] = (
            f"numpy._core.{_module}",
            f"numpy.core.{_module}",
        )
    _NUMPY_GLOBALS[(f"{_prefix}.numeric", "_frombuffer")] = (
        "numpy._core.numeric",
        "numpy.core.numeric",
    )


def _resolve(candidates: tuple[str, ...], name: str) -> Any:
    """Return ``name`` from the first importable module in ``candidates``."""
    for module in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{candidates[0]}.{name} is not available in this numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` allows only numpy arrays and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; refuse every other one with ``pickle.UnpicklingError``."""
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles of bytes objects
            return __import__("codecs").encode
        if (module, name) in _NUMPY_GLOBALS:
            return _resolve(_NUMPY_GLOBALS[(module, name)], name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``latin1`` for Python 2 pickles).

    Raises:
        CorruptFileError: the file is truncated, is not a pickle, or names a forbidden global.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise CorruptFileError(f"{path} is not a valid dataset pickle: {one_line(exc)}") from None
    except Exception as exc:  # truncated or garbage bytes fail in many different ways
        raise CorruptFileError(
            f"{path} is truncated or not a dataset pickle ({type(exc).__name__}: {one_line(exc)}); "
            "delete it and download the dataset again"
        ) from None
