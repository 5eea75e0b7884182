"""Upload turns against a live server: a waiting upload sends its header and nothing more until its turn.

The server reads one upload at a time here (``--concurrent-uploads 1``).
Alice's upload takes the slot and stalls after its header. Bob's upload, made
as the client daemon makes it (TurnTakingUpload), must then send only its
header; once Alice's call ends, Bob gets the turn signal, sends his chunks and
commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from fedsqueeze.upload_turns import TURN_METADATA, TurnTakingUpload
from fedsqueeze.v1 import federation_pb2 as pb

from conftest import FAST_SERVER, Cluster
from test_refusals import RAW_FLOAT32, Prober, zeros_like


def test_a_waiting_upload_sends_its_payload_only_on_its_turn(cluster: Cluster) -> None:
    cluster.server(*FAST_SERVER, *RAW_FLOAT32, "--rounds", "1", "--min-clients", "2", "--concurrent-uploads", "1")
    alice, bob = (Prober(cluster.channel(), client_id=name) for name in ("alice", "bob"))
    alice_task, bob_task = alice.task(), bob.task()

    release = threading.Event()

    def stalled() -> Iterator[pb.UpdateMessage]:
        yield alice.header(alice_task)
        release.wait(30)
    alice_call = alice.stub.SubmitUpdate.future(stalled())
    assert tuple(alice_call.initial_metadata()) == TURN_METADATA, "the free slot was not granted"

    chunks = bob.chunks(zeros_like(bob.download(bob_task)))
    sent: list[pb.UpdateMessage] = []

    def counted() -> Iterator[pb.UpdateMessage]:
        for chunk in chunks:
            sent.append(chunk)
            yield chunk
    bob_call = TurnTakingUpload(bob.header(bob_task), counted()).start(bob.stub.SubmitUpdate, timeout=60)
    time.sleep(1.5)
    assert not sent and not bob_call.done(), f"bob sent {len(sent)} chunks while alice held the only slot"

    alice_call.cancel()
    release.set()
    reply = bob_call.result(timeout=30)
    assert reply.round == 1 and len(sent) == len(chunks)
    assert tuple(bob_call.initial_metadata()) == TURN_METADATA
    assert reply.payload_bytes == sum(len(c.chunk.data) for c in chunks)
