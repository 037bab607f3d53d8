"""TCGA-UT loader on real H&E pixels: TCGA-UT-layout folders of real JPEG patches plus a GDC-style clinical CSV."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from benchmark.core.data import METADATA_COLUMNS, UNKNOWN, ArrayImages, ImageSource, Split
from tasks import patches
from tasks.tcga_ut import (
    TCGA_PROJECTS,
    DataError,
    PathImages,
    clean_value,
    decode_all,
    load_index,
    parse_tissue_source_site,
    patient_from_barcode,
)
from tests.real_he import load as load_he

# slide barcode -> (project, gender, race, age); LUAD and LUSC from different tissue source sites, 2-3 sites each
SLIDES = {
    "TCGA-05-4244-01Z-00-DX1": ("TCGA-LUAD", "male", "white", "70"),
    "TCGA-05-4249-01Z-00-DX1": ("TCGA-LUAD", "female", "not reported", "'--"),
    "TCGA-44-2655-01Z-00-DX1": ("TCGA-LUAD", "female", "black or african american", "61"),
    "TCGA-55-6968-01Z-00-DX1": ("TCGA-LUAD", "--", "asian", "58"),
    "TCGA-18-3406-01Z-00-DX1": ("TCGA-LUSC", "male", "white", "67"),
    "TCGA-22-4593-01Z-00-DX1": ("TCGA-LUSC", "male", "white", "74"),
    "TCGA-22-5471-01Z-00-DX1": ("TCGA-LUSC", "female", "Unknown", "55"),
}
PER_SLIDE = 3
FOLDER = {"TCGA-LUAD": "Lung_adenocarcinoma", "TCGA-LUSC": "Lung_squamous_cell_carcinoma"}


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """256x256 crops of the real H&E image, with flips for variety."""
    he = load_he()
    out = []
    for y in (0, 248, 496, 744):
        for x in (0, 372, 744):
            tile = he[y : y + 256, x : x + 256]
            out += [tile, tile[::-1], tile[:, ::-1]]
    return [np.ascontiguousarray(c) for c in out]


def gdc_table(slides: dict = SLIDES, with_tss: bool = True) -> pd.DataFrame:
    rows = []
    for slide, (project, gender, race, age) in slides.items():
        row = {
            "project_id": project,
            "case_submitter_id": slide[:12],
            "slide_submitter_id": slide,
            "gender": gender,
            "race": race,
            "ethnicity": "not hispanic or latino",
            "age_at_index": age,
            "vital_status": "Alive",
        }
        if with_tss:
            row["tissue_source_site"] = slide[5:7]
        rows.append(row)
    return pd.DataFrame(rows)


def build(tmp_path: Path, crops: list[np.ndarray], slides: dict = SLIDES) -> tuple[Path, Path]:
    """TCGA-UT folders of real JPEG patches for ``slides`` and a matching clinical CSV."""
    root = tmp_path / "tcga_ut"
    k = 0
    for slide, (project, *_) in slides.items():
        folder = root / FOLDER[project] / slide
        folder.mkdir(parents=True)
        for j in range(PER_SLIDE):
            Image.fromarray(crops[k % len(crops)]).save(folder / f"{slide[:12]}_{j}.jpg", quality=90)
            k += 1
    csv = tmp_path / "clinical.csv"
    gdc_table(slides).to_csv(csv, index=False)
    return root, csv


@pytest.fixture()
def dataset(tmp_path: Path, crops: list[np.ndarray]) -> tuple[Path, Path]:
    return build(tmp_path, crops)


def first_jpeg(root: Path, project: str = "TCGA-LUAD") -> Path:
    return sorted((root / FOLDER[project]).glob("*/*.jpg"))[0]


# --- barcodes and values --------------------------------------------------------------------------------------------


def test_barcode_parsing() -> None:
    assert parse_tissue_source_site("TCGA-05-4244-01Z-00-DX1") == "05"
    assert parse_tissue_source_site("TCGA-A2-A0CM") == "A2"
    assert patient_from_barcode("TCGA-05-4244-01Z-00-DX1") == "TCGA-05-4244"
    assert patient_from_barcode("TCGA-05-4244") == "TCGA-05-4244"


@pytest.mark.parametrize(
    "bad", ["", "TCGA-5-4244-01Z", "TARGET-05-4244-01Z", "TCGA-05", "tcga-05-4244", "TCGA_05_4244"]
)
def test_malformed_barcode_names_it(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed TCGA barcode") as err:
        parse_tissue_source_site(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(DataError):
        patient_from_barcode(bad)


@pytest.mark.parametrize(
    "placeholder", ["--", "'--", "not reported", "Not Reported", "unknown", "Unknown", "", "  ", float("nan"), None]
)
def test_placeholders_become_unknown(placeholder: object) -> None:
    assert clean_value(placeholder) == UNKNOWN


def test_clean_value_keeps_real_values() -> None:
    assert clean_value(" white ") == "white"
    assert clean_value("black or african american") == "black or african american"
    assert clean_value("05") == "05"


def test_project_table() -> None:
    assert len(TCGA_PROJECTS) == 32
    assert "LAML" not in TCGA_PROJECTS
    assert len(set(TCGA_PROJECTS.values())) == 32
    assert TCGA_PROJECTS["LUAD"] == "Lung_adenocarcinoma"
    assert TCGA_PROJECTS["LUSC"] == "Lung_squamous_cell_carcinoma"
    assert TCGA_PROJECTS["UCEC"] == "Uterine_Corpus_Endometrial_Carcinoma"
    assert TCGA_PROJECTS["UCS"] == "Uterine_Carcinosarcoma"


# --- index ----------------------------------------------------------------------------------------------------------


def test_index_schema_and_labels(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    index, report = load_index(root, csv, ["LUSC", "LUAD"])
    assert list(index.columns) == [*METADATA_COLUMNS, "path"]
    assert len(index) == len(SLIDES) * PER_SLIDE == report.n_images
    assert report.n_slides == len(SLIDES) and report.n_sites == 5
    assert report.class_counts == {"LUSC": 9, "LUAD": 12}
    assert dict(zip(index["cancer_type"], index["label"], strict=True)) == {"LUSC": 0, "LUAD": 1}
    assert index["label"].dtype == np.int64 and index["age_at_index"].dtype == np.float64
    assert index["is_synthetic"].dtype == bool and not index["is_synthetic"].any()
    assert set(index["source"]) == {"tcga-ut"}
    row = index[index["slide_id"] == "TCGA-05-4249-01Z-00-DX1"].iloc[0]
    assert (row["project_id"], row["tissue_source_site"], row["patient_id"]) == ("TCGA-LUAD", "05", "TCGA-05-4249")
    assert (row["gender"], row["race"]) == ("female", UNKNOWN)
    assert np.isnan(row["age_at_index"])
    assert index.loc[index["slide_id"] == "TCGA-22-5471-01Z-00-DX1", "race"].iloc[0] == UNKNOWN
    assert index.loc[index["slide_id"] == "TCGA-55-6968-01Z-00-DX1", "gender"].iloc[0] == UNKNOWN
    assert index.loc[index["slide_id"] == "TCGA-44-2655-01Z-00-DX1", "age_at_index"].iloc[0] == 61.0
    assert all(Path(p).is_file() for p in index["path"])
    assert report.metadata_without_images == 0 and report.images_without_metadata == 0
    json.dumps(report.to_dict())  # JSON-able
    assert "21 images from 7 slides" in report.summary()

    default, _ = load_index(root, csv)  # sorted order when no classes are named
    assert dict(zip(default["cancer_type"], default["label"], strict=True)) == {"LUAD": 0, "LUSC": 1}

    images = PathImages(index["path"], 32)
    split = Split(images, index.drop(columns="path"), "all")  # the schema accepts it, images still lazy
    assert isinstance(images, ImageSource) and split.image_size == 32


@pytest.mark.parametrize("placeholder_column", [False, True])
def test_site_from_barcode_when_csv_lacks_it(
    tmp_path: Path, crops: list[np.ndarray], placeholder_column: bool
) -> None:
    root, csv = build(tmp_path, crops)
    table = gdc_table(with_tss=placeholder_column)
    if placeholder_column:
        table["tissue_source_site"] = ["'--", "--", "", "not reported", "'--", "Unknown", "--"]
    table.to_csv(csv, index=False)
    index, report = load_index(root, csv, ["LUAD", "LUSC"])
    expected = {s: s[5:7] for s in SLIDES}
    assert dict(zip(index["slide_id"], index["tissue_source_site"], strict=True)) == expected
    assert report.tss_from_barcode == len(SLIDES)


def test_site_contradicting_barcode_is_an_error(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    table = gdc_table()
    table.loc[0, "tissue_source_site"] = "99"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match="TCGA-05-4244-01Z-00-DX1.*'99'"):
        load_index(root, csv)


def test_csv_site_codes_stay_strings(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset  # "05" must not be read as the number 5
    index, _ = load_index(root, csv)
    assert "05" in set(index["tissue_source_site"])


def test_folder_names_by_code_any_case(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    (root / "Lung_adenocarcinoma").rename(root / "tcga-luad")
    (root / "Lung_squamous_cell_carcinoma").rename(root / "LUSC")
    (root / "Colon_Rectum_adenocarcinoma").mkdir()
    index, report = load_index(root, csv, ["TCGA-LUAD", "lung_squamous_cell_carcinoma"])
    assert report.class_counts == {"LUAD": 12, "LUSC": 9}
    assert report.folders == {"LUAD": "tcga-luad", "LUSC": "LUSC"}
    assert report.unknown_folders == ["Colon_Rectum_adenocarcinoma"]
    assert "unknown folders" in report.summary()


def test_two_folders_for_one_project_is_an_error(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    (root / "LUAD").mkdir()
    with pytest.raises(DataError, match="LUAD has several folders"):
        load_index(root, csv)


def test_resolution_level_folders(tmp_path: Path, crops: list[np.ndarray]) -> None:
    root, csv = build(tmp_path, crops)
    for folder in FOLDER.values():
        (root / folder).rename(root / "tmp")
        (root / folder).mkdir()
        (root / "tmp").rename(root / folder / "0")
    index, report = load_index(root, csv)
    assert len(index) == 21 and report.folders["LUAD"] == os.path.join("Lung_adenocarcinoma", "0")
    (root / "Lung_adenocarcinoma" / "1").mkdir()
    with pytest.raises(DataError, match=r"several resolution levels \['0', '1'\]; pass level="):
        load_index(root, csv)
    index, _ = load_index(root, csv, ["LUSC"], level="0")
    assert len(index) == 9
    with pytest.raises(DataError, match="level '2' not found"):
        load_index(root, csv, level="2")


def test_index_is_lazy_about_pixels(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    bad = first_jpeg(root)
    bad.write_bytes(b"this is not a JPEG at all" * 10)
    index, _ = load_index(root, csv)  # no pixel is read, so the corrupt file goes unnoticed here
    assert str(bad) in set(index["path"])
    images = PathImages(index["path"], 32)
    with pytest.raises(DataError, match=str(bad)):
        images[int(np.flatnonzero(index["path"] == str(bad))[0])]


def test_non_images_are_ignored_and_reported(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    slide = first_jpeg(root).parent
    (slide / "notes.txt").write_text("hello")
    (root / "Lung_adenocarcinoma" / "README.md").write_text("hello")
    index, report = load_index(root, csv)
    assert len(index) == 21 and report.n_ignored == 2
    assert {Path(p).name for p, _ in report.ignored} == {"notes.txt", "README.md"}


def test_images_without_metadata_and_metadata_without_images(tmp_path: Path, crops: list[np.ndarray]) -> None:
    root, csv = build(tmp_path, crops)
    extra = {"TCGA-49-4487-01Z-00-DX1": ("TCGA-LUAD", "male", "white", "60")}  # a slide with images, no CSV row
    build(tmp_path / "more", crops, extra)
    (tmp_path / "more" / "tcga_ut" / "Lung_adenocarcinoma" / "TCGA-49-4487-01Z-00-DX1").rename(
        root / "Lung_adenocarcinoma" / "TCGA-49-4487-01Z-00-DX1"
    )
    orphan = {"TCGA-64-1676-01Z-00-DX1": ("TCGA-LUAD", "male", "white", "66")}  # CSV rows, no images
    other = {"TCGA-A2-A0CM-01Z-00-DX1": ("TCGA-BRCA", "female", "white", "40")}  # other project: not counted
    pd.concat([gdc_table(), gdc_table(orphan), gdc_table(other)]).to_csv(csv, index=False)
    index, report = load_index(root, csv, ["LUAD", "LUSC"])
    assert len(index) == 21 and "TCGA-49-4487-01Z-00-DX1" not in set(index["slide_id"])
    assert report.images_without_metadata == PER_SLIDE
    assert report.slides_without_metadata == ["TCGA-49-4487-01Z-00-DX1"]
    assert report.metadata_without_images == 1
    assert "3 images of 1 slides without metadata" in report.summary()


def test_csv_keyed_by_patient(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    table = gdc_table().drop(columns="slide_submitter_id")
    table.to_csv(csv, index=False)
    index, report = load_index(root, csv)
    assert len(index) == 21 and report.matched_by_patient == len(SLIDES)
    table = gdc_table()
    table["slide_submitter_id"] = table["case_submitter_id"]  # 12-character barcodes in the slide column
    table.to_csv(csv, index=False)
    index, report = load_index(root, csv)
    assert len(index) == 21 and report.matched_by_patient == len(SLIDES)
    assert index["slide_id"].str.len().min() == len("TCGA-05-4244-01Z-00-DX1")


def test_duplicate_rows(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    table = gdc_table()
    pd.concat([table, table.iloc[:2]]).to_csv(csv, index=False)  # identical duplicates are harmless
    assert len(load_index(root, csv)[0]) == 21
    twin = table.iloc[:1].assign(race="asian")
    pd.concat([table, twin]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="TCGA-05-4244-01Z-00-DX1 appears on lines 2 and 9 with different 'race'"):
        load_index(root, csv)


def test_project_mismatch_is_an_error(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    table = gdc_table()
    table.loc[0, "project_id"] = "TCGA-LUSC"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match="TCGA-05-4244-01Z-00-DX1 is in the LUAD folder.*'TCGA-LUSC'"):
        load_index(root, csv)


def test_bad_age_names_the_value(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    table = gdc_table()
    table.loc[2, "age_at_index"] = "sixty"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match="age_at_index 'sixty' on CSV line 4"):
        load_index(root, csv)


def test_malformed_slide_folder_names_it(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    first_jpeg(root).parent.rename(root / "Lung_adenocarcinoma" / "slide_one")
    with pytest.raises(DataError, match="slide folder 'slide_one'.*malformed TCGA barcode"):
        load_index(root, csv)


@pytest.mark.parametrize("column", ["race", "age_at_index", "project_id"])
def test_missing_required_column(dataset: tuple[Path, Path], column: str) -> None:
    root, csv = dataset
    gdc_table().drop(columns=column).to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"lacks required columns \['{column}'\]; columns found: \[.*'gender'"):
        load_index(root, csv)


def test_missing_key_column(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    gdc_table().drop(columns=["slide_submitter_id", "case_submitter_id"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="slide_submitter_id or case_submitter_id"):
        load_index(root, csv)


def test_unknown_cancer_type_lists_valid(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    with pytest.raises(DataError, match="unknown cancer type 'NSCLC'.*'LUAD'.*'LUSC'"):
        load_index(root, csv, ["LUAD", "NSCLC"])
    with pytest.raises(DataError, match="more than once"):
        load_index(root, csv, ["LUAD", "TCGA-LUAD"])


def test_cancer_type_without_images_names_the_folder(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    with pytest.raises(DataError, match="no images of BRCA.*'Breast_invasive_carcinoma'"):
        load_index(root, csv, ["LUAD", "BRCA"])
    (root / "Breast_invasive_carcinoma").mkdir()
    with pytest.raises(DataError, match="no images of BRCA in .*Breast_invasive_carcinoma"):
        load_index(root, csv, ["LUAD", "BRCA"])


def test_cancer_type_whose_slides_lack_metadata(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    gdc_table({k: v for k, v in SLIDES.items() if v[0] == "TCGA-LUAD"}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="no images of LUSC have metadata"):
        load_index(root, csv)


def test_bad_root_and_csv(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, csv = dataset
    with pytest.raises(DataError, match="does not exist"):
        load_index(tmp_path / "nowhere", csv)
    with pytest.raises(DataError, match="is not a folder"):
        load_index(csv, csv)
    with pytest.raises(DataError, match="metadata CSV .*missing.csv.* does not exist"):
        load_index(root, tmp_path / "missing.csv")
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(DataError, match="garbage.csv.*unreadable"):
        load_index(root, garbage)


def test_tsv_is_read(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = dataset
    tsv = tmp_path / "clinical.tsv"
    gdc_table().to_csv(tsv, sep="\t", index=False)
    assert len(load_index(root, tsv)[0]) == 21


# --- pixels ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_resize_and_indexing(dataset: tuple[Path, Path], size: int) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    images = PathImages(index["path"], size)
    assert len(images) == 21 and images.shape == (21, size, size, 3)
    one = images[0]
    assert one.shape == (size, size, 3) and one.dtype == np.uint8
    with Image.open(index["path"][0]) as im:
        reference = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(one, reference)
    assert 60 < one.mean() < 230 and one.std() > 10  # H&E texture, not a blank
    np.testing.assert_array_equal(images[-1], images[20])
    assert images[2:5].shape == (3, size, size, 3)
    np.testing.assert_array_equal(images[np.array([4, 1])][1], images[1])
    np.testing.assert_array_equal(images[[3]], images[3:4])
    mask = np.zeros(21, dtype=bool)
    mask[[0, 7]] = True
    np.testing.assert_array_equal(images[mask], images[[0, 7]])
    sub = images.take(np.array([7, 0]))
    assert isinstance(sub, PathImages) and sub.shape == (2, size, size, 3) and sub.paths[0] == images.paths[7]
    with pytest.raises(IndexError):
        images[21]
    assert images.converted == {}


def test_bad_constructor_arguments() -> None:
    with pytest.raises(DataError, match="on_error must be one of"):
        PathImages(["a.jpg"], 32, on_error="ignore")
    with pytest.raises(DataError, match="size must be a positive int"):
        PathImages(["a.jpg"], 0)
    with pytest.raises(DataError, match="single path"):
        PathImages("a.jpg", 32)


def test_modes_converted_and_counted(tmp_path: Path, crops: list[np.ndarray]) -> None:
    tile = crops[0]
    rgba = np.dstack([tile, np.full(tile.shape[:2], 255, np.uint8)])
    rgba[:16, :16, 3] = 0  # transparent corner -> white
    paths = {"rgba": tmp_path / "rgba.png", "gray": tmp_path / "gray.jpg", "deep": tmp_path / "deep.png"}
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    gray = np.asarray(Image.fromarray(tile).convert("L"))
    Image.fromarray(gray).save(paths["gray"], quality=95)
    deep = gray.astype(np.uint16) * 257  # 16-bit PNG holding the same gray levels
    deep[0, 0], deep[0, 1] = 65535, 0
    Image.fromarray(deep).save(paths["deep"])
    assert Image.open(paths["deep"]).mode == "I;16"
    Image.fromarray(tile).save(tmp_path / "rgb.jpg", quality=95)

    images = PathImages([str(p) for p in [*paths.values(), tmp_path / "rgb.jpg"]], 256)
    pixels, good, decoded = decode_all(images, None, progress=False)
    assert good.all() and pixels.shape == (4, 256, 256, 3)
    assert decoded.converted == {"RGBA->RGB": 1, "L->RGB": 1, "I;16->RGB": 1}
    assert (pixels[0, :16, :16] == 255).all()  # composited on white
    np.testing.assert_array_equal(pixels[0, 16:, 16:], tile[16:, 16:])
    assert (pixels[1][..., 0] == pixels[1][..., 1]).all() and abs(pixels[1].mean() - gray.mean()) < 2
    assert pixels[2][0, 0].tolist() == [255, 255, 255] and pixels[2][0, 1].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(pixels[2][1:, :, 0], gray[1:])  # 16 -> 8 bit is exact for v * 257
    small = PathImages(images.paths, 32)
    assert small[0].shape == (32, 32, 3) and small.converted == {"RGBA->RGB": 1}


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage"])
def test_bad_file_fails_with_its_name(dataset: tuple[Path, Path], damage: str) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    bad = Path(index["path"][5])
    data = bad.read_bytes()
    bad.write_bytes({"zero-byte": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(3000)}[damage])
    images = PathImages(index["path"], 32, on_error="fail")
    with pytest.raises(DataError, match=str(bad)) as err:
        decode_all(images, None, progress=False)
    assert {"zero-byte": "zero-byte file", "truncated": "truncated", "garbage": "not a readable image"}[damage] in str(
        err.value
    )
    with pytest.raises(DataError, match=str(bad)):
        images[5]


def test_bad_files_skipped_and_listed(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, csv = dataset
    index, report = load_index(root, csv)
    zero, half = Path(index["path"][2]), Path(index["path"][13])
    zero.write_bytes(b"")
    half.write_bytes(half.read_bytes()[:3000])
    images = PathImages(index["path"], 32, on_error="skip")
    pixels, good, decoded = decode_all(images, tmp_path / "cache", progress=False)
    assert pixels.shape == (19, 32, 32, 3) and good.sum() == 19
    assert np.flatnonzero(~good).tolist() == [2, 13]
    assert [p for p, _ in decoded.skipped] == [str(zero), str(half)]
    assert "zero-byte" in decoded.skipped[0][1] and "truncated" in decoded.skipped[1][1]
    np.testing.assert_array_equal(pixels[2], PathImages(index["path"], 32)[3])
    kept = index[good].reset_index(drop=True)
    report.record_decode(decoded, kept)
    assert report.n_images == 19 and len(report.skipped) == 2 and "2 bad files skipped" in report.summary()
    json.dumps(report.to_dict())
    json.dumps(decoded.to_dict())
    # the same cache, read under on_error="fail", must not hide the bad files
    with pytest.raises(DataError, match=str(zero)):
        decode_all(PathImages(index["path"], 32, on_error="fail"), tmp_path / "cache", progress=False)


def test_truncated_jpeg_fails_even_if_another_library_allows_truncation(
    dataset: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """weasyprint sets PIL's global LOAD_TRUNCATED_IMAGES on import; decoding must still reject a truncated file."""
    root, _ = dataset
    data = first_jpeg(root).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="half.jpg"):
        PathImages([str(half)], 32)[0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the other library's setting is restored
    assert PathImages([str(first_jpeg(root))], 32)[0].shape == (32, 32, 3)


# --- cache ----------------------------------------------------------------------------------------------------------


def counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = patches.decode_image  # the decoder every loader uses (tasks/patches.py)

    def counted(path: str, size: int):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(patches, "decode_image", counted)
    return calls


def test_cache_reused(dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    calls = counting_decoder(monkeypatch)
    cache = tmp_path / "cache"
    first, good, report = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert len(calls) == 21 and not report.from_cache and good.all()
    npy = Path(report.cache_path)
    # the pixels and their details; no partial or progress file left behind (the lock file stays, empty)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [npy.stem + ".json", npy.name]
    assert isinstance(first, ArrayImages) and isinstance(first.base, np.memmap)  # a view of the file, not a copy
    again, good2, report2 = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert len(calls) == 21 and report2.from_cache and report2.cache_rebuilt is None
    np.testing.assert_array_equal(first[:], again[:])
    np.testing.assert_array_equal(good, good2)
    other, _, report3 = decode_all(PathImages(index["path"], 64), cache, progress=False)  # size is in the key
    assert len(calls) == 42 and not report3.from_cache and other.shape[1] == 64


def test_damaged_cache_is_rebuilt(dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    cache = tmp_path / "cache"
    first, _, report = decode_all(PathImages(index["path"], 32), cache, progress=False)
    first = first[:]  # into memory: the damage below rewrites the mapped file in place
    path = Path(report.cache_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # as if the disk filled up mid-write
    calls = counting_decoder(monkeypatch)
    again, _, report2 = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert len(calls) == 21 and not report2.from_cache and report2.cache_rebuilt is not None
    np.testing.assert_array_equal(first[:], again[:])
    assert path.stat().st_size == len(data)
    decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert len(calls) == 21  # the rebuilt file is trusted again


def test_cache_with_wrong_shape_is_rebuilt(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    cache = tmp_path / "cache"
    first, _, report = decode_all(PathImages(index["path"], 32), cache, progress=False)
    path = Path(report.cache_path)
    first = first[:]  # into memory: the damage below rewrites the mapped file in place
    np.save(path, first[:-1])  # a readable array that lost its last image
    calls = counting_decoder(monkeypatch)
    again, _, report2 = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert len(calls) == 21 and "images uint8 (20, 32, 32, 3), expected uint8 (21, 32, 32, 3)" in report2.cache_rebuilt
    np.testing.assert_array_equal(first[:], again[:])


def test_interrupted_decode_leaves_no_cache(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    cache = tmp_path / "cache"
    real = patches.decode_image

    def dies(path: str, size: int):
        if path == index["path"][10]:
            raise RuntimeError("interrupted")
        return real(path, size)

    monkeypatch.setattr(patches, "decode_image", dies)
    monkeypatch.setattr(patches, "CHUNK", 4)  # progress saved every 4 patches
    monkeypatch.setattr(patches, "SAVE_SECONDS", 0.0)
    with pytest.raises(RuntimeError, match="interrupted"):
        decode_all(PathImages(index["path"], 32), cache, progress=False)
    # no file that looks like a complete cache; the partial pixels and how far they got, for the resume
    assert not list(cache.glob("tcga_ut_*.npy")) and not list(cache.glob("tcga_ut_*.json"))
    assert json.loads(next(cache.glob(".*.progress.json")).read_text())["done"] == 8  # chunks 0-3 and 4-7
    monkeypatch.setattr(patches, "decode_image", real)
    calls = counting_decoder(monkeypatch)
    resumed, good, report = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert good.all() and not report.from_cache and report.resumed_at == 8
    assert calls == list(index["path"][8:])  # only what the killed decode had not written
    monkeypatch.setattr(patches, "CHUNK", 1024)
    np.testing.assert_array_equal(resumed[:], decode_all(PathImages(index["path"], 32), None, progress=False)[0])
    assert not list(cache.glob(".*.partial")) and not list(cache.glob(".*.progress.json"))


KILLED_DECODE = """
import sys, time
from tasks import patches
from tasks.tcga_ut import PathImages, load_index
patches.CHUNK, patches.SAVE_SECONDS = 64, 0.0
real = patches.decode_image
def slow(path, size):
    time.sleep(0.005)
    return real(path, size)
patches.decode_image = slow
index, _ = load_index(sys.argv[1], sys.argv[2])
patches.decode_all(PathImages(index["path"], 32), sys.argv[3], workers=1, progress=False)
"""


def test_sigkilled_decode_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A decode in another process, SIGKILLed once it has saved two chunks, and the decode that resumes it."""
    import signal
    import subprocess
    import sys
    import time

    from benchmark.studies.scale import make_folder
    from tests.conftest import ROOT

    root, csv = make_folder(640, tmp_path / "tcga", load_he())
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DECODE, str(root), str(csv), str(cache)], env=env)
    done, deadline = 0, time.monotonic() + 120
    while done < 128 and proc.poll() is None and time.monotonic() < deadline:
        progress = list(cache.glob(".*.progress.json"))
        try:
            done = json.loads(progress[0].read_text())["done"] if progress else 0
        except (OSError, ValueError):  # being replaced right now
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and done >= 128
    assert not list(cache.glob("tcga_ut_*.npy"))  # no complete cache
    index, _ = load_index(root, csv)
    with caplog.at_level("INFO", logger="tasks.patches"):
        resumed, good, report = decode_all(PathImages(index["path"], 32), cache, progress=False)
    assert 128 <= report.resumed_at < 640 and good.all()
    assert f"resuming the decode of 640 patches at {report.resumed_at}" in caplog.text
    np.testing.assert_array_equal(resumed[:], decode_all(PathImages(index["path"], 32), None, progress=False)[0])


def test_worker_processes_decode_as_threads_do(dataset: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Large cohorts are decoded by processes writing into the mapped file: the same pixels, the same bad-file
    list, in order."""
    root, csv = dataset
    index, _ = load_index(root, csv)
    Path(index["path"][6]).write_bytes(b"")
    threads, good_t, report_t = decode_all(PathImages(index["path"], 32, on_error="skip"), None, workers=2,
                                           progress=False)
    monkeypatch.setattr(patches, "PROCESS_MIN", 1)
    procs, good_p, report_p = decode_all(PathImages(index["path"], 32, on_error="skip"), tmp_path / "c", workers=2,
                                         progress=False)
    np.testing.assert_array_equal(good_t, good_p)
    np.testing.assert_array_equal(threads, procs[:])
    assert report_p.skipped == report_t.skipped and len(report_p.skipped) == 1
    assert "zero-byte" in report_p.skipped[0][1]
    with pytest.raises(DataError, match=str(index["path"][6])):
        decode_all(PathImages(index["path"], 32, on_error="fail"), tmp_path / "d", workers=2, progress=False)


def test_a_split_of_a_mapped_cohort_is_a_view_and_travels_as_a_file_name(dataset: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    import pickle

    root, csv = dataset
    index, _ = load_index(root, csv)
    pixels, _, _ = decode_all(PathImages(index["path"], 32), tmp_path / "cache", progress=False)
    meta = index.drop(columns="path").assign(label=0, is_synthetic=False, source="tcga-ut")
    split = Split(pixels, meta, "all")
    part = split.subset(np.arange(3, 15, 2)).subset(np.array([True, False, True, False, True, False]))
    assert isinstance(part.images, ArrayImages) and part.images.base is pixels.base  # no pixels copied
    np.testing.assert_array_equal(part.images[:], np.asarray(pixels.base)[[3, 7, 11]])
    blob = pickle.dumps(part)
    assert len(blob) < 20_000  # a file name and positions, not 21 x 32 x 32 x 3 pixels
    back = pickle.loads(blob)
    assert isinstance(back.images.base, np.memmap) and back.fingerprint() == part.fingerprint()
    np.testing.assert_array_equal(back.images[:], part.images[:])
    assert part.fingerprint() != split.subset(np.array([3, 7, 12])).fingerprint()


def test_augmented_split_of_a_mapped_cohort_joins_without_reading(dataset: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """concat of a mapped training split and synthetic patches: a ConcatImages that reads no pixel until asked,
    indexes across both parts like the joined array, and whose real rows are the training split's own view."""
    import pickle

    from benchmark.core.data import ConcatImages, concat

    root, csv = dataset
    index, _ = load_index(root, csv)
    pixels, _, _ = decode_all(PathImages(index["path"], 32), tmp_path / "cache", progress=False)
    meta = index.drop(columns="path").assign(label=0, is_synthetic=False, source="tcga-ut")
    train = Split(pixels, meta, "all").subset(np.arange(2, 20))
    fake = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    synthetic = Split(fake, meta.iloc[:5].assign(is_synthetic=True).reset_index(drop=True), "synthetic")
    joined = concat([train, synthetic], "train")
    assert isinstance(joined.images, ConcatImages) and joined.images.shape == (23, 32, 32, 3)
    expected = np.concatenate([np.asarray(pixels.base)[2:20], fake])
    np.testing.assert_array_equal(joined.images[:], expected)
    picks = np.array([22, 0, 17, 18, 5])  # across the parts, out of order
    np.testing.assert_array_equal(joined.images[picks], expected[picks])
    np.testing.assert_array_equal(joined.images[-1], fake[-1])
    np.testing.assert_array_equal(joined.subset(picks).images[:], expected[picks])
    real = joined.subset(~joined.metadata["is_synthetic"].to_numpy(bool))
    assert isinstance(real.images, ArrayImages) and real.fingerprint() == train.fingerprint()  # shared caches
    np.testing.assert_array_equal(joined.subset(np.arange(18, 23)).images, fake)  # the synthetic part itself
    back = pickle.loads(pickle.dumps(joined))
    assert back.fingerprint() == joined.fingerprint() and len(pickle.dumps(joined)) < 40_000
    np.testing.assert_array_equal(back.images[:], expected)
    assert concat([train, synthetic.subset(np.arange(4))], "x").fingerprint() != joined.fingerprint()
    with pytest.raises(IndexError, match="out of range"):
        joined.images[23]


def test_fingerprint_follows_the_files(dataset: tuple[Path, Path]) -> None:
    root, csv = dataset
    index, _ = load_index(root, csv)
    images = PathImages(index["path"], 32)
    before = images.fingerprint()
    assert before == PathImages(index["path"], 32).fingerprint()
    assert before != PathImages(index["path"], 64).fingerprint()
    assert before != images.take(np.arange(20)).fingerprint()
    target = Path(index["path"][4])
    Image.fromarray(np.asarray(Image.open(index["path"][0]))[::-1]).save(target, quality=80)  # new content
    changed = images.fingerprint()
    assert changed != before
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer mtime
    assert images.fingerprint() != changed
