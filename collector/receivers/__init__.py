"""Receivers: where data enters. They decode, check and count, then hand batches to consumers."""
