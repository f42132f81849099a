# One image for every dustpan role: the command picks the role (api, worker, beat, flower, migrate).
#   docker build -t dustpan .
#   docker run --rm --env-file .env dustpan migrate
#   docker run --rm --env-file .env -p 8000:8000 dustpan          # the API (the default CMD)
#   docker run --rm --env-file .env dustpan worker --queues ops
# docker-compose.yml runs the whole fleet from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The processes never run as root; their home is the working directory, where `dustpan beat`
# keeps its local state (./.dustpan). Everything that matters lives in PostgreSQL and Redis.
RUN groupadd --system --gid 10001 dustpan \
    && useradd --system --uid 10001 --gid dustpan --create-home --home-dir /home/dustpan dustpan

# Only what the package needs (see .dockerignore): a change to tests or docs does not rebuild it.
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py constraints.txt ./
COPY models ./models
COPY tasks ./tasks
COPY workers ./workers
COPY migrations ./migrations
# Runtime dependencies only, at the versions the tests ran with (constraints.txt): neither the
# dev extra (pytest, ruff, ...) nor the embedded servers (PostgreSQL and Redis binaries, some
# 80 MB; compose runs real ones) go into the image. Every dependency ships a manylinux wheel.
RUN pip install -c constraints.txt . && rm -rf /src

# Numeric, so that a runtime can verify it is not root (e.g. Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /home/dustpan

EXPOSE 8000 5555

# No image-wide HEALTHCHECK: each role is checked its own way (docker-compose.yml, through
# `python -m workers.healthcheck`): the API's /health/live, a worker's ping, Beat's lock, Flower's page.
ENTRYPOINT ["dustpan"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
