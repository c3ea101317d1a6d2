# The gateway as a small non-root image: `docker build -t evi-phone-gateway . && docker run -p 8080:8080 --env-file .env evi-phone-gateway`
# `--build-arg EXTRAS=voice` adds the voice extra (eSpeak NG and PocketSphinx, for the built-in EVI agent's
# speech); the gateway itself needs no extra. Deployment: docs/deployment.md.
FROM python:3.11-slim AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "evi-phone-gateway${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels && groupadd --gid 10001 gateway && useradd --create-home --uid 10001 --gid 10001 gateway
# Numeric, so Kubernetes can check runAsNonRoot against the image itself (deploy/kubernetes/deployment.yaml).
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
CMD ["gateway", "serve"]
