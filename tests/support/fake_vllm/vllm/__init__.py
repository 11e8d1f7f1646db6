"""A stand-in for the CUDA build of vLLM (tests/test_vllm_simulated_gpu.py)."""
