# One image for every role (worker, api, init); the command picks the role.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY api ./api
COPY infra ./infra
RUN pip install --no-cache-dir . && useradd --system --uid 10001 entasis
USER entasis
ENTRYPOINT ["entasis"]
CMD ["--help"]
