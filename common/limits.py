"""Size limits of the protocol, in a module light enough for every command to import."""

# Payload bytes per Chunk by default. gRPC lets a whole message in once its length prefix has arrived, so an
# upload waiting for the server's turn holds about one chunk in the server's buffers: 256 KiB keeps a thousand
# waiting uploads to a quarter of a GiB, at no cost in ingest rate (benchmarks/scale.py, README).
DEFAULT_CHUNK_BYTES = 256 << 10
MAX_CHUNK_BYTES = 4 << 20       # protocol limit on Chunk.data
# gRPC's own cap on one message: a full Chunk plus room for its header fields.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)
