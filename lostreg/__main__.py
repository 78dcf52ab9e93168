"""``python -m lostreg ...`` (also ``torchrun -m lostreg ...``): the ``lostreg`` command."""

import sys

from lostreg.cli.main import main

sys.exit(main())
