"""``python -m polyformers.pt.kernels [-v]``: build the compiled kernels for this machine (cached) and
print the library's path."""

import sys

from . import build

print(build(verbose="-v" in sys.argv[1:]))
