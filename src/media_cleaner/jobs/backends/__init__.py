"""Queue backends beyond the local executor (which lives in `jobs.backend`)."""
