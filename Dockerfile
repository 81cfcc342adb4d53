# One image for all three services; the command picks the service:
#   docker run crmsync python -m services.ingest   (or services.mapper, services.writer, crmsync CLI)
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CRMSYNC_CONFIG=/etc/crmsync/crmsync.yaml

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 crmsync \
    && mkdir -p /var/lib/crmsync && chown crmsync /var/lib/crmsync
ENV CRMSYNC_SCHEMAS_DIR=/app/schemas

USER crmsync
EXPOSE 8079 8080 8081 8082 8083 8084
CMD ["python", "-m", "services.ingest"]
