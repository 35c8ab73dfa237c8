"""scripts/seed_spread.py: ``--split`` scores the chosen list of the datalist, at its own dose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seed_spread(load_script):
    return load_script("seed_spread")


def _scored_patients(datalist: Path, overrides: dict) -> list[str]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "evaluate.yaml"))
    parser.update({"datalist": str(datalist), **overrides})
    return [item["patient"] for item in parser.get_parsed_content("test_dataset#data")]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_split_scores_that_list_of_the_datalist(seed_spread, tiny_dataset, split):
    datalist = tiny_dataset / "datalist.json"
    expected = [item["patient"] for item in json.loads(datalist.read_text())[split]]
    assert expected, f"the tiny dataset has an empty {split} list"
    assert _scored_patients(datalist, seed_spread.split_overrides(split)) == expected


def test_a_dose_list_is_scored_at_its_dose(seed_spread):
    assert seed_spread.split_overrides("test_dose0.1")["dose"] == 0.1
    assert "dose" not in seed_spread.split_overrides("validation")


@pytest.mark.parametrize("split, problem", [("training", "'test', 'validation' or 'test_dose<d>'"),
                                            ("test_doseX", "not a number")])
def test_a_bad_split_says_what_is_allowed(seed_spread, split, problem):
    with pytest.raises(ValueError, match="--split") as error:
        seed_spread.split_overrides(split)
    assert problem in str(error.value)
