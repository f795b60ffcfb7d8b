"""Start the server: `python run_server.py [--host H] [--port P] [--workers N] [--debug] [--config FILE]`.

The API (uvicorn) and N local worker processes; Ctrl-C or SIGTERM shuts both down cleanly.
"""

import sys

from server_config import SERVER_CONFIG

if __name__ == "__main__":  # required: worker processes are spawned and re-import this file
    from media_cleaner.server import run_server_main

    sys.exit(run_server_main(SERVER_CONFIG))
