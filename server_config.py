"""Server configuration (the spec's SERVER_CONFIG). `python server_config.py` validates and prints the effective
configuration: these values, then `--config FILE`, then MEDIA_CLEANER_* environment variables.

Every other setting (database_url, retention_hours, api_keys, webhook_secret, ...) is documented in README.md
("Server") and may be added to this dict as well.
"""

import sys

SERVER_CONFIG = {
    "host": "0.0.0.0",  # listen on all interfaces
    "port": 8000,  # REST API port
    "max_video_size_gb": 2,  # largest accepted video
    "max_concurrent_tasks": 3,  # simultaneous processing jobs
    "task_timeout_hours": 24,  # task timeout
    "default_video_epsilon": 0.120,  # default parameters
    "default_audio_level": "слабый",  # "weak" (the levels are weak / medium / strong, or слабый / средний / сильный)
}

if __name__ == "__main__":
    from media_cleaner.server import config_main

    sys.exit(config_main(SERVER_CONFIG))
