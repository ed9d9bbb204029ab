"""Class names, the hierarchy DAG, and how boxes of nested classes are labelled."""

from pathlib import Path

import pytest

from flows.openimages.ontology import (
    UnknownClassError,
    label_map,
    load_ontology,
    read_class_descriptions,
)

META = Path(__file__).resolve().parent.parent / "data" / "sample" / "openimages"
HAMBURGER, SANDWICH, SUBMARINE, CAR = "/m/0cdn1", "/m/0l515", "/m/06pcq", "/m/0k4j"


@pytest.fixture(scope="module")
def onto():
    return load_ontology(META / "v5" / "class-descriptions-boxable.csv",
                         META / "2018_04" / "bbox_labels_600_hierarchy.json")


def test_names_resolve_case_insensitively_with_spaces(onto):
    assert onto.resolve("  hamburger ") == HAMBURGER
    assert onto.resolve("SUBMARINE SANDWICH") == SUBMARINE
    assert onto.resolve(CAR) == CAR


def test_unknown_name_lists_closest_real_names(onto):
    with pytest.raises(UnknownClassError, match="Hamburger"):
        onto.resolve("Hamburgr")


def test_hierarchy_is_a_dag_with_multiple_parents(onto):
    assert HAMBURGER in onto.descendants(SANDWICH)
    assert sum(len(p) > 1 for p in onto.parents.values()) == 45


def test_nested_classes_take_the_most_specific_label(onto):
    mapping = label_map(onto, [HAMBURGER, SANDWICH])
    assert mapping[HAMBURGER] == HAMBURGER
    assert mapping[SANDWICH] == SANDWICH
    assert mapping[SUBMARINE] == SANDWICH


def test_without_subclasses_only_the_named_classes_count(onto):
    assert label_map(onto, [SANDWICH], include_subclasses=False) == {SANDWICH: SANDWICH}


def test_a_box_under_two_unnested_requested_classes_is_left_out(onto):
    fruit, vegetable, tomato = (onto.resolve(n) for n in ("Fruit", "Vegetable", "Tomato"))
    mapping = label_map(onto, [fruit, vegetable])
    assert tomato not in mapping
    assert mapping[onto.resolve("Apple")] == fruit


def test_class_descriptions_parse_with_and_without_header(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("/m/0cdn1,Hamburger\n/m/0k4j,Car\n")
    headed = tmp_path / "headed.csv"
    headed.write_text("LabelName,DisplayName\n/m/0cdn1,Hamburger\n/m/0k4j,Car\n")
    assert read_class_descriptions(plain) == read_class_descriptions(headed)
    assert read_class_descriptions(headed) == {HAMBURGER: "Hamburger", CAR: "Car"}
