# dicom-node: the node as a container. Installs exactly as CI does (scripts/install), runs as a
# non-root user, watches /data/inbox and keeps its journal in /data/var.
#   docker build -t dicom-node .
#   docker run -v $PWD/inbox:/data/inbox -v $PWD/var:/data/var -p 127.0.0.1:9464:9464 \
#     -e DICOM_NODE_DESTINATIONS_PACS_HOST=pacs.example.org dicom-node
# The node runs as uid 10001: mounted folders must be writable by it (chown -R 10001 ./inbox
# ./var), or run it as yourself with --user "$(id -u):$(id -g)". The entrypoint says so.
# No secrets are baked in: pass them at run time (e.g. -e DICOM_NODE_PSEUDONYM_SECRET=...).
# BASE: any Debian bookworm with python3 and python3-venv. Without a registry, make one from
# Debian packages (scripts/base-image) and build with podman or buildah:
#   scripts/base-image && podman build --network=host \
#     --build-arg BASE=localhost/dicom-node-base:bookworm -t dicom-node .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

WORKDIR /opt/dicom-node
COPY pyproject.toml README.md ./
COPY node ./node
COPY scripts/install scripts/docker-entrypoint ./scripts/
COPY config/docker.toml ./config/docker.toml
# pip_ca (optional, build time only, never in the image): the CA of a TLS-inspecting proxy
# between the build and PyPI, e.g. --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && scripts/install --no-apt --venv /opt/dicom-node/venv \
    && rm -rf /root/.cache \
    && useradd --system --create-home --uid 10001 dicomnode \
    && mkdir -p /data/inbox /data/var \
    && chown -R dicomnode /data

ENV PATH="/opt/dicom-node/venv/bin:$PATH" \
    DICOM_NODE_CONFIG=/opt/dicom-node/config/docker.toml \
    PYTHONUNBUFFERED=1

USER dicomnode
VOLUME ["/data/inbox", "/data/var"]
# /healthz and /metrics (config/docker.toml binds 0.0.0.0 so that Prometheus can scrape them)
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]
# checks the config and that the mounted volumes are writable by uid 10001, then runs the node
ENTRYPOINT ["/opt/dicom-node/scripts/docker-entrypoint"]
CMD ["watch"]
