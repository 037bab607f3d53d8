"""Generation-plan counts: fill asks for exactly the missing combinations, totals are exact, cls mirrors medi."""

import pandas as pd
import pytest

from benchmark.core.generation import class_totals, expand_plan, generation_plan

CLASSES = ("LUAD", "LUSC")


def train_meta():
    # site 01: LUAD only (white, asian); site 02: LUSC only (white); site 03: both (white)
    rows = (
        [("LUAD", "01", "white")] * 6
        + [("LUAD", "01", "asian")] * 2
        + [("LUSC", "02", "white")] * 4
        + [("LUAD", "03", "white")] * 3
        + [("LUSC", "03", "white")] * 1
    )
    df = pd.DataFrame(rows, columns=["cancer_type", "tissue_source_site", "race"])
    df["is_synthetic"] = False
    df["age_at_index"] = 60.0
    return df


def test_fill_plans_exactly_the_missing_class_combinations():
    plan = generation_plan(train_meta(), CLASSES, ["tissue_source_site", "race"], "fill", ratio=1.0)
    planned = set(map(tuple, plan[["cancer_type", "tissue_source_site", "race"]].to_numpy()))
    # combos seen in training: (01,white) (01,asian) (02,white) (03,white); missing per class:
    assert planned == {("LUSC", "01", "white"), ("LUSC", "01", "asian"), ("LUAD", "02", "white")}
    assert plan["n"].sum() == 16  # ratio 1.0 x 16 real patches, exactly
    assert plan["n"].max() - plan["n"].min() <= 1  # spread equally


def test_ratio_scales_total_and_zero_gives_empty_plan():
    meta = train_meta()
    assert generation_plan(meta, CLASSES, ["tissue_source_site"], "fill", ratio=0.5)["n"].sum() == 8
    assert len(generation_plan(meta, CLASSES, ["tissue_source_site"], "fill", ratio=0.0)) == 0


def test_balance_weights_by_deficit():
    plan = generation_plan(train_meta(), CLASSES, ["tissue_source_site"], "balance", ratio=2.0)
    # site counts: LUAD 01:8 02:0 03:3; LUSC 01:0 02:4 03:1
    # -> deficits to 8: LUAD02 8, LUAD03 5, LUSC01 8, LUSC02 4, LUSC03 7
    n = plan.set_index(["cancer_type", "tissue_source_site"])["n"]
    assert n.sum() == 32
    assert ("LUAD", "01") not in n.index
    assert n[("LUAD", "02")] > n[("LUSC", "02")]


def test_class_totals_mirror_the_plan():
    plan = generation_plan(train_meta(), CLASSES, ["tissue_source_site", "race"], "fill", ratio=1.0)
    totals = class_totals(plan, CLASSES).set_index("cancer_type")["n"]
    assert totals.to_dict() == plan.groupby("cancer_type")["n"].sum().to_dict()


def test_expand_plan_rows_carry_conditioning_and_are_synthetic():
    meta = train_meta()
    plan = generation_plan(meta, CLASSES, ["tissue_source_site", "race"], "fill", ratio=0.5)
    rows = expand_plan(plan, meta, "medi", seed=0)
    assert len(rows) == plan["n"].sum()
    assert rows["is_synthetic"].all() and (rows["source"] == "medi").all()
    assert rows["patient_id"].is_unique
    assert set(rows["tissue_source_site"]) <= {"01", "02"}
    assert (rows["gender"] == "Unknown").all() and (rows["age_at_index"] == 60.0).all()
    assert (rows["label"] == rows["cancer_type"].map({"LUAD": 0, "LUSC": 1})).all()


def test_a_cohorts_own_column_is_planned_and_carried():
    """A manifest column (``scanner``) as an attribute: the plan fills its missing combinations and the synthetic
    rows carry it, after the schema's columns."""
    from benchmark.core.data import METADATA_COLUMNS

    meta = train_meta().assign(scanner=["A"] * 8 + ["B"] * 4 + ["A"] * 4)
    plan = generation_plan(meta, CLASSES, ["tissue_source_site", "scanner"], "fill", ratio=1.0)
    # combos seen: (01,A) LUAD only, (02,B) LUSC only, (03,A) both
    assert set(map(tuple, plan[["cancer_type", "tissue_source_site", "scanner"]].to_numpy())) == {
        ("LUSC", "01", "A"), ("LUAD", "02", "B")}
    rows = expand_plan(plan, meta, "medi", seed=0)
    assert list(rows.columns) == [*METADATA_COLUMNS, "scanner"]
    assert rows.groupby("cancer_type")["scanner"].unique().map(list).to_dict() == {"LUAD": ["B"], "LUSC": ["A"]}
    assert (rows["race"] == "Unknown").all()


def test_bad_mode_and_column_are_named():
    with pytest.raises(ValueError, match="unknown generation plan 'more'"):
        generation_plan(train_meta(), CLASSES, [], "more")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['gender'\]"):
        generation_plan(train_meta(), CLASSES, ["gender"], "fill")
