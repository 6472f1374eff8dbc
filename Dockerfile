# CampusHub Realtime image.
#
#   docker build -t campushub-realtime .
#   docker run -p 8889:8889 campushub-realtime                  # embedded mode (SQLite, in-process bus)
#   docker run campushub-realtime python -m app migrate          # Alembic upgrade head on DATABASE_URL
#
# Production settings come from the environment (DATABASE_URL, REDIS_URL, JWT_SECRET, ...;
# see SPEC §8, docker-compose.yml and deploy/k8s/).

# --- build: install the project and its dependencies into a virtualenv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
# uvloop and httptools are what `python -m app serve` runs uvicorn with; named here so the
# image has them even if the dependency list changes.
RUN pip install . uvloop httptools \
    && python -c "import app, uvloop, httptools"

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8889 \
    SQLITE_PATH=/app/data/campushub.db

# Fixed numeric ids, so Kubernetes' runAsNonRoot can check them (deploy/k8s/).
RUN groupadd --system --gid 10001 campushub \
    && useradd --system --uid 10001 --gid campushub --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin campushub

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# `python -m app migrate` runs Alembic from here (script_location = alembic).
COPY alembic.ini ./
COPY alembic ./alembic
# Only embedded mode (no DATABASE_URL) writes: its SQLite file goes to /app/data.
RUN mkdir -p /app/data && chown campushub:campushub /app/data

USER 10001:10001

EXPOSE 8889

# Liveness only (no Postgres/Redis check); readiness is GET /ready. No curl in slim images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PORT', '8889')), timeout=4); c.request('GET', '/health'); sys.exit(0 if c.getresponse().status == 200 else 1)"

CMD ["python", "-m", "app", "serve"]
