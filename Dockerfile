# Local (CPU) image of mise-rl: the same set-up script a fresh machine runs.
# GPU clusters: build with --build-arg TARGET=gpu on a CUDA base image (the launch docs cover it).
FROM python:3.11-slim

ARG TARGET=cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git make openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mise-rl
COPY . .
RUN MISE_TARGET=${TARGET} bash launch/setup.sh
ENV PATH=/opt/mise-rl/.venv/bin:$PATH

CMD ["python", "-m", "launch.train"]
