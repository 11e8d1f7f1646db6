"""The orchestrator process: one OpenAI-compatible endpoint in front of
on-demand model services."""
