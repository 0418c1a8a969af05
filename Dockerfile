# OpenELB (Python): one image for `openelb controller` and `openelb speaker`.
#   docker build -t docker.io/openelb/openelb-python:0.1.0 .
# The chart runs the controller as UID 65532 without capabilities, and the speaker (hostNetwork)
# as root with only NET_ADMIN, NET_RAW, NET_BIND_SERVICE and SYS_NICE. The image's default user is
# root, as Go OpenELB's images: its manifest sets no runAsUser, and a non-root default would leave
# its speaker without the capabilities it adds (and its controller unable to bind port 443).

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv
WORKDIR /app
# Dependencies first (cached layer), exactly as locked, without the dev group.
COPY pyproject.toml uv.lock README.md ./
# The lab is a workspace member (dev group only): uv needs its pyproject to read the workspace,
# and installs none of it here.
COPY lab/pyproject.toml ./lab/
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
# iproute2: the speaker's addresses on the openelb0 link and `ip route get` for Eip interfaces.
# gobgpd: its `gobgp` CLI, for Go OpenELB's readiness probe (`gobgp -p 50051 global`) and
# operators' `kubectl exec ... gobgp neighbor` against the speaker's read-only GoBGP API.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 gobgpd \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin openelb
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["openelb"]
CMD ["--help"]
