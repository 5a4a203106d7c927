"""Exporters: where data leaves. Each takes batches (read-only) and delivers them somewhere."""
