# The mimamori image: every stage (`mimamori ingest | detector | alerts | safety | app | db migrate`)
# and the gateway (`mimamori gateway`). Published by .github/workflows/release.yml as
# ghcr.io/<org>/mimamori:<version>; docker-compose.yml only names the published image.
#
# Build locally: docker build -t mimamori:dev .   (then MIMAMORI_IMAGE=mimamori:dev docker compose ...)

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (see .dockerignore); templates, static files and migrations are
# package data in pyproject.toml.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -c "import zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/mimamori-*.whl')[0]).namelist(); \
assert any(n.startswith('mimamori/kernel/migrations/') and n.endswith('.sql') for n in names), 'migrations missing from the wheel'; \
assert any(n.startswith('mimamori/app/templates/') for n in names), 'templates missing from the wheel'"

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MIMAMORI_DATA_DIR=/var/lib/mimamori \
    MIMAMORI_LOG_FORMAT=json
COPY --from=build /wheels /wheels
RUN pip install /wheels/mimamori-*.whl && rm -rf /wheels \
 && groupadd --system --gid 10001 mimamori \
 && useradd --system --uid 10001 --gid mimamori --home-dir /var/lib/mimamori --create-home --shell /usr/sbin/nologin mimamori
USER 10001:10001
WORKDIR /var/lib/mimamori
# 8000: the web app; 9100: /metrics /healthz /readyz of a stage (MIMAMORI_OPS_PORT).
EXPOSE 8000 9100
ENTRYPOINT ["mimamori"]
CMD ["--help"]
