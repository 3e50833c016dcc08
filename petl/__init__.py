"""petl-glue: parameter-efficient transfer learning on GLUE, on top of HF transformers."""

# The package's version, written only here: pyproject.toml reads it (`version = {attr = ...}`).
__version__ = "0.1.0"

from petl.core import apply_petl, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.errors import PetlError

__all__ = ["PetlError", "__version__", "apply_petl", "load_petl", "merge_petl", "save_petl", "trainable_summary", "unmerge_petl"]
