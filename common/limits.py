"""Size limits of the protocol, in a module light enough for every command to import."""

# Payload bytes per Chunk by default. A server's peak memory with many clients grows with the chunk size
# (gRPC buffers per connection after the messages it has seen): at 1,000 clients, 1 MiB chunks peaked at
# 1,054 MiB, 256 KiB at 911, 64 KiB at 751, at 103 / 99 / 92 updates/s (benchmarks/scale.py, README).
DEFAULT_CHUNK_BYTES = 256 << 10
MAX_CHUNK_BYTES = 4 << 20       # protocol limit on Chunk.data
# gRPC's own cap on one message: a full Chunk plus room for its header fields.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)
