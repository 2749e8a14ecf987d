"""A malicious relay that substitutes its own key configuration is refused before any request is sent.

The real API (gateway, signing key in its data dir) runs behind the real relay on loopback. Beside it runs
a malicious relay: it hands phones its own HPKE key (signed by its own Ed25519 key, unsigned, or under the
gateway's genuine signature headers) and, when a phone seals to that key, opens the request, reads it and
re-seals it to the gateway through the genuine relay (the attack of RFC 9458 section 6.1). A control test
shows the attack works on a phone that skips the check; the others show the phone refuses (typed error)
and that no request reaches the malicious relay's ``/ohttp``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from veil.client_sdk.api import PhoneAPI
from veil.client_sdk.client import VeilClient
from veil.client_sdk.ohttp import (
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    GatewayKeyPair,
    KeyConfigSignatureError,
    SigningKeyMismatchError,
    decapsulate_request,
    decode_key_configs,
    encapsulate_request,
    encode_key_configs,
    sign_key_configs,
    verify_key_configs,
)
from veil.client_sdk.ohttp.keysig import encode_public_key, signing_key_from_seed
from veil.client_sdk.param_store import ParamStore
from veil.client_sdk.runtime.manifest import set_gateway_public_key
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.gateway_signing import KeyConfigSigner
from veil.cloud_service.relay import RelayConfig, create_relay_app

pytestmark = pytest.mark.integration

KEYS_PATH = "/.well-known/ohttp-gateway"
SIGNATURE_FIELDS = ("content-digest", "signature-input", "signature", "veil-signing-key")


class MaliciousRelay:
    """A relay with its own OHTTP key that opens requests sealed to it and re-seals them to the gateway.

    ``mode`` picks the key configuration it hands out: ``"own-signature"`` (signed by the attacker's
    Ed25519 key), ``"unsigned"``, or ``"gateway-signature"`` (the gateway's genuine signature fields
    copied onto the attacker's list).
    """

    def __init__(self, genuine_relay: str, mode: str) -> None:
        self.genuine, self.mode = genuine_relay, mode
        self.key = GatewayKeyPair.generate(7)
        self.attacker = signing_key_from_seed(b"\x66" * 32)
        self.posts = 0
        self.plaintexts: list[bytes] = []

    async def keys(self, request: Request) -> Response:
        body = encode_key_configs([self.key.config])
        if self.mode == "own-signature":
            headers = sign_key_configs(body, self.attacker)
        elif self.mode == "gateway-signature":
            async with httpx.AsyncClient() as client:
                genuine = await client.get(self.genuine + KEYS_PATH)
            headers = {"content-type": KEYS_MEDIA_TYPE}
            headers.update({name: genuine.headers[name] for name in SIGNATURE_FIELDS})
        else:
            headers = {"content-type": KEYS_MEDIA_TYPE}
        return Response(body, headers=headers)

    async def ohttp(self, request: Request) -> Response:
        self.posts += 1
        plaintext, to_phone = decapsulate_request({self.key.key_id: self.key}, await request.body())
        self.plaintexts.append(plaintext)  # the relay now sees content next to the phone's address
        async with httpx.AsyncClient() as client:
            config = decode_key_configs((await client.get(self.genuine + KEYS_PATH)).content)[0]
            sealed, to_gateway = encapsulate_request(config, plaintext)
            answer = await client.post(
                self.genuine + "/ohttp", content=sealed, headers={"content-type": REQUEST_MEDIA_TYPE}
            )
        inner = to_gateway.decapsulate_response(answer.content)
        return Response(to_phone.encapsulate_response(inner), media_type=RESPONSE_MEDIA_TYPE)

    def app(self) -> Starlette:
        return Starlette(routes=[Route(KEYS_PATH, self.keys), Route("/ohttp", self.ohttp, methods=["POST"])])


@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("keysig-api")
    config = ServiceConfig(data_dir=root, model="tiny-llama")
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model="tiny-llama"))
    with BackgroundServer(create_app(config, preloaded=served)) as api:  # noqa: SIM117 - relay needs api.url
        with BackgroundServer(create_relay_app(RelayConfig(gateway_url=api.url))) as relay:
            yield config, api.url, relay.url


def _models(client: VeilClient) -> Any:
    async def go() -> Any:
        async with client:
            return await client.api.models()

    return asyncio.run(go())


def _phone(relay: str, tmp_path: Path, **kwargs: Any) -> VeilClient:
    return VeilClient.through_relay(
        relay + "/ohttp", ParamStore(tmp_path / "params.veil"), model="tiny-llama", **kwargs
    )


def test_the_gateway_signs_with_its_data_dir_key_and_the_relay_passes_the_signature(stack) -> None:
    config, api, relay = stack
    public = KeyConfigSigner.from_config(config).public_key  # what `veil gateway public-key` prints
    key_file = config.data_dir / "gateway-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    direct, relayed = httpx.get(api + KEYS_PATH), httpx.get(relay + KEYS_PATH)
    assert relayed.content == direct.content
    for name in (*SIGNATURE_FIELDS, "content-type", "cache-control"):
        assert relayed.headers[name] == direct.headers[name], name
    verified = verify_key_configs(200, relayed.headers.multi_items(), relayed.content, public_key=public)
    assert verified.configs and 'tag="veil-ohttp-keys"' in relayed.headers["signature-input"]


def test_the_genuine_relay_path_works_with_a_shipped_key(stack, tmp_path: Path) -> None:
    config, _, relay = stack
    public = KeyConfigSigner.from_config(config).public_key
    cards = _models(_phone(relay, tmp_path, gateway_public_key=encode_public_key(public)))
    assert cards[0]["id"] == "tiny-llama"
    # the key read from an ONNX export's manifest works the same
    set_gateway_public_key(tmp_path / "onnx", encode_public_key(public))
    assert _models(_phone(relay, tmp_path, model_dir=tmp_path / "onnx"))[0]["id"] == "tiny-llama"


def test_without_the_check_the_malicious_relay_reads_every_request(stack) -> None:
    """Control: a phone that takes the relay's key unchecked works, and the relay sees the content."""
    _, _, relay = stack
    evil = MaliciousRelay(relay, "own-signature")
    with BackgroundServer(evil.app()) as mitm:
        config = decode_key_configs(httpx.get(mitm.url + KEYS_PATH).content)[0]

        async def go() -> Any:
            async with AsyncOHTTPClient(mitm.url + "/ohttp", key_config=config) as transport:
                return await PhoneAPI(transport, "tiny-llama").models()

        assert asyncio.run(go())[0]["id"] == "tiny-llama"
    assert evil.posts == 1 and b"/v1/models" in evil.plaintexts[0]


@pytest.mark.parametrize("mode", ["own-signature", "unsigned", "gateway-signature"])
def test_a_phone_with_the_shipped_key_refuses_a_substituted_configuration(
    stack, tmp_path: Path, mode: str
) -> None:
    config, _, relay = stack
    public = KeyConfigSigner.from_config(config).public_key
    set_gateway_public_key(tmp_path / "onnx", encode_public_key(public))
    evil = MaliciousRelay(relay, mode)
    with BackgroundServer(evil.app()) as mitm:
        for trust in ({"gateway_public_key": public}, {"model_dir": tmp_path / "onnx"}):
            expected = SigningKeyMismatchError if mode == "own-signature" else KeyConfigSignatureError
            with pytest.raises(expected):
                _models(_phone(mitm.url, tmp_path, **trust))
    assert evil.posts == 0 and evil.plaintexts == []


def test_a_key_pinned_on_first_use_refuses_a_later_substitution(stack, tmp_path: Path) -> None:
    config, _, relay = stack
    assert _models(_phone(relay, tmp_path))[0]["id"] == "tiny-llama"  # first use: pins the key
    pin = tmp_path / "params.veil.gateway-key"
    assert pin.read_text().strip() == KeyConfigSigner.from_config(config).public_key_b64
    assert os.stat(pin).st_mode & 0o777 == 0o600
    evil = MaliciousRelay(relay, "own-signature")
    with BackgroundServer(evil.app()) as mitm, pytest.raises(SigningKeyMismatchError):
        _models(_phone(mitm.url, tmp_path))  # the app restarted: same parameter file, same pin
    assert evil.posts == 0
    assert _models(_phone(relay, tmp_path))[0]["id"] == "tiny-llama"


def _production(tmp_path: Path, **kwargs: Any) -> ServiceConfig:
    """A production config with every other secret set (whatever the config requires besides ours)."""
    names = {f.name for f in dataclasses.fields(ServiceConfig)}
    others = {"gateway_kek": b"k" * 32, "relay_secret": b"r" * 32}
    kwargs = {**{k: v for k, v in others.items() if k in names}, **kwargs}
    return ServiceConfig(data_dir=tmp_path, environment="production", **kwargs)


def test_production_refuses_a_missing_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="VEIL_GATEWAY_SIGNING_KEY"):
        _production(tmp_path)
    with pytest.raises(ValueError, match="32 bytes"):
        ServiceConfig(data_dir=tmp_path, gateway_signing_key=b"short")
    seed = b"s" * 32
    signer = KeyConfigSigner.from_config(_production(tmp_path, gateway_signing_key=seed))
    assert signer.public_key == KeyConfigSigner(signing_key_from_seed(seed)).public_key
    assert not (tmp_path / "gateway-signing.key").exists()  # nothing generated in production
