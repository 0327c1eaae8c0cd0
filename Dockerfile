# One image for the API, the worker and Flower (docker-compose.yml picks the command).
# Build stage: wheels for JobQL and every dependency (any compiler stays here).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gql ./gql
COPY tasks ./tasks
RUN pip wheel --no-cache-dir --wheel-dir /wheels . "flower>=2,<3"

# Final stage: the wheels installed, nothing to build with, a user without privileges.
FROM python:3.12-slim
RUN useradd --create-home --uid 10001 jobql
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels jobql flower && rm -rf /wheels
USER jobql
WORKDIR /home/jobql
ENV JOBQL_DATA_DIR=/tmp/jobql PYTHONUNBUFFERED=1
EXPOSE 8000 5555
# SIGTERM drains: subscribers told at once (1001), in-flight operations finish.
STOPSIGNAL SIGTERM
CMD ["jobql", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
