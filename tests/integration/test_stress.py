"""16 concurrent clients sign with every key type through the real server:
zero failures, every signature valid. Proves the token is safe under load."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_core.envelope import parse_envelope
from custody_core.keys import PublicKey

CLIENTS = 16
SIGNATURES = 2_000
ALGORITHMS = (pb.KEY_ALGORITHM_ECDSA_P256, pb.KEY_ALGORITHM_ECDSA_P384,
              pb.KEY_ALGORITHM_ED25519, pb.KEY_ALGORITHM_RSA_3072)


def test_concurrent_signing_with_every_key_type(service: Any, key_admin: Any) -> None:
    keys: dict[str, PublicKey] = {}
    aliases = []
    for algorithm in ALGORITHMS:
        alias = f"stress-{uuid.uuid4().hex[:10]}"
        info = key_admin.CreateKey(pb.CreateKeyRequest(alias=alias, algorithm=algorithm)).key
        keys[info.keyid] = PublicKey.from_dict(json.loads(info.public_key_json),
                                               keyid=info.keyid)
        aliases.append(alias)
    # Weighted so that slow RSA does not dominate the run time.
    schedule = [aliases[i % 3] if i % 20 else aliases[3] for i in range(SIGNATURES)]
    errors: list[BaseException] = []
    results: list[pb.SignLinkResponse] = []
    lock = threading.Lock()
    channels = [service.open_channel() for _ in range(CLIENTS)]

    def sign(index: int) -> None:
        channel = channels[index % CLIENTS]
        stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = stub.SignLink(pb.SignLinkRequest(
                step_name=f"step-{index}",
                key_alias=schedule[index],
                products=[pb.Artifact(path=f"out/{index}", digest={"sha256": "ab" * 32})],
                envelope=(pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE)[index % 2],
            ), timeout=60)
            with lock:
                results.append(response)
        except BaseException as error:  # collected, asserted below
            with lock:
                errors.append(error)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(sign, range(SIGNATURES)))
    for channel in channels:
        channel.close()

    assert errors == []
    assert len(results) == SIGNATURES
    for response in results:
        envelope = parse_envelope(response.signed)
        assert envelope.verified_keyids(keys) == {response.keyid}
