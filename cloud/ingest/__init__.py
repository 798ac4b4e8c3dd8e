"""Ingest: the frames the devices sampled (announced on `{prefix}/{thing}/samples`, or found by
listing `{prefix}/raw/`) become pending frames, checked and remembered by sha256 (`state`), and
are cut into labeling batches (`batching`)."""
