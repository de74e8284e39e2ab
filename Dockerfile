# Custody server image: the service plus SoftHSM2 for the embedded/dev token.
# For a hardware HSM, mount its PKCS#11 module and set [hsm].module in the config.
FROM python:3.11-slim-bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/custody
COPY pyproject.toml README.md ./
COPY core ./core
COPY client ./client
COPY server ./server
COPY softhsm ./softhsm
COPY deploy/postgres ./deploy/postgres
RUN pip install --no-cache-dir '.[server]'
# The mount points of docker-compose.yml's volumes, owned by the service user (a new named
# volume takes the owner and mode of the directory it is mounted on).
RUN useradd --system --home /var/lib/custody custody \
    && mkdir -p /var/lib/custody/hsm /var/lib/custody/tls /var/lib/custody/audit \
        /var/lib/custody-pin /var/lib/custody-db-secret \
    && chown -R custody /var/lib/custody /var/lib/custody-pin /var/lib/custody-db-secret \
    && chmod 700 /var/lib/custody /var/lib/custody/hsm /var/lib/custody/tls \
        /var/lib/custody/audit /var/lib/custody-pin /var/lib/custody-db-secret
USER custody
EXPOSE 50051
ENTRYPOINT ["custody-server"]
CMD ["--config", "/etc/custody/custody.toml"]
