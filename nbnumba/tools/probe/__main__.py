"""``python -m nbnumba.tools.probe``."""
import sys

from .cli import main

sys.exit(main())
