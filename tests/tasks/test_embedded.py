"""The embedded TCGA-like generator: determinism, cohort structure, the site shortcut, optics and morphology."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from benchmark.core.data import METADATA_COLUMNS, Split
from tasks import embedded as E

SPEC = E.CohortSpec(n_patients=240, patches_per_patient=2)


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return E.make_cohort(SPEC)


def _frame(cancer_type: str, site: str, n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {"patch_index": np.arange(offset, offset + n), "tissue_source_site": site, "cancer_type": cancer_type}
    )


def _cramers_v(a: pd.Series, b: pd.Series) -> float:
    table = pd.crosstab(a, b).to_numpy()
    chi2 = stats.chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


# ---------------------------------------------------------------------------------------------------------------
# cohort
# ---------------------------------------------------------------------------------------------------------------


def test_cohort_schema_and_split(cohort):
    assert list(cohort.columns) == [*METADATA_COLUMNS, "patch_index", "ambiguous"]
    assert len(cohort) == SPEC.n_patients * SPEC.patches_per_patient
    assert cohort["patch_index"].is_unique
    assert (cohort["patch_index"].to_numpy() == np.arange(len(cohort))).all()
    assert cohort["label"].dtype == np.int64 and cohort["age_at_index"].dtype == np.float64
    assert (cohort["cancer_type"] == cohort["label"].map(dict(enumerate(SPEC.cancer_types)))).all()
    assert (cohort["project_id"] == "TCGA-" + cohort["cancer_type"]).all()
    assert not cohort["is_synthetic"].any() and (cohort["source"] == "embedded").all()
    assert set(cohort["race"]) <= set(E.RACES) and set(cohort["gender"]) <= {"female", "male"}
    Split(np.zeros((len(cohort), 8, 8, 3), np.uint8), cohort, "all")  # accepted by the shared schema


def test_cohort_is_deterministic(cohort):
    pd.testing.assert_frame_equal(cohort, E.make_cohort(SPEC))
    other = E.make_cohort(E.CohortSpec(n_patients=240, patches_per_patient=2, seed=1))
    assert not cohort["patient_id"].equals(other["patient_id"])


def test_barcodes_are_consistent_with_sites(cohort):
    sites = cohort["tissue_source_site"].unique()
    assert all(re.fullmatch(r"[0-9A-Z]{2}", s) for s in sites) and len(set(sites)) == SPEC.n_sites
    m = cohort["patient_id"].str.extract(r"^TCGA-([0-9A-Z]{2})-([0-9A-Z]{4})$")
    assert m.notna().all().all() and (m[0] == cohort["tissue_source_site"]).all()
    slide = cohort["slide_id"].str.extract(r"^(TCGA-([0-9A-Z]{2})-[0-9A-Z]{4})-01Z-00-DX[12]$")
    assert (slide[0] == cohort["patient_id"]).all() and (slide[1] == cohort["tissue_source_site"]).all()
    # one site, type, race, gender and age per patient
    per_patient = cohort.groupby("patient_id")[["tissue_source_site", "cancer_type", "race", "gender"]].nunique()
    assert (per_patient == 1).all().all()


def test_every_type_has_two_sites_and_the_tail_is_long():
    spec = E.CohortSpec(
        cancer_types=tuple(E.CANCER_TYPES), n_sites=48, n_patients=960, patches_per_patient=1, shortcut_strength=1.0
    )
    c = E.make_cohort(spec)
    assert (c.groupby("cancer_type")["tissue_source_site"].nunique() >= 2).all()
    assert (c.groupby("cancer_type")["patient_id"].nunique() >= 20).all()
    sizes = c.groupby("tissue_source_site")["patient_id"].nunique()
    assert sizes.max() >= 4 * sizes.median()
    uterine = c[c["cancer_type"].isin(["UCEC", "UCS"])]
    assert (uterine["gender"] == "female").all() and (c.loc[c["cancer_type"] == "PRAD", "gender"] == "male").all()
    # strength 1: every site is single-type except the mixed ones
    n_types = c.groupby("tissue_source_site")["cancer_type"].nunique()
    assert (n_types == 1).sum() == spec.n_sites - round(spec.mixed_site_fraction * spec.n_sites)


def test_shortcut_strength_controls_site_class_dependence():
    def v(strength: float) -> float:
        c = E.make_cohort(
            E.CohortSpec(n_patients=480, patches_per_patient=1, shortcut_strength=strength, mixed_site_fraction=0.0)
        )
        return _cramers_v(c["tissue_source_site"], c["cancer_type"])

    assert v(0.0) < 0.15
    assert v(0.9) > 0.8


def test_race_distribution_differs_across_sites():
    c = E.make_cohort(E.CohortSpec(n_patients=1920, n_sites=96, patches_per_patient=1, site_size_exponent=0.0))
    table = pd.crosstab(c["tissue_source_site"], c["race"])
    assert stats.chi2_contingency(table)[1] < 1e-6
    assert table["white"].sum() > 0.5 * len(c)  # TCGA-like: mostly white
    share = table.div(table.sum(axis=1), axis=0)
    assert share["white"].max() - share["white"].min() > 0.4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cancer_types": ("LUAD", "XXXX")}, "cancer_types"),
        ({"cancer_types": ["LUAD", "LUSC"]}, "cancer_types"),
        ({"cancer_types": ("LUAD",)}, "cancer_types"),
        ({"n_sites": 3}, "n_sites"),
        ({"n_patients": 10}, "n_patients"),
        ({"patches_per_patient": 0}, "patches_per_patient"),
        ({"shortcut_strength": 1.5}, "shortcut_strength"),
        ({"mixed_site_fraction": -0.1}, "mixed_site_fraction"),
        ({"site_size_exponent": -1.0}, "site_size_exponent"),
        ({"seed": -1}, "seed"),
        ({"n_sites": 2.5}, "n_sites"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        E.CohortSpec(**kwargs)


def test_unknown_cancer_type_lists_valid_ones():
    with pytest.raises(ValueError, match="LUSC"):
        E.CohortSpec(cancer_types=("LUAD", "NOPE"))


# ---------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", E.SIZES)
def test_render_shape_dtype_range(cohort, size):
    imgs = E.render(cohort.iloc[:3], size, 0)
    assert imgs.shape == (3, size, size, 3) and imgs.dtype == np.uint8
    assert imgs.min() < 200 and imgs.max() > 150 and imgs.std() > 10  # stained tissue, not a flat image


def test_render_is_deterministic_per_patch(cohort):
    rows = cohort.iloc[::7].head(60)  # crosses a render batch boundary
    a = E.render(rows, 32, 0)
    np.testing.assert_array_equal(a, E.render(rows, 32, 0))
    # a subset in another order (and other batch neighbours) gives the same pixels
    order = np.random.default_rng(0).permutation(len(rows))[:25]
    np.testing.assert_array_equal(a[order], E.render(rows.iloc[order], 32, 0))
    # demographics never touch pixels
    changed = rows.assign(race="asian", gender="male", age_at_index=30.0)
    np.testing.assert_array_equal(a, E.render(changed, 32, 0))


def test_render_changes_with_seed_index_site_and_type():
    base = E.render(_frame("LUAD", "05", 4), 32, 0).astype(int)
    for other in (
        E.render(_frame("LUAD", "05", 4), 32, 1),
        E.render(_frame("LUAD", "05", 4, offset=4), 32, 0),
        E.render(_frame("LUAD", "A2", 4), 32, 0),
        E.render(_frame("LUSC", "05", 4), 32, 0),
    ):
        assert np.abs(base - other).mean() > 5


def test_same_scene_at_every_resolution():
    x = _frame("LUAD", "05", 12)
    hi, lo = E.render(x, 128, 0).astype(float), E.render(x, 32, 0).astype(float)
    down = hi.reshape(12, 32, 4, 32, 4, 3).mean((2, 4))
    same, other = np.abs(down - lo).mean(), np.abs(down - np.roll(lo, 1, axis=0)).mean()
    assert same < 8 and other > 2.5 * same


def test_render_validates_input(cohort):
    with pytest.raises(ValueError, match="size"):
        E.render(cohort.iloc[:1], 48, 0)
    with pytest.raises(ValueError, match="patch_index"):
        E.render(cohort.iloc[:1].drop(columns="patch_index"), 32, 0)
    with pytest.raises(ValueError, match="XXXX"):
        E.render(cohort.iloc[:1].assign(cancer_type="XXXX"), 32, 0)


def test_site_styles_differ_and_are_plausible():
    styles = [E.site_style(s, 0) for s in ("05", "A2", "NJ", "38", "BH")]
    assert len({(st.stain_h, st.stain_e, st.jpeg_quality) for st in styles}) == len(styles)
    assert E.site_style("05", 0) == E.site_style("05", 0) and E.site_style("05", 0) != E.site_style("05", 1)
    for st in styles:
        h, e = np.asarray(st.stain_h), np.asarray(st.stain_e)
        assert np.isclose(np.linalg.norm(h), 1) and np.isclose(np.linalg.norm(e), 1)
        assert h[1] > h[2] and e[1] > e[0]  # haematoxylin absorbs green over blue; eosin green over red
        assert min(st.background) > 200 and 30 <= st.jpeg_quality <= 100
    with pytest.raises(ValueError, match="site"):
        E.site_style("ABC", 0)


def test_beer_lambert_optics():
    st = E.site_style("05", 0)
    h = np.array([0.0, 0.5, 1.5], dtype=np.float32).reshape(3, 1, 1)
    rgb = E._beer_lambert(h, np.zeros_like(h), [st] * 3)[:, 0, 0]
    np.testing.assert_allclose(rgb[0], st.background, rtol=1e-5)  # no stain: the scanner's white
    assert (rgb[2] < rgb[1]).all() and (rgb[1] < rgb[0]).all()  # more haematoxylin: darker in every channel
    assert rgb[2, 2] > rgb[2, 0] > rgb[2, 1]  # ... and blue-purple (blue > red > green)
    e = np.array([1.0], dtype=np.float32).reshape(1, 1, 1)
    pink = E._beer_lambert(np.zeros_like(e), e, [st])[0, 0, 0]
    assert pink[0] > pink[2] > pink[1]  # eosin: pink (red > blue > green)
    # through the scanner, a field with no tissue is the background colour up to noise and JPEG
    zero = np.zeros((1, 64, 64), dtype=np.float32)
    img = E._scanner(E._beer_lambert(zero, zero, [st]), st, 64, [np.random.default_rng(0)])[0]
    np.testing.assert_allclose(img.reshape(-1, 3).mean(0), st.background, atol=3)
    assert img.std() < 6


def test_morphology_differs_by_class():
    site = "05"
    bg = np.mean(E.site_style(site, 0).background)

    def white(ct: str) -> float:
        imgs = E.render(_frame(ct, site, 30), 64, 0).astype(float)
        return float((imgs.mean(-1) > 0.85 * bg).mean())

    def coherence(ct: str) -> float:  # orientation coherence of the structure tensor: aligned spindle nuclei
        g = 255 - E.render(_frame(ct, site, 30), 64, 0).astype(float).mean(-1)
        gx, gy = ndimage.sobel(g, 2), ndimage.sobel(g, 1)
        j = [ndimage.gaussian_filter(v, (0, 3, 3)) for v in (gx * gx, gy * gy, gx * gy)]
        return float((np.sqrt((j[0] - j[1]) ** 2 + 4 * j[2] ** 2) / (j[0] + j[1] + 1e-6)).mean())

    assert white("LUAD") > 3 * white("LUSC")  # glandular lumens vs solid nests
    assert coherence("UCS") > coherence("UCEC") + 0.05  # fascicles of spindle cells vs glands


def test_sample_figure(tmp_path):
    spec = E.CohortSpec(cancer_types=("UCEC", "UCS"), n_sites=8, n_patients=40, patches_per_patient=1)
    out = E.sample_figure(tmp_path / "fig.png", spec=spec, size=32, n_sites=3)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ambiguous_patches_carry_no_class_signal():
    """An ambiguous patch is drawn the same way whatever its cancer type: only its site shows."""
    rows = pd.DataFrame({"patch_index": [7, 7], "tissue_source_site": ["05", "05"], "cancer_type": ["LUAD", "LUSC"],
                         "ambiguous": [True, True]})
    a = E.render(rows, 32, seed=0)
    assert np.array_equal(a[0], a[1])
    rows["ambiguous"] = False
    b = E.render(rows, 32, seed=0)
    assert not np.array_equal(b[0], b[1])
    cohort = E.make_cohort(E.CohortSpec(ambiguous_fraction=0.25))
    assert 0.2 < cohort["ambiguous"].mean() < 0.3
    assert not E.make_cohort(E.CohortSpec(ambiguous_fraction=0.0))["ambiguous"].any()
