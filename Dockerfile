# The mro-search image for docker-compose.yml: workers, the one-off setup job and the dashboard.
# CPU build of PyTorch; for CUDA, change the index URL (e.g. .../whl/cu126).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

WORKDIR /app

# torch first, from the CPU index, so the project's dependencies do not pull a CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY supernet ./supernet
COPY search_service ./search_service
RUN pip install .

# study files; checkpoints, reports and SQLite files go to runs/, the artifact store of
# docker-compose.yml to /artifacts: both made here, owned by mro, so that a new named volume
# mounted there starts with that owner
COPY studies ./studies
RUN useradd --create-home --uid 1000 mro && mkdir -p /app/runs /artifacts && chown mro:mro /app/runs /artifacts
USER mro

CMD ["mro-search", "--help"]
