"""``python -m nncift.cli``: the same as the ``nncift`` command."""

import sys

from nncift.cli.commands import main

sys.exit(main())
