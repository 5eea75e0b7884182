"""``python -m fedsqueeze.apps`` is the ``fedsqueeze`` command."""

import sys

from fedsqueeze.apps.cli import main

sys.exit(main())
