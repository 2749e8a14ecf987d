"""HPKE base mode: RFC 9180 Appendix A vectors, and interop with cryptography's own HPKE both ways."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hpke as crypto_hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.client_sdk.ohttp.hpke import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    DHKEMX25519,
    KDF_HKDF_SHA256,
    KEM_MLKEM768_X25519,
    KEM_X25519_HKDF_SHA256,
    MLKEM768X25519,
    KEMError,
    MessageLimitReachedError,
    OpenError,
    Suite,
    UnsupportedAlgorithmError,
    setup_base_r,
    setup_base_s,
)

h = bytes.fromhex
INFO = h("4f6465206f6e2061204772656369616e2055726e")  # "Ode on a Grecian Urn"
PT = h("4265617574792069732074727574682c20747275746820626561757479")

# RFC 9180 A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
A1 = {
    "suite": (KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "exporter_secret": "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
    "encryptions": {
        0: "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
        1: "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
        2: "498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180",
        4: "583bd32bc67a5994bb8ceaca813d369bca7b2a42408cddef5e22f880b631215a09fc0012bc69fccaa251c0246d",
        255: "7175db9717964058640a3a11fb9007941a5d1757fda1a6935c805c21af32505bf106deefec4a49ac38d71c9e0a",
        256: "957f9800542b0b8891badb026d79cc54597cb2d225b54c00c5238c25d05c30e3fbeda97d2e0e1aba483a2df9f2",
    },
    "exports": {
        "": "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee",
        "00": "2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5",
        "54657374436f6e74657874": "e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931",
    },
}
# RFC 9180 A.2.1: the same KEM and KDF with ChaCha20-Poly1305.
A2 = {
    "suite": (KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
    "ikmE": "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b",
    "skEm": "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
    "pkEm": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "ikmR": "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df",
    "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    "shared_secret": "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7",
    "key": "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91",
    "base_nonce": "5c4d98150661b848853b547f",
    "exporter_secret": "a3b010d4994890e2c6968a36f64470d3c824c8f5029942feb11e7a74b2921922",
    "encryptions": {
        0: "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
        1: "6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c",
        256: "7a4a13e9ef23978e2c520fd4d2e757514ae160cd0cd05e556ef692370ca53076214c0c40d4c728d6ed9e727a5b",
    },
    "exports": {
        "": "4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e",
        "54657374436f6e74657874": "5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53",
    },
}


@pytest.mark.parametrize("vector", [A1, A2], ids=["A.1.1", "A.2.1"])
def test_rfc_9180_base_vectors(vector: dict) -> None:
    suite = Suite(*vector["suite"])
    kem = DHKEMX25519()
    sk_e, pk_e = kem.derive_key_pair(h(vector["ikmE"]))
    sk_r, pk_r = kem.derive_key_pair(h(vector["ikmR"]))
    assert (sk_e.hex(), pk_e.hex()) == (vector["skEm"], vector["pkEm"])
    assert (sk_r.hex(), pk_r.hex()) == (vector["skRm"], vector["pkRm"])

    shared_secret, enc = kem.encap(pk_r, ephemeral_key=sk_e)
    assert enc == pk_e and shared_secret.hex() == vector["shared_secret"]
    assert kem.decap(enc, sk_r) == shared_secret

    enc, sender = setup_base_s(suite, pk_r, INFO, ephemeral_key=sk_e)
    receiver = setup_base_r(suite, enc, sk_r, INFO)
    for ctx in (sender, receiver):
        assert (ctx.key.hex(), ctx.base_nonce.hex()) == (vector["key"], vector["base_nonce"])
        assert ctx.exporter_secret.hex() == vector["exporter_secret"]
    for seq, ct in vector["encryptions"].items():
        aad = f"Count-{seq}".encode()
        sender.seq = receiver.seq = seq
        assert sender.seal(aad, PT).hex() == ct
        assert receiver.open(aad, h(ct)) == PT
        assert sender.seq == receiver.seq == seq + 1
    for context, value in vector["exports"].items():
        assert sender.export(h(context), 32).hex() == value
        assert receiver.export(h(context), 32).hex() == value


def _crypto_keys(kem_id: int, private_key: bytes):
    """The same key pair as cryptography objects."""
    if kem_id == KEM_X25519_HKDF_SHA256:
        sk = x25519.X25519PrivateKey.from_private_bytes(private_key)
        return sk, sk.public_key()
    expanded = hashlib.shake_256(private_key).digest(96)  # the X-Wing seed expansion
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    sk = crypto_hpke.MLKEM768X25519PrivateKey(sk_m, sk_x)
    return sk, crypto_hpke.MLKEM768X25519PublicKey(sk_m.public_key(), sk_x.public_key())


_CRYPTO_KEM = {
    KEM_X25519_HKDF_SHA256: crypto_hpke.KEM.X25519,
    KEM_MLKEM768_X25519: crypto_hpke.KEM.MLKEM768_X25519,
}
_CRYPTO_AEAD = {
    AEAD_AES_128_GCM: crypto_hpke.AEAD.AES_128_GCM,
    AEAD_AES_256_GCM: crypto_hpke.AEAD.AES_256_GCM,
    AEAD_CHACHA20_POLY1305: crypto_hpke.AEAD.CHACHA20_POLY1305,
}
_SUITES = [(kem, aead) for kem in _CRYPTO_KEM for aead in _CRYPTO_AEAD]


@pytest.mark.parametrize(("kem_id", "aead_id"), _SUITES)
def test_interop_with_cryptography_both_ways(kem_id: int, aead_id: int) -> None:
    suite = Suite(kem_id, KDF_HKDF_SHA256, aead_id)
    theirs = crypto_hpke.Suite(_CRYPTO_KEM[kem_id], crypto_hpke.KDF.HKDF_SHA256, _CRYPTO_AEAD[aead_id])
    sk, pk = suite.kem.generate_key_pair()
    crypto_sk, crypto_pk = _crypto_keys(kem_id, sk)
    assert suite.kem.enc_size == _CRYPTO_KEM[kem_id].enc_length()
    message = b"an anonymous upload " * 7

    enc, sender = setup_base_s(suite, pk, b"veil info")
    assert theirs.decrypt(enc + sender.seal(b"", message), crypto_sk, b"veil info") == message

    sealed = theirs.encrypt(message, crypto_pk, b"veil info")
    receiver = setup_base_r(suite, sealed[: suite.kem.enc_size], sk, b"veil info")
    assert receiver.open(b"", sealed[suite.kem.enc_size :]) == message


def test_hybrid_public_key_is_mlkem_then_x25519() -> None:
    kem = MLKEM768X25519()
    sk, pk = kem.generate_key_pair()
    expanded = hashlib.shake_256(sk).digest(96)
    pk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).public_key().public_bytes_raw()
    pk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw()
    assert pk == pk_m + pk_x and len(pk) == kem.public_key_size == 1216
    shared_secret, enc = kem.encap(pk)
    assert len(enc) == 1120 and kem.decap(enc, sk) == shared_secret
    with pytest.raises(UnsupportedAlgorithmError):
        kem.encap(pk, ephemeral_key=bytes(32))


@pytest.mark.parametrize("kem_id", list(_CRYPTO_KEM))
def test_tampering_and_wrong_keys_fail(kem_id: int) -> None:
    suite = Suite(kem_id)
    sk, pk = suite.kem.generate_key_pair()
    other_sk, _ = suite.kem.generate_key_pair()
    enc, sender = setup_base_s(suite, pk, b"info")
    ct = sender.seal(b"aad", b"secret")
    with pytest.raises(OpenError):
        setup_base_r(suite, enc, sk, b"info").open(b"aad", ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(OpenError):
        setup_base_r(suite, enc, sk, b"other info").open(b"aad", ct)
    with pytest.raises(OpenError):
        setup_base_r(suite, enc, sk, b"info").open(b"other aad", ct)
    with pytest.raises(OpenError):
        setup_base_r(suite, enc, other_sk, b"info").open(b"aad", ct)
    receiver = setup_base_r(suite, enc, sk, b"info")
    receiver.seq = 1  # out of order
    with pytest.raises(OpenError):
        receiver.open(b"aad", ct)
    assert receiver.seq == 1
    with pytest.raises(KEMError):
        suite.kem.decap(enc[:-1], sk)


def test_low_order_x25519_point_is_refused() -> None:
    kem = DHKEMX25519()
    sk, pk = kem.generate_key_pair()
    with pytest.raises(KEMError):
        kem.decap(bytes(32), sk)
    with pytest.raises(KEMError):
        kem.encap(bytes(32))


def test_sequence_number_limit() -> None:
    suite = Suite()
    _, pk = suite.kem.generate_key_pair()
    _, sender = setup_base_s(suite, pk, b"")
    sender.seq = (1 << 96) - 1
    with pytest.raises(MessageLimitReachedError):
        sender.seal(b"", b"x")


def test_unsupported_ids_and_bad_inputs() -> None:
    with pytest.raises(UnsupportedAlgorithmError, match="KEM"):
        Suite(kem_id=0x0010)
    with pytest.raises(UnsupportedAlgorithmError, match="KDF"):
        Suite(kdf_id=0x0002)
    with pytest.raises(UnsupportedAlgorithmError, match="AEAD"):
        Suite(aead_id=0xFFFF)
    with pytest.raises(ValueError, match="ikm"):
        DHKEMX25519().derive_key_pair(b"short")
    with pytest.raises(KEMError, match="public key"):
        DHKEMX25519().encap(bytes(31))
