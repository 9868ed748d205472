"""``python -m controlplane.cli``: the same as ``banditctl``."""

import sys

from controlplane.cli import main

sys.exit(main())
