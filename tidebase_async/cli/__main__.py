"""``python -m tidebase_async.cli``."""

from __future__ import annotations

import sys

from tidebase_async.cli.main import main

sys.exit(main())
