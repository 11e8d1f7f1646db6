"""modelyard's vLLM plugin: see pyproject.toml and cpu_lora_fix.py."""
