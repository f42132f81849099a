"""What dustpan knows: the pure domain (``models.domain``) and the PostgreSQL tables."""
