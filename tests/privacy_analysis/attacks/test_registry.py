"""The attack registry: one input type, every attack reachable by name, clear errors for missing inputs."""

from __future__ import annotations

import numpy as np
import pytest
from attack_populations import draw_uploads, neutral_texts, population

from veil.privacy_analysis.attacks import ATTACKS as POPULATION_ATTACKS
from veil.privacy_analysis.attacks import AttackResult, run_attacks
from veil.privacy_analysis.attacks.base import stratified_split
from veil.privacy_analysis.attacks.registry import ATTACKS, Attack, AttackInput, register
from veil.privacy_analysis.attacks.uploads import UPLOAD_ATTACKS


def _input(seed: int = 0, **kw) -> AttackInput:
    rng = np.random.default_rng(seed)
    dists = population("gaussian", 3, 2, 2, 1.0, rng)
    uploads, owners = draw_uploads(dists, 60, rng)
    fields = {
        "aux": stratified_split(owners, 0.3, rng),
        "texts": neutral_texts(60, rng),
        "dists": dists,
        **kw,
    }
    return AttackInput(uploads, owners, 3, rng, **fields)


def test_every_caller_name_is_registered_once() -> None:
    assert set(POPULATION_ATTACKS) | set(UPLOAD_ATTACKS) == set(ATTACKS)
    assert all(POPULATION_ATTACKS[name] is ATTACKS[name] for name in POPULATION_ATTACKS)
    with pytest.raises(ValueError, match="already registered"):
        register(Attack("knn", object, lambda inp, cfg: None))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_on_one_input_with_its_default_config(name: str) -> None:
    attack = ATTACKS[name]
    res = attack.run(_input(), attack.config_type())
    assert isinstance(res, AttackResult) and res.name == name
    assert 0.0 <= res.ci[0] <= res.accuracy <= res.ci[1] <= 1.0 and res.chance == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("bayes_known_parameters", "dists"),
        ("knn", "aux"),
        ("learned_attributor", "aux"),
        ("stylometric", "texts"),
    ],
)
def test_an_attack_without_what_it_needs_names_it(name: str, missing: str) -> None:
    attack = ATTACKS[name]
    with pytest.raises(ValueError, match=f"the {name} attack needs {missing}"):
        attack.run(_input(**{missing: None}), attack.config_type())


def test_run_attacks_is_the_registry_on_one_input() -> None:
    inp = _input(1)
    via_runner = run_attacks(
        inp.dists, inp.uploads, inp.owners, np.random.default_rng(5), attacks=["linkage_gmm"]
    )
    direct = ATTACKS["linkage_gmm"].run(
        AttackInput(inp.uploads, inp.owners, 3, np.random.default_rng(5)),
        ATTACKS["linkage_gmm"].config_type(),
    )
    assert via_runner[0].accuracy == direct.accuracy
    assert np.array_equal(via_runner[0].predictions, direct.predictions)


def test_tie_break_must_be_known() -> None:
    with pytest.raises(ValueError, match="tie_break"):
        _input(tie_break="last")
