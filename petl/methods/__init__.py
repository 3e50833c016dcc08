"""One module per method; importing this package registers them all."""

from petl.methods import ffn, full  # noqa: F401
