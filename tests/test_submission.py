"""Mask text round trips (bit-exact against pycocotools), prediction strings, writer, checker."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from cellloc import submission
from cellloc.errors import InputError
from cellloc.submission import (
    MAX_FIELD_PIXELS,
    SubmissionWriter,
    check_submission,
    decode_mask,
    encode_field,
    encode_mask,
    field_rles,
    format_confidence,
    max_rle_bytes,
    parse_submission,
    prediction_string,
    read_sample_submission,
    unpack_masks,
)


def reference_text(mask: np.ndarray) -> str:
    """The format as the competition defines it, spelled out with pycocotools."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))[:, :, None])[0]
    return base64.b64encode(zlib.compress(rle["counts"], 9)).decode("ascii")


def pack(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


# --------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 13), (13, 7), (64, 33)])
@pytest.mark.parametrize("fill", ["empty", "full", "random", "last_pixel", "first_pixel"])
def test_encode_mask_matches_pycocotools_and_round_trips(shape, fill):
    rng = np.random.default_rng(sum(shape))
    mask = {
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
        "random": rng.random(shape) < 0.4,
        "last_pixel": np.zeros(shape, bool),
        "first_pixel": np.zeros(shape, bool),
    }[fill]
    if fill == "last_pixel":
        mask[-1, -1] = True
    if fill == "first_pixel":
        mask[0, 0] = True
    text = encode_mask(mask)
    assert text == reference_text(mask)
    back = decode_mask(text, *shape)
    assert back.dtype == bool and back.shape == shape
    np.testing.assert_array_equal(back, mask)


def test_encode_mask_fortran_and_c_order_agree():
    mask = np.random.default_rng(0).random((31, 17)) < 0.5
    assert encode_mask(np.asfortranarray(mask)) == encode_mask(mask) == reference_text(mask)


def test_encode_mask_handles_long_runs_and_large_fields():
    mask = np.zeros((1500, 1300), bool)  # counts > 2^20 need 5-6 characters each
    mask[3:1490, 700:701] = True
    mask[-1, -1] = True
    assert encode_mask(mask) == reference_text(mask)
    np.testing.assert_array_equal(decode_mask(encode_mask(mask), 1500, 1300), mask)


def test_encode_field_matches_each_cell_alone():
    rng = np.random.default_rng(3)
    for trial in range(40):
        h, w = rng.integers(1, 30, 2)
        labels = rng.integers(0, 5, (h, w)).astype(np.uint16) * 7  # ids 7, 14, 21, 28
        if trial % 2:
            labels = np.asfortranarray(labels)
        got = encode_field(labels)
        present = sorted(set(np.unique(labels)) - {0})
        assert sorted(got) == present
        for cid, text in got.items():
            assert text == reference_text(labels == cid), (trial, cid)


def test_encode_field_requested_ids_absent_cell_is_empty():
    labels = np.zeros((5, 4), np.uint32)
    labels[1:3, 1:3] = 70000
    got = encode_field(labels, [70000, 3])
    assert got[70000] == reference_text(labels == 70000)
    assert got[3] == reference_text(np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="positive"):
        encode_field(labels, [0])


def test_field_rles_are_the_pycocotools_counts():
    labels = np.array([[0, 1, 1], [2, 2, 1]], np.uint8)
    rles = field_rles(labels)
    for cid in (1, 2):
        ref = coco_mask.encode(np.asfortranarray((labels == cid).astype(np.uint8))[:, :, None])[0]
        assert rles[cid] == ref["counts"]


def test_encode_mask_rejects_non_bool():
    with pytest.raises(ValueError, match="boolean"):
        encode_mask(np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize(
    "text, reason",
    [
        ("not base64!!", "base64"),
        (base64.b64encode(b"plain bytes, not zlib").decode(), "zlib"),
        (pack(b""), "empty RLE"),
        (pack(b"6 :"), "bad character"),
        (pack(b"2l"), "ends inside a run length"),  # 'l' = 48 + 0x3c has the "more" bit
        (pack(b"o" * 7 + b"0"), "too large"),  # 8 five-bit groups: beyond pycocotools' 32 bits
        (pack(b"0O"), "negative run length"),  # 'O' = 48 + 0x1f: one group, sign bit set: -1
        (pack(b"<"), "covers 12 pixels but the field has 20"),
    ],
)
def test_decode_mask_reasons(text, reason):
    with pytest.raises(ValueError, match=reason):
        decode_mask(text, 4, 5)


def test_unpack_masks_checks_each_text_on_its_own():
    good = encode_mask(np.eye(4, 5, dtype=bool))
    coco, errors = unpack_masks([good, "%%%", good], 4, 5)
    assert errors == [None, "mask is not valid base64", None]
    assert coco[0] == coco[2] and coco[1] is None
    _, errors = unpack_masks([good], None, None)  # size unknown: encoding only
    assert errors == [None]


# --------------------------------------------------------------------------- prediction strings


def test_prediction_string_orders_filters_and_caps():
    masks = ["AAA", "BBB"]
    scores = np.zeros((2, 19))
    scores[0, [3, 7, 18]] = [0.2, 0.9, 0.5]
    scores[1, 0] = 0.05
    s = prediction_string(masks, scores, min_confidence=0.1)
    assert s == "7 0.9 AAA 18 0.5 AAA 3 0.2 AAA"
    assert prediction_string(masks, scores, min_confidence=0.1, top_k=1) == "7 0.9 AAA"
    assert prediction_string(masks, scores, min_confidence=0.01, top_k=1) == "7 0.9 AAA 0 0.05 BBB"
    assert prediction_string([], np.zeros((0, 19))) == ""


def test_prediction_string_rejects_bad_scores():
    with pytest.raises(ValueError, match="within"):
        prediction_string(["A"], np.full((1, 19), 1.5))
    with pytest.raises(ValueError, match="n_cells"):
        prediction_string(["A", "B"], np.zeros((1, 19)))


def test_format_confidence_is_positional():
    assert format_confidence(1e-7) == "0.0000001"
    assert format_confidence(0.123456789) == "0.123457"
    assert format_confidence(1.0) == "1"
    assert format_confidence(0.0) == "0"


# --------------------------------------------------------------------------- writer


def test_writer_publishes_only_at_close(tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    with SubmissionWriter(out) as w:
        w.write("a", 4, 5, "")
        assert not out.exists() and w.partial.exists()
        w.write("b", 4, 5, "0 1 XYZ")
    assert out.exists() and not w.partial.exists()
    assert out.read_text().splitlines() == ["ID,ImageWidth,ImageHeight,PredictionString", "a,4,5,", "b,4,5,0 1 XYZ"]


def test_writer_keeps_partial_on_error_and_resumes(tmp_path):
    out = tmp_path / "submission.csv"
    with pytest.raises(RuntimeError):
        with SubmissionWriter(out) as w:
            w.write("a", 4, 5, "")
            raise RuntimeError("killed")
    assert not out.exists()
    # a torn last line, as a kill in mid-write would leave
    with open(w.partial, "a") as fh:
        fh.write("b,4,5,0 0.5 AB")
    with SubmissionWriter(out) as w2:
        assert w2.done == {"a"}
        with pytest.raises(ValueError, match="already"):
            w2.write("a", 4, 5, "")
        w2.write("b", 4, 5, "")
    assert out.read_text().splitlines()[1:] == ["a,4,5,", "b,4,5,"]


def test_writer_refuses_foreign_partial(tmp_path):
    out = tmp_path / "submission.csv"
    (tmp_path / "submission.csv.partial").write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="not a partial submission"):
        with SubmissionWriter(out):
            pass


# --------------------------------------------------------------------------- parse and check


def write_rows(path, rows, header="ID,ImageWidth,ImageHeight,PredictionString"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture
def mask_text():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    return encode_mask(m)


def test_parse_submission_reads_rows(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", [f"f1,5,4,3 0.25 {mask_text} 0 1 {mask_text}", "f2,5,4,"])
    sub = parse_submission(p, 19)
    assert list(sub) == ["f1", "f2"]
    f1 = sub["f1"]
    assert (f1.width, f1.height, f1.line) == (5, 4, 2)
    np.testing.assert_array_equal(f1.classes, [3, 0])
    np.testing.assert_allclose(f1.confidences, [0.25, 1.0])
    assert f1.masks == [mask_text, mask_text]
    assert len(sub["f2"].masks) == 0


def test_parse_submission_raises_on_first_problem(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", ["f1,5,4,", f"f2,5,4,3 2 {mask_text}"])
    with pytest.raises(InputError, match="line 3: prediction 1: confidence 2 is outside"):
        parse_submission(p, 19)
    p = write_rows(tmp_path / "s.csv", ["f1,5,4,", "f1,5,4,"])
    with pytest.raises(InputError, match="line 3: duplicate ID 'f1'"):
        parse_submission(p, 19)


def test_check_submission_valid_file(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", [f"f1,5,4,3 0.25 {mask_text}", "f2,5,4,"])
    assert check_submission(p, expected_ids=["f1", "f2"], sizes={"f1": (5, 4), "f2": (5, 4)}, num_classes=19) == []


@pytest.mark.parametrize(
    "row, reason",
    [
        ("f1,5,4,3 0.5 %%%%", "prediction 1: mask is not valid base64"),
        (f"f1,5,4,3 0.5 {base64.b64encode(b'xyz').decode()}", "prediction 1: mask is not zlib"),
        (f"f1,5,4,3 0.5 {pack(b'2l')}", "prediction 1: RLE string ends inside"),
        ("f1,6,4,3 0.5 {m}", "prediction 1: mask covers 20 pixels but the field has 24"),
        ("f1,5,4,19 0.5 {m}", "prediction 1: unknown class '19'"),
        ("f1,5,4,x 0.5 {m}", "prediction 1: unknown class 'x'"),
        ("f1,5,4,3 1.5 {m}", "prediction 1: confidence 1.5 is outside [0, 1]"),
        ("f1,5,4,3 -0.1 {m}", "prediction 1: confidence -0.1 is outside"),
        ("f1,5,4,3 nan {m}", "prediction 1: confidence 'nan' is not a number"),
        ("f1,5,4,3 high {m}", "prediction 1: confidence 'high' is not a number"),
        ("f1,5,4,3 0.5 {m} 4", "4 tokens, not a multiple of 3"),
        ("f1,0,4,", "bad ImageWidth '0'"),
        ("f1,5,four,", "bad ImageHeight 'four'"),
        (",5,4,", "empty ID"),
    ],
)
def test_check_submission_reports_each_problem(tmp_path, mask_text, row, reason):
    p = write_rows(tmp_path / "s.csv", ["f0,5,4,", row.format(m=mask_text)])
    problems = check_submission(p, num_classes=19)
    assert [line for line, _ in problems] == [3] * len(problems)
    assert any(reason in r for _, r in problems), problems


def test_check_submission_ids_and_sizes(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", ["f1,5,4,", "f1,5,4,", "zz,5,4,", "f3,4,5,"])
    problems = check_submission(p, expected_ids=["f1", "f2", "f3"], sizes={"f3": (5, 4)}, num_classes=19)
    assert (3, "duplicate ID 'f1' (first on line 2)") in problems
    assert (4, "unexpected ID 'zz'") in problems
    assert (5, "size 4x5 differs from the field's 5x4") in problems
    assert (0, "missing ID 'f2'") in problems
    assert len(problems) == 4


def test_check_submission_bad_header_and_cap(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", ["f1,5,4,"], header="ID,Width,Height,PredictionString")
    [(line, reason)] = check_submission(p, num_classes=19)
    assert line == 1 and "missing column(s) ImageWidth, ImageHeight" in reason
    p = write_rows(tmp_path / "s.csv", ["f1,5,4," + " ".join(["99 2 %%"] * 4)])
    problems = check_submission(p, max_per_line=5, num_classes=19)
    assert len(problems) == 6 and problems[-1][1] == "... and 7 more problems on this line"
    with pytest.raises(InputError, match="not found"):
        check_submission(tmp_path / "nope.csv", num_classes=19)


def test_read_sample_submission(tmp_path):
    p = write_rows(tmp_path / "sample.csv", ["a,2048,1728,0 1 eNoLAAA=", "b,3072,3072,"])
    assert read_sample_submission(p) == {"a": (2048, 1728), "b": (3072, 3072)}


# --------------------------------------------------------------------------- hostile and untidy files


def test_max_rle_bytes_bounds_the_worst_real_masks():
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (2, 3), (64, 64), (97, 61)]:
        n = shape[0] * shape[1]
        checker = np.indices(shape).sum(axis=0) % 2 == 1  # a run per pixel
        stripes = np.repeat(rng.random(n) < 0.5, 1).reshape(shape, order="F")
        for mask in (checker, stripes, ~checker, np.zeros(shape, bool), np.ones(shape, bool)):
            assert len(field_rles(mask, [1])[1]) <= max_rle_bytes(n)
    # Runs alternating 1 and 17 pixels: every delta is +-16, each needing 2 characters.
    col = np.concatenate([np.r_[np.zeros(1, bool), np.ones(17, bool)]] * 50)
    assert len(field_rles(col[:, None], [1])[1]) <= max_rle_bytes(col.size)


def test_zlib_bomb_mask_is_refused_by_line_with_little_memory(tmp_path, zlib_bomb, run_memory_capped, mask_text):
    bomb = zlib_bomb(4096)  # 4 GiB of '0' in about 4 MiB of text
    assert len(bomb) < 6 << 20
    p = write_rows(tmp_path / "s.csv", ["f0,5,4,", "", f"f1,2048,2048,0 0.5 {bomb} 3 0.5 {bomb}", f"f2,5,4,1 0.5 {mask_text}"])
    res, growth = run_memory_capped(
        "from cellloc.submission import check_submission",
        f"print(json.dumps(check_submission({str(p)!r}, num_classes=19)))",
        cap_mib=768,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    problems = [tuple(x) for x in json.loads(res.stdout)]
    limit = max_rle_bytes(2048 * 2048)
    reason = f"mask decompresses to more than {limit} bytes, more than any RLE of its field size needs"
    assert problems == [(4, f"prediction {k}: {reason}") for k in (1, 2)]
    assert growth < 256, f"peak RSS grew by {growth:.0f} MiB"


def test_a_row_cannot_claim_a_huge_field(tmp_path, mask_text):
    p = write_rows(tmp_path / "s.csv", [f"f1,100000,100000,0 0.5 {mask_text}"])
    problems = check_submission(p, num_classes=19)
    assert (2, f"size 100000x100000 is larger than any field (at most {MAX_FIELD_PIXELS} pixels)") in problems
    # The mask is still checked, as a mask of unknown size: its encoding is fine.
    assert len(problems) == 1


def test_truncated_zlib_stream_is_refused():
    packed = zlib.compress(b"<", 9)[:-3]
    coco, errors = unpack_masks([base64.b64encode(packed).decode()], 4, 5)
    assert coco == [None] and "cut short" in errors[0]


def test_many_masks_are_parsed_in_bounded_batches():
    # More characters than one parsing batch, spread over many valid masks of one field.
    rng = np.random.default_rng(2)
    masks = [rng.random((120, 90)) < 0.5 for _ in range(40)]
    texts = [encode_mask(m) for m in masks]
    assert sum(len(field_rles(m, [1])[1]) for m in masks) > 10 * 4096
    old = submission._PARSE_BATCH_CHARS
    try:
        submission._PARSE_BATCH_CHARS = 4096
        coco, errors = unpack_masks(texts + ["%%"], 120, 90)
    finally:
        submission._PARSE_BATCH_CHARS = old
    assert errors == [None] * 40 + ["mask is not valid base64"]
    for m, b in zip(masks, coco):
        np.testing.assert_array_equal(coco_mask.decode({"size": [120, 90], "counts": b}).astype(bool), m)


def test_errors_after_blank_lines_name_the_physical_line(tmp_path, mask_text):
    p = tmp_path / "s.csv"
    p.write_text(f"ID,ImageWidth,ImageHeight,PredictionString\nf0,5,4,\n\n\nf1,5,4,3 2 {mask_text}\n")
    assert check_submission(p, num_classes=19) == [(5, "prediction 1: confidence 2 is outside [0, 1]")]
    with pytest.raises(InputError, match="line 5: prediction 1: confidence 2 is outside"):
        parse_submission(p, 19)
    p.write_text("ID,ImageWidth,ImageHeight,PredictionString\n\nf0,5,4,\n\nf1,5,4\n")
    with pytest.raises(InputError, match=r"line 5: 3 field\(s\) where the header .* has 4"):
        parse_submission(p, 19)


def test_writer_resumes_a_partial_with_long_rows(tmp_path, mask_text):
    path = tmp_path / "sub.csv"
    long_row = " ".join([f"3 0.5 {mask_text}"] * 20000)  # ~0.6 MB: above csv's default field limit
    with pytest.raises(RuntimeError):
        with SubmissionWriter(path) as w:
            w.write("f1", 5, 4, long_row)
            raise RuntimeError("killed")
    with SubmissionWriter(path) as w:
        assert w.done == {"f1"}
        w.write("f2", 5, 4, "")
    assert list(parse_submission(path, 19)) == ["f1", "f2"]


@pytest.mark.parametrize("piece", [64, 97, 250])
def test_long_masks_parse_piece_by_piece_to_the_same_runs(monkeypatch, piece):
    rng = np.random.default_rng(piece)
    masks = [rng.random((60, 50)) < 0.5, np.indices((70, 40)).sum(0) % 2 == 1, rng.random((33, 90)) < 0.1]
    monkeypatch.setattr(submission, "_PARSE_BATCH_CHARS", piece)
    for m in masks:
        assert len(field_rles(m, [1])[1]) > 2 * piece  # several pieces
        np.testing.assert_array_equal(decode_mask(encode_mask(m), *m.shape), m)
    good = field_rles(masks[0], [1])[1]
    counts = submission._parse_coco_strings([good], None)[0][0]
    negative = counts.copy()
    negative[-10] = -3  # a run length of -3 in the last piece
    cases = {
        good[:-1] + b"o": "ends inside a run length",  # 'o' has the "more" bit
        good[:200] + b"\x10" + good[201:]: "bad character",
        good[: 2 * piece] + b"ooooooo0" + good[2 * piece :]: "too large",
        submission._coco_strings(negative, np.array([0, negative.size]))[0]: "negative run length",
        good + b"1": "pixels but the field has 3000",
    }
    for raw, reason in cases.items():
        _, errors = unpack_masks([pack(raw)], 60, 50)
        monkeypatch.setattr(submission, "_PARSE_BATCH_CHARS", 1 << 20)
        _, whole = unpack_masks([pack(raw)], 60, 50)  # the same string parsed in one pass
        monkeypatch.setattr(submission, "_PARSE_BATCH_CHARS", piece)
        assert errors == whole and reason in errors[0], (reason, errors, whole)


def test_a_bomb_just_under_the_bound_is_parsed_in_little_memory(tmp_path, run_memory_capped):
    # '0' * n: every run length 0, so it inflates to just under the bound and must be parsed.
    n = 2048 * 2048
    text = base64.b64encode(zlib.compress(b"0" * n, 9)).decode()
    p = write_rows(tmp_path / "s.csv", [f"f1,2048,2048,0 0.5 {text}"])
    res, growth = run_memory_capped(
        "from cellloc.submission import check_submission", f"print(json.dumps(check_submission({str(p)!r}, num_classes=19)))", cap_mib=768
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) == [[2, f"prediction 1: mask covers 0 pixels but the field has {n}"]]
    assert growth < 128, f"peak RSS grew by {growth:.0f} MiB"


def test_a_full_disk_met_by_the_writer_names_the_partial_file(tmp_path):
    path = tmp_path / "submission.csv"

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            raise OSError(28, "No space left on device")  # what a real write raises: no file name

        def __getattr__(self, name):
            return getattr(self.fh, name)

    writer = SubmissionWriter(path)
    with pytest.raises(OSError) as err:
        with writer:
            writer._fh = FullDisk(writer._fh)
            writer.write("f1", 5, 4, "")
    assert err.value.errno == 28 and err.value.filename == str(tmp_path / "submission.csv.partial")
    with SubmissionWriter(path) as again:  # the partial file resumes once there is room
        assert again.done == set()
