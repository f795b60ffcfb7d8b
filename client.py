"""Python client and CLI of the Media Cleaner server (the spec's `client.py`; a shim over media_cleaner.client).

from client import MediaCleanerClient
python client.py upload video.mp4 --wait --download ./results
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import media_cleaner.client  # noqa: F401
except ModuleNotFoundError:  # run from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from media_cleaner.client import *  # noqa: E402,F403
from media_cleaner.client import __all__  # noqa: E402,F401
from media_cleaner.client.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
