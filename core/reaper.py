"""Sidecar that outlives a killed orchestrator just long enough to clean up.

The kernel's parent-death signal reaches a service's first process only; an
engine's own children (vLLM's workers, say) would survive a SIGKILLed
orchestrator. This process is started by the orchestrator in a session of its
own, waits for it to die, then kills every process that carries its pid in
MODELYARD_PARENT_PID. Its memory cost is one small Python process.

    python -m core.reaper --parent PID --instance ID
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from core.process import reap_orphans


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m core.reaper")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--instance", required=True)
    args = parser.parse_args()
    # Ctrl-C in a terminal is for the orchestrator, which then stops its services itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == args.parent:
        time.sleep(0.2)
    reap_orphans(args.instance, grace=2.0, parent=args.parent)


if __name__ == "__main__":
    main()
