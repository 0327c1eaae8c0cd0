# One image for the API, the worker, beat and Flower (docker-compose.yml picks the command).
# Python 3.11: the version CI's main pass runs every test on (.ci/run).
# Build stage: wheels for JobQL and exactly the dependency versions of uv.lock, each checked
# against the lock's hashes (any compiler stays here).
FROM python:3.11-slim AS build
# The extras of pyproject.toml the image installs, space-separated: by default what
# docker-compose.yml and the documented options use (PostgreSQL results, msgpack, zstd,
# Flower). `docker build --build-arg EXTRAS="postgres"` makes a smaller image.
ARG EXTRAS="postgres msgpack zstd flower"
WORKDIR /src
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock README.md ./
COPY gql ./gql
COPY tasks ./tasks
COPY devtools ./devtools
RUN uv export --frozen --no-emit-project --no-dev --format requirements-txt \
        $(for extra in $EXTRAS; do printf -- '--extra %s ' "$extra"; done) -o requirements.txt \
    && pip wheel --no-cache-dir --require-hashes -r requirements.txt --wheel-dir /wheels \
    && pip wheel --no-cache-dir --no-deps . --wheel-dir /wheels

# Final stage: the wheels installed, nothing to build with, a user without privileges.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 jobql
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER jobql
WORKDIR /home/jobql
ENV JOBQL_DATA_DIR=/tmp/jobql PYTHONUNBUFFERED=1
EXPOSE 8000 5555
# SIGTERM drains: subscribers told at once (1001), in-flight operations finish.
STOPSIGNAL SIGTERM
CMD ["jobql", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
