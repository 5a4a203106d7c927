"""Processors: steps over batches, in place on the OTLP protobuf, each holding the next consumer."""
