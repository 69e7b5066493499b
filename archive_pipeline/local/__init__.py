"""A throwaway PostgreSQL + S3 stack and the demo that runs on it."""
