"""``python -m gainet.cli`` (as torchrun launches it: ``torchrun ... -m gainet.cli train ...``)."""

import sys

from gainet.cli import main

sys.exit(main())
