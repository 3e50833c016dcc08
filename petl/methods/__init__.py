"""One module per method; importing this package registers them all."""

from petl.methods import adapter, bitfit, ffn, full, lora, prefix, prompt  # noqa: F401
