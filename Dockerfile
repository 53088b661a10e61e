# latlab for GPU boxes: build LUTs with the cuda backend and measure networks.
#   docker build -t latlab .
#   docker run --gpus all -v "$PWD/lut:/data" latlab profile --model resnet50 --backend cuda \
#       --grid reference --db /data/rn50.db
# The torch wheel from PyPI bundles its CUDA and cuDNN libraries; the base image supplies the CUDA
# user-space driver glue. Installation is the Makefile's (`make install`), as on any other machine.
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# Ubuntu's archive moves package versions under any pin; the base image tag fixes the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make git ca-certificates \
        glpk-utils coinor-cbc \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 latlab \
    && mkdir -p /opt/latlab /data \
    && chown latlab:latlab /opt/latlab /data

WORKDIR /opt/latlab
USER 1000
# torch (GBs) in a layer of its own: editing latlab's source does not download it again
COPY --chown=latlab:latlab Makefile ./
RUN make /opt/latlab/.venv/.torch PYTHON=python3 VENV=/opt/latlab/.venv
COPY --chown=latlab:latlab . .
RUN make install PYTHON=python3 VENV=/opt/latlab/.venv

ENV PATH=/opt/latlab/.venv/bin:$PATH \
    LATLAB_DB=/data/latlab.db
VOLUME ["/data"]
ENTRYPOINT ["latlab"]
CMD ["--help"]
