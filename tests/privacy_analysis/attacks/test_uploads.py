"""Parameter-free attacks on exported upload files: the file format, the attacks against references and
closed forms, and the accuracies they must reach on populations whose answer is known."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from veil.privacy_analysis.attacks.gaussian_fit import (
    GaussianFitConfig,
    fit_user_gaussians,
    gaussian_fit_attack,
)
from veil.privacy_analysis.attacks.nearest import KNNConfig, knn_predict
from veil.privacy_analysis.attacks.selection import argmax_random_ties, smallest_k_random_ties
from veil.privacy_analysis.attacks.uploads import (
    UploadAttackConfig,
    UploadFileError,
    UploadSet,
    group_floor,
    load_uploads,
    run_upload_attacks,
)

EMBEDDING_ATTACKS = ("knn", "gaussian_fit", "learned_attributor", "linkage_kmeans", "linkage_gmm")


def write_uploads(path: Path, embedding: np.ndarray, users: np.ndarray, types: np.ndarray, **extra) -> Path:
    np.savez(path, embedding=embedding.astype(np.float32), user=users, type=types, **extra)
    return path


def per_user(counts: list[int] | np.ndarray) -> np.ndarray:
    """Owner of every upload, user i repeated counts[i] times."""
    return np.repeat(np.arange(len(counts)), counts)


def by_name(audit) -> dict:
    return {r.name: r for r in audit.results}


# --- the file format ---------------------------------------------------------------------------------


def test_a_well_formed_file_loads_with_its_ground_truth(tmp_path: Path) -> None:
    users = per_user([3, 2, 4])
    path = write_uploads(
        tmp_path / "m.npz", np.zeros((9, 2, 3)), users, np.array([5, 6, 5])[users], text=np.array(["hi"] * 9)
    )
    data = load_uploads(path)
    assert data.embedding.shape == (9, 2, 3) and data.embedding.dtype == np.float32
    assert data.n_users == 3 and data.user.dtype == np.int64
    np.testing.assert_array_equal(data.user_types, [5, 6, 5])
    assert data.has_text
    assert not load_uploads(write_uploads(tmp_path / "n.npz", np.zeros((9, 2, 3)), users, users)).has_text


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Case name -> (a malformed file, a fragment its error message must contain)."""
    users = per_user([3, 3])
    emb, types = np.zeros((6, 1, 4)), users.copy()
    cases: dict[str, tuple[Path, str]] = {"missing file": (tmp_path / "absent.npz", "no such file")}
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive at all")
    cases["not an npz"] = (garbage, "not a readable .npz")
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, emb)
    cases["single .npy array"] = (single, ".npy")

    def case(name: str, fragment: str, **arrays) -> None:
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(path, **{"embedding": emb.astype(np.float32), "user": users, "type": types, **arrays})
        cases[name] = (path, fragment)

    np.savez(tmp_path / "no_type.npz", embedding=emb.astype(np.float32), user=users)
    cases["missing type"] = (tmp_path / "no_type.npz", "missing arrays ['type']")
    case("unexpected key", "unexpected arrays ['texts']", texts=np.array(["a"] * 6))
    case("2-D embedding", "shape (uploads, n_tokens, dim)", embedding=np.zeros((6, 4), dtype=np.float32))
    case("integer embedding", "floating point", embedding=np.zeros((6, 1, 4), dtype=np.int32))
    nan = emb.astype(np.float32)
    nan[4, 0, 1] = np.nan
    case("NaN embedding", "NaN/Inf in 1 uploads, first at 4", embedding=nan)
    case("float users", "'user' must be integers", user=users.astype(np.float64))
    case("short users", "'user' must be integers of shape (6,)", user=users[:5])
    case("short types", "'type' must be integers of shape (6,)", type=types[:4])
    case("numeric text", "'text' must be strings", text=np.arange(6))
    case("pickled text", "cannot read an array", text=np.array(["a", 1, None, "b", "c", "d"], dtype=object))
    case("negative user", "range [-1, 1]", user=np.array([-1, 0, 0, 1, 1, 1]))
    case("one user", "at least 2 users", user=np.zeros(6, dtype=np.int64))
    case("lone upload", "user 1 with 1", user=np.array([0, 0, 0, 0, 0, 1]))
    case("gap in users", "user 1 with 0", user=np.array([0, 0, 0, 2, 2, 2]))
    case("two types", "user 0 has several", type=np.array([0, 1, 0, 1, 1, 1]))
    return cases


