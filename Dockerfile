# One image for the aggregation server and the client daemons.
FROM python:3.11-slim-bookworm

# Fashion-MNIST as IDX files in /usr/share/datasets/fashion-mnist: no download at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

# The CPU build of torch; PyPI's default Linux wheel is the multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY protos protos
COPY common common
COPY server server
COPY client client
COPY apps apps
# EXTRAS="[ray]" adds the Ray simulation backend (the compose `simulate` service builds it so).
ARG EXTRAS=""
# The same pins as scripts/setup.sh. The paths the compose volumes mount are made here, owned by the
# unprivileged user: a named volume starts as a copy of the image's folder, ownership included.
RUN pip install --no-cache-dir -c constraints.txt ".${EXTRAS}" \
 && useradd --system --create-home fedsqueeze \
 && install -d -o fedsqueeze -g fedsqueeze /out /state /certs
USER fedsqueeze
EXPOSE 50051
