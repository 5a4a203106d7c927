"""The zero-code side that runs inside the user's app (OpenTelemetry distro and helpers).

It must import neither ``collector`` nor ``exporters``, and nothing heavy at import time.
"""
