# fleetql's image: `docker build -t fleetql .`, then `docker run fleetql serve` (see README,
# "Running in containers"). Two stages: the first builds a virtualenv (with a compiler, for any
# dependency that has no wheel for the platform), the second copies only that virtualenv onto a
# clean slim base and runs it as an unprivileged user.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/fleetql
WORKDIR /src
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir fleetql && touch fleetql/__init__.py \
    && /opt/fleetql/bin/pip install . \
    && /opt/fleetql/bin/pip uninstall --yes fleetql
COPY fleetql ./fleetql
COPY alembic ./alembic
# A non-editable install has no source tree beside it: the migrations go where
# fleetql.db.migrations looks for them in an installed prefix.
RUN /opt/fleetql/bin/pip install --no-deps . \
    && mkdir -p /opt/fleetql/share/fleetql \
    && cp -r alembic /opt/fleetql/share/fleetql/alembic \
    && /opt/fleetql/bin/python -c "from fleetql.db import migrations; print('migrations head', migrations.head_revision())"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 fleetql \
    && useradd --system --uid 10001 --gid fleetql --home-dir /var/lib/fleetql --create-home fleetql
COPY --from=build /opt/fleetql /opt/fleetql
ENV PATH=/opt/fleetql/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEETQL_SERVER__HOST=0.0.0.0 \
    FLEETQL_LOG__FORMAT=json
USER 10001:10001
WORKDIR /var/lib/fleetql
EXPOSE 8080
# Ready means: the database answers at the code's migration and the event backend is connected.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
# fleetql drains on SIGTERM (README, "Shutdown and rolling restarts") and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fleetql"]
CMD ["serve"]
