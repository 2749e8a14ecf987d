"""The fleet on Flower: settings, the exact group attribution, and real runs on the simulation engine.

The runs start Ray, the API with its gateway, a ``veil relay`` process and one SuperNode per phone, and
every phone is the SDK's ``VeilClient`` talking through the relay.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk.distributions import Codebook, PrototypeDistribution
from veil.privacy_analysis.attribution import bayes_attribution
from veil.simulation.fleet import FleetConfig, FleetConfigError
from veil.simulation.fleet.config import AUTO_NODES
from veil.simulation.fleet.phone import _Phone, attribution, cell, cell_average
from veil.simulation.fleet.population import ensure_phones, fleet_population, phone_dir, write_phone
from veil.simulation.fleet.server import _lost


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"phones": 1}, "phones must be an integer in"),
        ({"phones": 30_000}, "phones must be an integer in"),
        ({"rounds": 0}, "rounds must be an integer in"),
        ({"phones": 4, "types": 5}, "cannot exceed phones"),
        ({"dropout": 1.0}, "dropout must be a probability"),
        ({"task": "poetry"}, "task must be one of"),
        ({"late_join": 0.2}, "late_join needs rounds >= 2"),
        ({"latency_ms": -1.0}, "latency_ms must be a number"),
        ({"phones": 4, "types": 2, "nodes": 5}, "nodes .5. cannot exceed phones"),
        ({"phone_concurrency": 0}, "phone_concurrency must be an integer in"),
        ({"cloud": "remote"}, "cloud must be one of"),
        ({"cloud": "deployed"}, "cloud=deployed needs api_url"),
        ({"cloud": "deployed", "api_url": "api:8443"}, "api_url must be an http"),
        ({"cloud": "deployed", "api_url": "https://api:8443", "rounds": 2}, "runs no stage 3"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(values: dict, match: str) -> None:
    with pytest.raises(FleetConfigError, match=match):
        FleetConfig(**values)


def test_run_config_keys_are_flowers_hyphenated_ones_and_unknown_keys_are_refused() -> None:
    cfg = FleetConfig.from_mapping(
        {"phones": "12", "train-per-phone": 3, "dropout": "0.1", "task": "next_word"}
    )
    assert (cfg.phones, cfg.train_per_phone, cfg.dropout, cfg.task) == (12, 3, 0.1, "next_word")
    with pytest.raises(FleetConfigError, match="unknown fleet settings"):
        FleetConfig.from_mapping({"phone": 12})
    with pytest.raises(FleetConfigError, match="phones must be an integer"):
        FleetConfig.from_mapping({"phones": "many"})


def test_the_pyproject_run_config_is_a_valid_fleet() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    cfg = FleetConfig.from_mapping(declared)
    assert cfg.phones >= 2
    # Flower refuses --run-config keys the app does not declare: every setting must be there
    assert {k.replace("-", "_") for k in declared} == set(cfg.to_mapping())


def _group_max(groups: np.ndarray, uploads: np.ndarray, cells: int) -> np.ndarray:
    """What the cells of a fleet report (each its per-group maximum), maxed by the server."""
    reports = np.zeros((cells, int(groups.max()) + 1), dtype=np.int64)
    for i, (g, n) in enumerate(zip(groups, uploads, strict=True)):
        reports[i % cells, g] = max(reports[i % cells, g], n)
    return reports.max(axis=0)


def test_group_attribution_is_the_bayes_attribution_of_a_codebook() -> None:
    rng = np.random.default_rng(3)
    book = Codebook(rng.normal(size=(4, 1, 2)) * 5.0)
    groups = np.array([0, 0, 0, 1, 1, 3])
    equal = np.full(groups.size, 10)
    exact = attribution(_group_max(groups, equal, cells=4), int(equal.sum()))
    assert exact == pytest.approx(3 / 6)  # one phone named per group, equal uploads
    dists = [PrototypeDistribution(book, int(g), noise_std=1e-3) for g in groups]
    mc = bayes_attribution(dists, 400, rng)
    assert mc.ci_low - 0.02 <= exact <= mc.ci_high + 0.02
    # with skewed amounts the attributor names each group's busiest phone, whichever cell holds it
    skewed = np.array([1, 5, 2, 3, 3, 4])
    for cells in (1, 2, 6):
        assert attribution(_group_max(groups, skewed, cells), 18) == pytest.approx((5 + 3 + 4) / 18)
    assert np.isnan(attribution(np.zeros(4, dtype=np.int64), 0))


def test_a_supernode_writes_its_cells_data_as_the_local_simulator_would(tmp_path: Path) -> None:
    spec = {"phones": 6, "task": "classification", "types": 2, "train_per_phone": 3, "test_per_phone": 2,
            "seed": 5, "skew": 0.5, "late_join": 0.3}  # fmt: skip
    labels, data = fleet_population(spec)
    assert labels and len(data) == 6 and {d[2] for d in data} <= {1, 2}
    assert ensure_phones(tmp_path, cell(1, 3, 6), spec) == 2  # phones 1 and 4
    assert sorted(p.name for p in (tmp_path / "phones").iterdir()) == ["000001", "000004"]
    body = json.loads((phone_dir(tmp_path, 4) / "examples.json").read_text())
    assert [tuple(x) for x in body["train"]] == data[4][0] and body["join_round"] == data[4][2]
    assert ensure_phones(tmp_path, cell(1, 3, 6), spec) == 0  # written once, kept


def test_cells_partition_the_phones_and_nodes_default_to_one_per_phone_up_to_the_cap() -> None:
    cells = [list(cell(p, 7, 100)) for p in range(7)]
    assert sorted(sum(cells, [])) == list(range(100))  # every phone in exactly one cell
    assert max(map(len, cells)) - min(map(len, cells)) <= 1
    with pytest.raises(ValueError, match="partition-id 7 is outside"):
        cell(7, 7, 100)
    assert FleetConfig(phones=12, types=3).resolved_nodes == 12
    assert FleetConfig(phones=10_000).resolved_nodes == AUTO_NODES
    assert FleetConfig(phones=10_000, nodes=500).resolved_nodes == 500


def test_a_cells_table_is_the_weighted_mean_of_its_phones_tables() -> None:
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(4, 1, 3)).astype(np.float32)
    moves = [
        (1, rng.normal(size=(1, 3)), 2),
        (1, rng.normal(size=(1, 3)), 1),
        (3, rng.normal(size=(1, 3)), 3),
    ]
    tables = []
    for index, row, _ in moves:
        t = protos.astype(np.float64)
        t[index] = row
        tables.append(t)
    expected = np.average(np.stack(tables), axis=0, weights=[n for *_, n in moves])
    np.testing.assert_allclose(cell_average(protos, moves), expected, rtol=1e-6)
    assert cell_average(protos, []) is protos


def test_lost_phones_are_split_between_failed_and_missing_cells() -> None:
    assert _lost(100, 100, 0, 0) == (0, 0)
    assert _lost(100, 90, 1, 0) == (10, 0)
    assert _lost(100, 80, 1, 1) == (10, 10)


def test_an_announced_retirement_keeps_a_choice_only_when_the_flags_hash_to_the_version(
    tmp_path: Path,
) -> None:
    from veil.client_sdk.param_store import ClientState, ParamStore

    book = Codebook(np.random.default_rng(1).normal(size=(4, 1, 3)), k_min=2)
    write_phone(tmp_path, 0, ([("a b", "like")], [("c d", "like")], 1))
    order = {"seed": 0, "round": 1, "model": "m", "relay_url": "", "task": "classification"}
    ParamStore(tmp_path / "phones" / "000000" / "params.npz").save(
        ClientState(PrototypeDistribution(book, 2, 1e-4), {}, "m")
    )

    def kept(active: list[bool], version: str | None = None) -> int | None:
        retired = book.with_active(active)
        announced = {
            "codebook_version": version or retired.version,
            "codebook_active": active,
            "codebook_k_min": 2,
        }
        return _Phone(tmp_path, 0, {**order, **announced}, transport=None).kept_choice()

    assert kept([True] * 4, book.version) == 2  # the stored version itself
    assert kept([True, False, True, True]) == 2  # another prototype retired: same choice, no request
    assert kept([True, True, False, True]) is None  # its own retired: choose again through the relay
    assert kept([True, False, True, True], "0123456789abcdef") is None  # flags that do not hash to it


def _simulate(tmp_path: Path, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "veil.cli.main", "simulate", "--json", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.slow
def test_two_rounds_every_phone_takes_part_and_stage_3_personalises(tmp_path: Path) -> None:
    report = _simulate(tmp_path, "--phones", "16", "--rounds", "2", "--types", "4", "--concurrency", "4")
    first, second = report["rounds"]
    for r in (first, second):
        assert r["phones_asked"] == r["phones"] == 16 and r["dropped"] == r["missing"] == 0
        assert r["uploads"] == 16 * 4
        # a group holds at least smallest_group phones with equal uploads; fewer groups than types is
        # possible (types merged), so the bound below is 1 / phones, not the per-type floor
        assert 1 / 16 <= r["attribution"] <= 1.0 / r["smallest_group"] + 1e-9
    assert second["accuracy"] > first["accuracy"]  # random prototypes, then trained ones
    for r in (first, second):  # veil audit after every round: the phones' parameters and the store
        audit = r["audit"]
        assert audit["phones_audited"] == 16
        assert audit["params"]["bayes_attribution"]["accuracy"] == pytest.approx(r["attribution"], abs=0.1)
        assert audit["store"]["n_uploads"] == r["uploads"]
    stored = sum(1 for _ in (tmp_path / "phones").iterdir())
    assert stored == 16


# Slow: the cells run below makes the same dropout assertions (dropped > 0, every phone asked accounted
# for, the dropped phones' uploads stored) with one Ray run of 3 SuperNodes instead of 12.
@pytest.mark.integration
@pytest.mark.slow
def test_dropouts_are_reported_and_the_round_completes(tmp_path: Path) -> None:
    report = _simulate(tmp_path, "--phones", "12", "--types", "3", "--dropout", "0.4", "--concurrency", "4")
    (r,) = report["rounds"]
    assert r["dropped"] > 0 and r["phones"] + r["dropped"] == r["phones_asked"] == 12
    assert r["missing"] == 0 and r["uploads"] == 4 * (r["phones"] + r["dropped"])  # dropped ones' are stored


@pytest.mark.integration
def test_cells_of_phones_on_fewer_nodes_all_take_part_and_report_summed_counts(tmp_path: Path) -> None:
    report = _simulate(
        tmp_path, "--phones", "12", "--nodes", "3", "--types", "3", "--phone-concurrency", "4",
        "--dropout", "0.3", "--audit-phones", "0",
    )  # fmt: skip
    (r,) = report["rounds"]
    assert r["dropped"] > 0 and r["phones"] + r["dropped"] == r["phones_asked"] == 12
    assert r["failed"] == r["missing"] == 0 and r["uploads"] == 4 * (r["phones"] + r["dropped"])
    assert sum(1 for _ in (tmp_path / "phones").iterdir()) == 12


@pytest.mark.integration
@pytest.mark.slow
def test_federated_prototypes_under_dp_train_every_phone_and_report_the_privacy_spent(tmp_path: Path) -> None:
    report = _simulate(
        tmp_path, "--phones", "12", "--types", "3", "--rounds", "2", "--shared-training", "federated",
        "--fed-rounds", "2", "--fed-noise", "1.0", "--fed-clip", "5.0", "--audit-phones", "0",
    )  # fmt: skip
    first, second = report["rounds"]
    fed = first["federated"]
    assert fed["phones_per_round"] == [12, 12]  # FedAvg trained every phone in both of its rounds
    privacy = fed["privacy"]
    assert privacy["accountant"] == "rdp" and privacy["releases"] == 2 and 0 < privacy["epsilon"] < 100
    assert privacy["delta"] == pytest.approx(1 / 13)
    # the trained prototypes are a new codebook version: every phone chose again and took part
    assert second["codebook_version"] != first["codebook_version"] and second["phones"] == 12