BAD_CASES = [
    "missing file",
    "not an npz",
    "single .npy array",
    "missing type",
    "unexpected key",
    "2-D embedding",
    "integer embedding",
    "NaN embedding",
    "float users",
    "short users",
    "short types",
    "numeric text",
    "pickled text",
    "negative user",
    "one user",
    "lone upload",
    "gap in users",
    "two types",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_malformed_file_raises_a_typed_error_naming_the_problem(tmp_path: Path, case: str) -> None:
    path, fragment = _bad_files(tmp_path)[case]
    with pytest.raises(UploadFileError) as info:
        load_uploads(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message, message


def test_bad_case_list_matches_the_builder(tmp_path: Path) -> None:
    assert sorted(_bad_files(tmp_path)) == sorted(BAD_CASES)


# --- the pieces, against naive references ------------------------------------------------------------


def test_random_tie_breaking_is_uniform_over_the_tied_entries() -> None:
    rng = np.random.default_rng(0)
    scores = np.tile([2.0, 5.0, 1.0, 5.0, 5.0, 0.0], (3000, 1))
    counts = np.bincount(argmax_random_ties(scores, rng), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    assert np.all(np.abs(counts[[1, 3, 4]] - 1000) < 100), counts
    # k smallest: the two below the tie always, the third place uniformly among the three tied at 3
    values = np.tile([3.0, 1.0, 3.0, 0.5, 3.0, 9.0], (3000, 1))
    near = smallest_k_random_ties(values, 3, rng)  # (3000, 3)
    assert np.all(np.sum(near == 1, axis=1) == 1) and np.all(np.sum(near == 3, axis=1) == 1)
    third = np.bincount(near[(near != 1) & (near != 3)], minlength=6)
    assert third[[0, 2, 4]].sum() == 3000 and np.all(np.abs(third[[0, 2, 4]] - 1000) < 100), third


def test_knn_matches_a_brute_force_vote_and_does_not_depend_on_the_block_size() -> None:
    rng = np.random.default_rng(1)
    train, labels = rng.normal(size=(60, 5)) + 10.0, rng.integers(4, size=60)
    queries = rng.normal(size=(25, 5)) + 10.0  # far from the origin: the expanded square must stay accurate
    for neighbors in (1, 3):
        votes = np.array(
            [
                np.bincount(labels[np.argsort(np.sum((train - q) ** 2, axis=1))[:neighbors]], minlength=4)
                for q in queries
            ]
        )  # (25, 4) naive: sort all distances, count the labels of the nearest
        clear = np.sum(votes == votes.max(axis=1, keepdims=True), axis=1) == 1  # rows without a tied vote
        for rows_per_block in (1, 7, 1000):
            cfg = KNNConfig(neighbors, block_elements=rows_per_block * 120)  # 120 = distinct + all train rows
            got = knn_predict(train, labels, queries, rng, cfg)
            np.testing.assert_array_equal(got[clear], votes.argmax(axis=1)[clear])
        assert clear.sum() >= 10


def test_gaussian_fits_are_the_per_user_mle_and_score_like_scipy() -> None:
    rng = np.random.default_rng(2)
    owners = per_user([4, 6, 5])
    x = rng.normal(size=(15, 3)) * [1.0, 2.0, 0.5] + 3.0
    fit = fit_user_gaussians(x, owners, 3, var_floor=1e-6)
    for u in range(3):
        np.testing.assert_allclose(fit.means[u], x[owners == u].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(fit.variances[u], x[owners == u].var(axis=0), rtol=1e-10)
    queries = rng.normal(size=(7, 3))
    expected = np.stack(
        [norm.logpdf(queries, fit.means[u], np.sqrt(fit.variances[u])).sum(axis=1) for u in range(3)], axis=1
    )
    np.testing.assert_allclose(fit.log_likelihoods(queries), expected, rtol=1e-10)


def test_constant_users_get_their_upload_as_mean_a_floored_variance_and_no_nan() -> None:
    point = np.array([[0.1, 0.7, -3.3]])
    x = np.concatenate([np.repeat(point, 7, axis=0), np.repeat(point, 3, axis=0)])  # two users, same point
    fit = fit_user_gaussians(x, per_user([7, 3]), 2, var_floor=1e-6)
    np.testing.assert_array_equal(fit.means, np.repeat(point, 2, axis=0))  # bit for bit: ties stay exact
    np.testing.assert_array_equal(fit.variances, np.full((2, 3), 1e-6))  # pooled variance 0: absolute floor
    assert fit.floored == 1.0
    ll = fit.log_likelihoods(point)
    assert np.all(np.isfinite(ll)) and ll[0, 0] == ll[0, 1]


# --- accuracies on populations whose answer is known ---------------------------------------------------


def _audit(tmp_path: Path, emb: np.ndarray, users: np.ndarray, types: np.ndarray, seed: int = 0, **cfg):
    data = load_uploads(write_uploads(tmp_path / "m.npz", emb, users, types))
    return run_upload_attacks(data, np.random.default_rng(seed), UploadAttackConfig(**cfg))


def test_well_separated_users_are_attributed_almost_perfectly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    users = per_user([20] * 20)
    means = rng.normal(size=(20, 2, 4)) * 4.0
    emb = means[users] + 0.3 * rng.normal(size=(users.size, 2, 4))
    audit = _audit(tmp_path, emb, users, users, attacks=EMBEDDING_ATTACKS)
    results = by_name(audit)
    assert audit.chance == pytest.approx(1 / 20) and audit.group_floor == pytest.approx(
        1.0
    )  # one user per type
    for name in ("knn", "gaussian_fit", "learned_attributor"):
        r = results[name]
        assert r.accuracy > 0.97, (name, r)
        assert (
            r.ci[0] <= r.accuracy <= r.ci[1] + 1e-12  # wilson_interval's upper end at p = 1 is 1 - 1 ulp
            and r.details["n_eval"] == 200
            and r.chance == pytest.approx(0.05)
        )
    assert results["linkage_kmeans"].details["n_eval"] == 400  # linkage sees the whole stream, no labels


def test_one_shared_point_mass_leaves_attacks_at_chance_not_at_user_zero(tmp_path: Path) -> None:
    # Every upload of every user is the same vector. User 0 uploads three times as much as anyone, so an
    # attack that hands ties to the lowest index scores 30 / 520 = 0.058, outside the interval of 1/50.
    users = per_user([60] + [20] * 49)
    emb = np.zeros((users.size, 1, 8))
    for seed in (0, 1):
        results = by_name(_audit(tmp_path, emb, users, users, seed=seed, attacks=("knn", "gaussian_fit")))
        for r in results.values():
            assert r.ci[0] <= 1 / 50 <= r.ci[1], r
            assert np.all(np.isfinite([r.accuracy, *r.ci]))
            # spread over the users, not all on one (user 0 holds 6% of the labelled uploads: more knn votes)
            predicted = np.bincount(r.predictions[r.predictions >= 0], minlength=50)
            assert predicted.max() < 0.1 * r.details["n_eval"] and np.sum(predicted > 0) > 40, predicted
    # equal shares: the learned attributor's logits tie exactly too
    users = per_user([20] * 50)
    r = by_name(_audit(tmp_path, np.zeros((1000, 1, 8)), users, users, attacks=("learned_attributor",)))
    assert r["learned_attributor"].ci[0] <= 1 / 50 <= r["learned_attributor"].ci[1]


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_users_sharing_their_type_prototype_are_attributed_at_the_group_floor(
    tmp_path: Path, noise: float
) -> None:
    # A k-anonymous codebook: 40 users in 4 types of 10, every upload the type's prototype (plus noise).
    rng = np.random.default_rng(4)
    users = per_user([20] * 40)
    types = users // 10
    emb = (rng.normal(size=(4, 1, 6)) * 5.0)[types] + noise * rng.normal(size=(users.size, 1, 6))
    audit = _audit(tmp_path, emb, users, types, attacks=EMBEDDING_ATTACKS)
    assert audit.group_floor == pytest.approx(0.1) and audit.chance == pytest.approx(1 / 40)
    for r in audit.results:
        assert r.details["group_floor"] == pytest.approx(0.1)
        if r.name.startswith("linkage") and noise > 0:
            # k-means and EM split every noisy blob into clusters by noise, and naming each cluster after
            # its most frequent user in hindsight lifts the score a little above the floor
            assert r.accuracy < 0.3, r
        else:
            assert r.ci[0] <= 0.1 <= r.ci[1], r
            assert r.ci[1] < 0.2, r  # the groups hide their members: nowhere near the separable case


def test_costly_attacks_run_on_whole_types_of_a_user_subset(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    users = per_user([4] * 40)
    types = users // 10
    emb = rng.normal(size=(users.size, 1, 3))
    audit = _audit(tmp_path, emb, users, types, max_users=20, attacks=("knn", "learned_attributor"))
    knn, learned = by_name(audit)["knn"], by_name(audit)["learned_attributor"]
    assert knn.details["users"] == 40 and not knn.details["sampled"] and knn.chance == pytest.approx(1 / 40)
    assert (
        learned.details["users"] == 20
        and learned.details["sampled"]
        and learned.chance == pytest.approx(0.05)
    )
    assert learned.details["group_floor"] == pytest.approx(0.1)  # two whole types of 10: same floor
    assert learned.details["n_eval"] == 40


def test_text_feeds_the_stylometric_attack_and_its_absence_skips_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    users = per_user([20] * 8)
    emb = rng.normal(size=(users.size, 1, 4))  # embeddings tell nothing
    habits = ["lol!!", "Indeed.", "ok ok", "hmm...", "YES", "u know", "Regards,", ":-)"]
    text = np.array([f"{habits[u]} see you at {i % 5}" for i, u in enumerate(users)])
    data = load_uploads(write_uploads(tmp_path / "t.npz", emb, users, users, text=text))
    cfg = UploadAttackConfig(attacks=("gaussian_fit", "stylometric"))
    results = by_name(run_upload_attacks(data, np.random.default_rng(0), cfg))
    assert results["stylometric"].accuracy > 0.9 and results["stylometric"].details["text_accuracy"] > 0.9
    assert results["gaussian_fit"].ci[0] < 0.2
    silent = replace(data, text=np.array([""] * users.size))
    audit = run_upload_attacks(silent, np.random.default_rng(0), cfg)
    assert [r.name for r in audit.results] == ["gaussian_fit"] and "stylometric" in audit.skipped


def test_group_floor_averages_over_the_scored_uploads() -> None:
    owners, types = np.array([0, 0, 1, 2, 2, 2]), np.array([3, 3, 4])  # type 3: users 0, 1; type 4: user 2
    assert group_floor(owners, types, np.ones(6, dtype=bool)) == pytest.approx((3 * 0.5 + 3 * 1.0) / 6)
    assert group_floor(owners, types, np.array([1, 0, 0, 0, 0, 1], dtype=bool)) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"max_users": 1}, "max_users"),
        ({"attacks": ("knn", "bayes_known_parameters")}, "subset"),
        ({"attacks": ()}, "non-empty"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        UploadAttackConfig(**kwargs)
    with pytest.raises(ValueError, match="var_floor"):
        GaussianFitConfig(var_floor=0.0)
    with pytest.raises(ValueError, match="neighbors"):
        KNNConfig(neighbors=0)


def test_an_upload_set_built_in_memory_is_checked_too() -> None:
    with pytest.raises(UploadFileError, match="at least 2 users"):
        UploadSet(np.zeros((4, 1, 2), np.float32), np.zeros(4, np.int64), np.zeros(4, np.int64))
    users = per_user([2, 2])
    assert (
        gaussian_fit_attack(
            np.zeros((4, 1, 2)), users, 2, np.array([1, 0, 1, 0], bool), np.random.default_rng()
        ).chance
        == 0.5
    )
