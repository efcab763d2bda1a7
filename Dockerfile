# The one image shape of every process: the four services and the aggregator sandbox.
# Build context: the repository root; the process is a build argument (see docker-compose.yml):
#   docker build --build-arg SERVICE_MODULE=services.importer --build-arg SERVICE_PORT=8003 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    BANKSYNC_HOST=0.0.0.0
WORKDIR /app
RUN groupadd --system --gid 10001 banksync \
 && useradd --system --uid 10001 --gid banksync --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin banksync

# Runtime dependencies only, every version pinned by requirements.lock: the top-level list of
# requirements.in up to its development section (pytest, mypy, ruff... stay out of the image).
COPY requirements.in requirements.lock ./
RUN sed '/^# development and tests/,$d' requirements.in > /tmp/runtime.in \
 && pip install --no-cache-dir -r /tmp/runtime.in -c requirements.lock \
 && rm /tmp/runtime.in

# The code (see .dockerignore), owned by root and read-only for the service user; the editable
# install adds the `banksync` ops command.
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
USER 10001:10001

# Which process the image runs: services.entitlements (8001), services.connector (8002),
# services.importer (8003), services.categorizer (8004) or sandbox (8010). Declared last, so every
# layer above is shared by the five images.
ARG SERVICE_MODULE
ARG SERVICE_PORT
RUN test -n "$SERVICE_MODULE" && test -n "$SERVICE_PORT" \
 || { echo "build with --build-arg SERVICE_MODULE=... --build-arg SERVICE_PORT=..." >&2; exit 1; }
ENV BANKSYNC_SERVICE_MODULE=${SERVICE_MODULE}
EXPOSE ${SERVICE_PORT}
CMD ["sh", "-c", "exec python -m \"$BANKSYNC_SERVICE_MODULE\""]
