"""Allowed values of the string options that both the argument dataclasses (argument_classes/, where a
command line, args file or grid cell is checked) and the library functions taking them directly
(`load_model`, `plan_splits`, `prepare_cached_datasets`) accept: stated once, here."""

POOLER_TYPES = ("auto", "model", "cls", "avg", "last")  # auto: model for encoders, last for decoders
SPLIT_MODES = ("official", "heldout")
CACHE_DTYPES = ("float32", "bfloat16", "float16")
