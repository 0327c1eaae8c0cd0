# One image for the API, the worker and Flower (docker-compose.yml picks the command).
FROM python:3.12-slim
WORKDIR /app
RUN useradd --create-home jobql
COPY pyproject.toml README.md ./
COPY gql ./gql
COPY tasks ./tasks
RUN pip install --no-cache-dir . "flower>=2,<3"
USER jobql
ENV JOBQL_DATA_DIR=/tmp/jobql
EXPOSE 8000
CMD ["uvicorn", "gql.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--workers", "4", "--http", "gql.sockets:BoundedHttpToolsProtocol"]
