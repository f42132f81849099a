"""How dustpan runs and meets the world: Celery app, HTTP API, CLI, embedded services, brokerages."""
