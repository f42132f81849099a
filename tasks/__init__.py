"""What dustpan does: use cases taking a unit of work and adapters, and thin Celery tasks."""
