"""Parity of the prototype family's ONNX graphs with the numpy functions they export: the sampler with
``PrototypeDistribution``'s and the choice with ``choose_prototype``; and the ONNX backend using both."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from veil.client_sdk.client import OnnxBackend
from veil.client_sdk.distributions import Codebook, PrototypeDistribution, choose_prototype
from veil.client_sdk.distributions.noise import prototype_sample_from_noise
from veil.client_sdk.param_store import ClientState
from veil.client_sdk.runtime import load_graphs
from veil.models.onnx.export import export_onnx
from veil.models.onnx.graphs import GraphShapes

RTOL = 1e-5


def f32(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("onnx-prototype")
    export_onnx(out, ["prototype"])  # symbolic shapes
    return out


@pytest.fixture(scope="module")
def graphs(folder) -> dict:
    return load_graphs(folder)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def test_reference_sampler_is_the_distributions_sampler(rng) -> None:
    book = Codebook(rng.normal(size=(5, 2, 3)), [True, True, False, True, True])
    dist = PrototypeDistribution(book, 3, noise_std=0.05)
    got = dist.sample(np.random.default_rng(7), size=4)
    normal = np.random.default_rng(7).standard_normal((4, 2, 3))
    np.testing.assert_allclose(got, prototype_sample_from_noise(book.prototypes, 3, 0.05, normal), rtol=1e-12)


@pytest.mark.parametrize("index", [0, 4, 6])
def test_prototype_sampler_matches_reference(graphs, rng, index: int) -> None:
    k, n, d, batch = 7, 3, 5, 6
    protos, normal = f32(rng.normal(size=(k, n, d))), f32(rng.standard_normal((batch, n, d)))
    out = graphs["prototype_sample"].run(
        prototypes=protos, index=np.int64(index), noise_std=0.01, normal=normal
    )
    ref = prototype_sample_from_noise(protos, index, float(f32(0.01)), normal)
    assert out["sample"].shape == (batch, n, d) and out["sample"].dtype == np.float32
    assert float(np.max(np.abs(out["sample"] - ref)) / np.max(np.abs(ref))) < RTOL
    assert np.abs(out["sample"] - protos[index]).max() < 0.1  # the chosen row, not another


@pytest.mark.parametrize("examples", [1, 2, 17])
def test_prototype_choice_matches_choose_prototype(graphs, rng, examples: int) -> None:
    k = 9
    for _ in range(20):
        active = rng.random(k) < 0.6
        active[rng.integers(k)] = True
        book = Codebook(np.zeros((k, 1, 1)), active)
        losses = f32(rng.gamma(2.0, 1.0, size=(examples, k)))
        want = choose_prototype(np.where(active, losses, np.nan), book)  # unusable: never requested
        out = graphs["prototype_choice"].run(losses=losses, active=active)
        assert int(out["index"]) == want and out["index"].dtype == np.int64
        np.testing.assert_allclose(out["mean_loss"], losses.astype(np.float64).mean(0), rtol=RTOL)


def test_prototype_choice_breaks_ties_to_the_lowest_index_and_skips_unusable(graphs) -> None:
    losses = f32([[3.0, 1.0, 2.0, 1.0, 0.5]])
    active = np.array([True, True, True, True, False])
    book = Codebook(np.zeros((5, 1, 1)), active)
    assert int(graphs["prototype_choice"].run(losses=losses, active=active)["index"]) == 1
    assert choose_prototype(losses, book) == 1


def test_onnx_backend_samples_and_chooses_through_the_graphs(folder, rng) -> None:
    backend = OnnxBackend(folder, "prototype")
    book = Codebook(f32(rng.normal(size=(4, 1, 3))), [True, False, True, True])
    losses = np.where(book.active, rng.random((3, 4)), np.nan)
    assert backend.choose(losses, book) == choose_prototype(losses, book)
    dist = PrototypeDistribution(book, 2, noise_std=1e-3)
    draw = backend.sample(dist, np.random.default_rng(1))
    ref = prototype_sample_from_noise(book.prototypes, 2, 1e-3, draw.noise["normal"])[0]
    np.testing.assert_allclose(draw.value, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="no gradient update"):
        backend.update(ClientState(dist), draw, np.zeros((1, 3)))


def test_fixed_codebook_size_is_baked_into_the_manifest(tmp_path) -> None:
    manifest = export_onnx(tmp_path, ["prototype"], GraphShapes(n_tokens=1, dim=4, n_prototypes=8))
    assert [e.name for e in manifest.entries] == ["prototype_sample", "prototype_choice", "prototype_head"]
    assert manifest.entry("prototype_sample").input("prototypes").shape == (8, 1, 4)
    assert manifest.entry("prototype_choice").input("losses").shape == ("examples", 8)
    assert manifest.entry("prototype_choice").kind == "choice"
