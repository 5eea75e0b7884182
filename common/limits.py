"""Size limits of the protocol, in a module light enough for every command to import."""

# Payload bytes per Chunk by default. With upload turns and the read-buffer cap, a server's peak memory at
# 1,000 clients no longer depends on it (601-652 MiB for 64 KiB to 1 MiB); bigger chunks ingest faster (97 /
# 114 / 125 updates/s at 64 KiB / 256 KiB / 1 MiB, benchmarks/scale.py, benchmarks/results/HISTORY.md), but a
# client that ignores its upload turn makes the server hold one whole chunk per waiting stream, so the default
# stays moderate.
DEFAULT_CHUNK_BYTES = 256 << 10
MAX_CHUNK_BYTES = 4 << 20       # protocol limit on Chunk.data
MIN_CHUNK_BYTES = 1 << 10       # every Chunk.data but a tensor's last: bounds a stream's message count
# gRPC's own cap on one message: a full Chunk plus room for its header fields.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)
