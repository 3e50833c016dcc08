"""petl-glue: parameter-efficient transfer learning on GLUE, on top of HF transformers."""

# The package's version, written only here: pyproject.toml reads it (`version = {attr = ...}`).
__version__ = "0.1.0"

from petl.core import apply_petl, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.errors import PetlError
from petl.merge import merge_and_unload
from petl.peft_import import load_peft

__all__ = [
    "PetlError",
    "__version__",
    "apply_petl",
    "load_peft",
    "load_petl",
    "merge_and_unload",
    "merge_petl",
    "save_petl",
    "trainable_summary",
    "unmerge_petl",
]
