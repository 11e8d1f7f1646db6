"""Building blocks shared by the orchestrator and every service process.

core/ imports nothing from orchestrator/ or models/.
"""
