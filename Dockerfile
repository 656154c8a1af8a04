# The `conveyor` command in a slim image: run workers (`worker /app/examples/models`), V2
# gateways (`gateway --host 0.0.0.0`), clients and `inspect` against a Redis named by CONVEYOR_REDIS_URL (docker-compose.yml sets it; no
# host is baked in here).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs to build; .dockerignore keeps tests, .git and venvs out.
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY core/ core/
COPY broker/ broker/
COPY worker/ worker/
COPY client/ client/
COPY cli/ cli/
COPY gateway/ gateway/
COPY dashboard/ dashboard/
# The runtime dependencies only: no [dev] (tests, linters), no [embedded] (compose runs
# Redis). The hot path compiled by mypyc (setup.py, CONVEYOR_COMPILE=1: a quarter less CPU a
# job), with a C compiler that is purged once it has built. The sources go once installed, so
# /src can't shadow the package on sys.path.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && CONVEYOR_COMPILE=1 pip install --no-cache-dir . \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && rm -rf /src

WORKDIR /app
COPY examples/ examples/

# A user of its own: a worker runs model code, which has no business being root.
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin conveyor
USER conveyor

# The gateway's V2 ports (`gateway --host 0.0.0.0`): REST, gRPC
EXPOSE 8080 8081

# Exec form: conveyor is PID 1's child under `init: true`, or PID 1 itself, and gets SIGTERM.
ENTRYPOINT ["conveyor"]
CMD ["--help"]
