"""`python -m heatsvc`: the same command as `heatsvc`."""
import sys

from .cli import main

sys.exit(main())
