"""Stands in for vLLM's OpenAI server where the CUDA build cannot run (no GPU
here), so that models/vllm/server.py is exercised end to end: it records the
command line and environment the launcher gave it, and answers the routes the
orchestrator uses the way vLLM does, including sleep mode's /sleep?level=N and
/wake_up, which vLLM mounts only with VLLM_SERVER_DEV_MODE=1.

GET /health answers what it recorded, so a test can read it back.
"""

from __future__ import annotations

import os
import sys
import time

import uvicorn
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

ENV_SEEN = (
    "CUDA_VISIBLE_DEVICES", "VLLM_SERVER_DEV_MODE", "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_NO_USAGE_STATS", "HF_HUB_OFFLINE",
)


def option(name: str) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else None


app = FastAPI()
state = {"sleep_levels": [], "wakes": 0, "sleeping": False}


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


@app.post("/v1/chat/completions")
def chat(body: dict) -> JSONResponse:
    name = option("--served-model-name")
    if body.get("model") != name:
        error = {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError", "code": 404}
        return JSONResponse({"error": error}, status_code=404)
    if state["sleeping"]:  # vLLM cannot serve while its weights are in host memory
        return JSONResponse({"error": {"message": "asleep", "type": "InternalServerError", "code": 500}}, 500)
    message = {"role": "assistant", "content": "ok"}
    return JSONResponse({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


if __name__ == "__main__":
    uvicorn.run(app, host=option("--host") or "127.0.0.1", port=int(option("--port") or 8000), log_level="warning")
