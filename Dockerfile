# Worker / generator image: `docker build -t stream-app .`, then `docker run stream-app worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, in its own layer: `pip install .` then finds its torch==2.13.0 pin met
# and pulls no CUDA wheels, and code changes do not re-download torch.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY . .
RUN pip install . \
    && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/stream-app \
    && chown app:app /var/lib/stream-app

USER app
WORKDIR /home/app

# Containers listen on every interface so Prometheus in another container can scrape /metrics.
ENV STREAM_APP_WEB_HOST=0.0.0.0 \
    STREAM_APP_WEB_PORT=6066 \
    STREAM_APP_STATE_DIR=/var/lib/stream-app
EXPOSE 6066

ENTRYPOINT ["stream-app"]
CMD ["worker"]
