"""petl-glue: parameter-efficient transfer learning on GLUE, on top of HF transformers."""

from petl.core import apply_petl, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.errors import PetlError

__all__ = ["PetlError", "apply_petl", "load_petl", "merge_petl", "save_petl", "trainable_summary", "unmerge_petl"]
