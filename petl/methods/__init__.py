"""One module per method; importing this package registers them all, in this (listing) order."""
# isort: skip_file

from petl.methods import full  # noqa: F401  full, head
from petl.methods import ffn  # noqa: F401
from petl.methods import bitfit  # noqa: F401
from petl.methods import lora  # noqa: F401
from petl.methods import adapter  # noqa: F401  adapter, houlsby, pfeiffer, parallel
from petl.methods import prefix  # noqa: F401
from petl.methods import prompt  # noqa: F401
from petl.methods import ptuning  # noqa: F401
from petl.methods import idpg  # noqa: F401
from petl.methods import ia3  # noqa: F401
from petl.methods import linear_probe  # noqa: F401
