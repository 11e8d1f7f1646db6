"""Stands in for vLLM's OpenAI server where the CUDA build cannot run (no GPU
here), so that models/vllm/server.py is exercised end to end: it records the
command line and environment the launcher gave it, and answers the routes the
orchestrator uses the way vLLM does: sleep mode's /sleep?level=N and /wake_up,
which vLLM mounts only with VLLM_SERVER_DEV_MODE=1, and LoRA adapters loaded at
runtime (/v1/load_lora_adapter, with --enable-lora and
VLLM_ALLOW_RUNTIME_LORA_UPDATING), which then answer under their own names. An
adapter directory holding a file named BAD is refused, as vLLM refuses a broken one.

GET /health answers what it recorded, so a test can read it back.
"""

from __future__ import annotations

import os
import sys
import time

import uvicorn
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response

ENV_SEEN = (
    "CUDA_VISIBLE_DEVICES", "VLLM_SERVER_DEV_MODE", "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_NO_USAGE_STATS", "HF_HUB_OFFLINE", "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
)


def option(name: str) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else None


app = FastAPI()
state: dict = {"sleep_levels": [], "wakes": 0, "sleeping": False, "lora_loads": [], "adapters": {}}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status)


@app.get("/health")
def health() -> dict:
    return {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in ENV_SEEN}, **state}


if os.environ.get("VLLM_SERVER_DEV_MODE") == "1" and "--enable-sleep-mode" in sys.argv:

    @app.post("/sleep")
    def sleep(level: int = Query(1, ge=0, le=2)) -> dict:
        state["sleep_levels"].append(level)
        state["sleeping"] = True
        return {"status": "sleeping", "level": level}

    @app.post("/wake_up")
    def wake_up() -> dict:
        state["wakes"] += 1
        state["sleeping"] = False
        return {"status": "awake", "tags": None}


if "--enable-lora" in sys.argv and os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"):

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: dict) -> Response:
        name, path = body["lora_name"], body["lora_path"]
        if name in state["adapters"] and not body.get("load_inplace"):
            return error(400, f"The lora adapter '{name}' has already been loaded.")
        if not os.path.isfile(os.path.join(path, "adapter_config.json")) or os.path.exists(os.path.join(path, "BAD")):
            return error(400, f"Loading lora {name} failed: No adapter found for {path}")
        state["adapters"][name] = path
        state["lora_loads"].append(name + (" in place" if body.get("load_inplace") else ""))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: dict) -> Response:
        if state["adapters"].pop(body["lora_name"], None) is None:
            return error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
        return PlainTextResponse("Success")


@app.post("/v1/chat/completions")
def chat(body: dict) -> JSONResponse:
    name = body.get("model")
    if name != option("--served-model-name") and name not in state["adapters"]:
        return error(404, f"The model `{name}` does not exist.")
    if state["sleeping"]:  # vLLM cannot serve while its weights are in host memory
        return JSONResponse({"error": {"message": "asleep", "type": "InternalServerError", "code": 500}}, 500)
    message = {"role": "assistant", "content": f"answered as {name}"}
    return JSONResponse({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


if __name__ == "__main__":
    uvicorn.run(app, host=option("--host") or "127.0.0.1", port=int(option("--port") or 8000), log_level="warning")
