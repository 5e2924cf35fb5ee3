"""`crossentropy score`: results against sklearn, chunked reading, formats and one-line errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm

from crossentropy.cli import main
from crossentropy.cli._score import CSVReader, NPYReader

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "predictions.csv"
CLASSES = ["cat", "dog", "eel", "fox"]


def score(argv, capsys):
    status = main(["score", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def score_json(argv, capsys):
    status, out, err = score([*argv, "--json"], capsys)
    assert status == 0, err
    return json.loads(out)


def random_predictions(n, k=4, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.8), size=n)
    y = rng.integers(0, k, size=n)
    return p, y


def write_csv(path, p, y, names=CLASSES, label="y", digits=17):
    lines = [",".join([*names[: p.shape[1]], label])]
    for row, t in zip(p, y):
        lines.append(",".join([*(f"{v:.{digits}g}" for v in row), names[t]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def sklearn_reference(p, y):
    """sklearn wants the columns in sorted label order; CLASSES is already sorted."""
    return skm.log_loss(y, p, labels=range(p.shape[1]))


def test_example_file_scores_and_matches_sklearn(capsys):
    status, out, err = score([EXAMPLE, "--label-column", "label"], capsys)
    assert status == 0, err
    for word in ("log loss (nats)", "log loss (bits)", "perplexity", "accuracy", "Brier", "ECE"):
        assert word in out
    lines = EXAMPLE.read_text().splitlines()
    names = lines[0].split(",")[:3]
    p = np.array([[float(v) for v in line.split(",")[:3]] for line in lines[1:]])
    y = np.array([names.index(line.split(",")[3]) for line in lines[1:]])
    report = score_json([EXAMPLE, "--label-column", "label"], capsys)
    assert report["n"] == len(y)
    # sklearn orders columns by sorted label; map our columns to its order
    order = np.argsort(names)
    rank = np.argsort(order)
    assert report["log_loss_nats"] == pytest.approx(skm.log_loss(rank[y], p[:, order]), rel=1e-12)
    assert report["log_loss_bits"] == pytest.approx(report["log_loss_nats"] / math.log(2))
    assert report["perplexity"] == pytest.approx(math.exp(report["log_loss_nats"]))
    assert report["brier_score"] == pytest.approx(
        skm.brier_score_loss(rank[y], p[:, order]), rel=1e-12
    )
    assert report["accuracy"] == pytest.approx(np.mean(p.argmax(axis=1) == y))
    for c, row in enumerate(report["per_class"]):
        assert row["label"] == names[c]
        assert row["count"] == int(np.sum(y == c))
        assert row["cross_entropy"] == pytest.approx(-np.mean(np.log(p[y == c, c])), rel=1e-12)
    assert sum(b["count"] for b in report["reliability"]) == len(y)


def test_chunked_scoring_equals_whole_and_chunks_are_bounded(tmp_path, capsys):
    p, y = random_predictions(203)
    path = write_csv(tmp_path / "pred.csv", p, y)
    whole = score_json([path, "--label-column", "y", "--chunk-rows", 100000], capsys)
    chunked = score_json([path, "--label-column", "y", "--chunk-rows", 7], capsys)
    for key in ("n", "log_loss_nats", "accuracy", "brier_score", "ece"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), key
    for a, b in zip(chunked["per_class"], whole["per_class"]):
        assert a["count"] == b["count"]
        assert a["cross_entropy"] == pytest.approx(b["cross_entropy"], rel=1e-12)
    assert whole["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)
    reader = CSVReader(str(path), "y", None, chunk_rows=16)
    try:
        sizes = [chunk.probs.shape[0] for chunk in reader.chunks()]
    finally:
        reader.close()
    assert max(sizes) <= 16 and sum(sizes) == 203 and len(sizes) == math.ceil(203 / 16)


def test_npy_with_true_labels_in_npy_and_text(tmp_path, capsys):
    p, y = random_predictions(50, k=3, seed=1)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    ref = skm.log_loss(y, p, labels=range(3))
    by_index = score_json([tmp_path / "p.npy", "--true", tmp_path / "y.npy"], capsys)
    assert by_index["log_loss_nats"] == pytest.approx(ref, rel=1e-12)
    assert by_index["classes"] == ["0", "1", "2"]
    # names through --labels, labels as text with a header line
    names = ["ant", "bee", "cow"]
    (tmp_path / "y.csv").write_text("label\n" + "\n".join(names[t] for t in y) + "\n")
    named = score_json(
        [tmp_path / "p.npy", "--true", tmp_path / "y.csv", "--labels", *names, "--chunk-rows", 9],
        capsys,
    )
    assert named["log_loss_nats"] == pytest.approx(ref, rel=1e-12)
    assert [c["label"] for c in named["per_class"]] == names
    # np.savetxt writes integer labels as floats such as 2.000000000000000000e+00
    np.savetxt(tmp_path / "y.txt", y)
    assert score_json([tmp_path / "p.npy", "--true", tmp_path / "y.txt"], capsys)[
        "log_loss_nats"
    ] == pytest.approx(ref, rel=1e-12)
    reader = NPYReader(str(tmp_path / "p.npy"), None, chunk_rows=8)
    try:
        sizes = [chunk.probs.shape[0] for chunk in reader.chunks()]
    finally:
        reader.close()
    assert max(sizes) == 8 and sum(sizes) == 50


def test_npy_fortran_order_float32_and_binary(tmp_path, capsys):
    p, y = random_predictions(40, k=3, seed=2)
    np.save(tmp_path / "f.npy", np.asfortranarray(p))
    np.save(tmp_path / "y.npy", y)
    report = score_json(
        [tmp_path / "f.npy", "--true", tmp_path / "y.npy", "--chunk-rows", 6], capsys
    )
    assert report["log_loss_nats"] == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    q = np.random.default_rng(3).uniform(size=30).astype(np.float32)
    t = np.arange(30) % 2
    np.save(tmp_path / "b.npy", q)
    np.save(tmp_path / "t.npy", t)
    binary = score_json([tmp_path / "b.npy", "--true", tmp_path / "t.npy"], capsys)
    assert binary["log_loss_nats"] == pytest.approx(skm.log_loss(t, q.astype(np.float64)), rel=1e-7)
    assert binary["brier_score"] == pytest.approx(
        skm.brier_score_loss(t, q.astype(np.float64)), rel=1e-6
    )


def test_parquet_matches_csv(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p, y = random_predictions(70, seed=4)
    columns = {name: p[:, j] for j, name in enumerate(CLASSES)}
    columns["y"] = [CLASSES[t] for t in y]
    pq.write_table(pa.table(columns), tmp_path / "p.parquet", row_group_size=16)
    report = score_json([tmp_path / "p.parquet", "--label-column", "y", "--chunk-rows", 10], capsys)
    assert report["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)
    columns["y"] = [CLASSES[t] if i != 33 else "gnu" for i, t in enumerate(y)]
    pq.write_table(pa.table(columns), tmp_path / "bad.parquet")
    status, _, err = score([tmp_path / "bad.parquet", "--label-column", "y"], capsys)
    assert status == 2 and "row 34: label 'gnu'" in err


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    status, _, err = score([tmp_path / "p.parquet", "--label-column", "y"], capsys)
    assert status == 2 and "needs pyarrow" in err and err.count("\n") == 1


def test_zero_probability_is_infinite_unless_eps(tmp_path, capsys):
    path = tmp_path / "z.csv"
    path.write_text("a,b,y\n1.0,0.0,b\n0.5,0.5,a\n")
    status, out, _ = score([path, "--label-column", "y"], capsys)
    assert status == 0 and "inf" in out and "--eps" in out
    clipped = score_json([path, "--label-column", "y", "--eps", "1e-6"], capsys)
    assert clipped["log_loss_nats"] == pytest.approx(-(math.log(1e-6) + math.log(0.5)) / 2)


def test_json_tells_an_infinite_loss_from_an_undefined_value(tmp_path, capsys):
    # class b's only row has p(b) = 0: its cross-entropy and the log loss are infinite; class c
    # has no rows, so its cross-entropy and accuracy are not defined
    path = tmp_path / "z.csv"
    path.write_text("a,b,c,y\n1.0,0.0,0.0,b\n0.5,0.25,0.25,a\n")
    status, out, _ = score([path, "--label-column", "y", "--json"], capsys)
    assert status == 0
    report = json.loads(out)  # strict JSON: no bare Infinity or NaN tokens
    for key in ("log_loss_nats", "log_loss_bits", "log_loss", "perplexity"):
        assert report[key] == "Infinity", key
        assert float(report[key]) == math.inf
    assert report["n_zero_prob"] == 1
    a, b, c = report["per_class"]
    assert a["cross_entropy"] == pytest.approx(math.log(2))
    assert b["cross_entropy"] == "Infinity" and b["count"] == 1
    assert c["cross_entropy"] is None and c["accuracy"] is None and c["count"] == 0
    assert "Infinity" not in out.replace('"Infinity"', "")
    # the table shows the same distinction: inf for b, - for c
    status, out, _ = score([path, "--label-column", "y"], capsys)
    rows = {cells[0]: cells[1:] for cells in _table_rows(out)}
    assert rows["b"][1] == "inf" and rows["c"][1] == "-"
    assert rows["log loss (nats)"] == ["inf"]


def _table_rows(text):
    for line in text.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│") if c.strip()]
        if len(cells) >= 2:
            yield cells


def test_base_two_reports_per_class_in_bits_and_renormalize(tmp_path, capsys):
    path = tmp_path / "u.csv"
    path.write_text("a,b,y\n2,6,b\n3,1,a\n1,1,b\n")
    nats = score_json([path, "--label-column", "y", "--renormalize"], capsys)
    # --normalize is the older name of the same flag
    bits = score_json([path, "--label-column", "y", "--normalize", "--base", "2"], capsys)
    expected = -(math.log(0.75) + math.log(0.75) + math.log(0.5)) / 3
    assert nats["log_loss_nats"] == pytest.approx(expected, rel=1e-12)
    for a, b in zip(nats["per_class"], bits["per_class"]):
        assert b["cross_entropy"] == pytest.approx(a["cross_entropy"] / math.log(2))


BAD_CSV = [
    # (file text, extra args, expected fragments) -- line numbers count the header as line 1
    ("a,b,y\n0.5,0.5,a\n0.5,0.5\n", [], ["line 3", "expected 3 fields", "got 2"]),
    ("a,b,y\n0.5,0.5,a\n0.2,0.8,b\n0.5,0.5,a,x\n", [], ["line 4", "got 4"]),
    ("a,b,y\n0.5,0.5,a\n0.5,abc,b\n", [], ["line 3", "column 'b'", "'abc' is not a number"]),
    ("a,b,y\n0.5,0.5,a\n1.5,-0.5,b\n", [], ["line 3", "1.5", "not inside [0, 1]"]),
    ("a,b,y\n0.5,0.5,a\nnan,0.5,b\n", [], ["line 3", "NaN"]),
    ("a,b,y\n0.5,0.5,a\n0.5,0.4,b\n", [], ["line 3", "sum to 0.9", "--renormalize", "--tol"]),
    ("a,b,y\n0.5,0.5,a\n0.5,0.5,zebra\n", [], ["line 3", "label 'zebra'", "classes (a, b)"]),
    # the empty line 3 is skipped but still counted
    ("a,b,y\n0.5,0.5,a\n\n0.5,0.4,b\n", [], ["line 4", "sum to 0.9"]),
    ("a,b,y\n0.5,0.5,a\n\n0.5,0.5, zebra\n", [], ["line 4", "label 'zebra'"]),
    ("", [], ["empty file"]),
    ("a,b,y\n", [], ["no data rows"]),
    ("a,b,y\n0.5,0.5,a\n", ["--label-column", "label"], ["line 1", "no column named 'label'"]),
    # no column named label, y or target: nothing to take the labels from
    ("a,b,truth\n0.5,0.5,a\n", ["--label-column", None], ["no true labels", "--label-column"]),
    # two such columns: the user must choose
    ("a,b,y,Label\n0.5,0.5,a,a\n", ["--label-column", None], ["could be: y, Label"]),
    ("a,a,y\n0.5,0.5,a\n", [], ["class name 'a' appears twice"]),
    # a line of spaces is blank too
    ("a,b,y\n0.5,0.5,a\n   \n0.5,0.4,b\n", [], ["line 4", "sum to 0.9"]),
    # a field Python's float() takes but the CSV parser does not is still found and named
    ("a,b,y\n0.5,0.5,a\n0_5,0.5,b\n", [], ["line 3", "column 'a'", "'0_5' is not a number"]),
    # an empty field, and two numbers in one field, are named as such too
    ("a,b,y\n0.5,0.5,a\n0.5,,b\n", [], ["line 3", "column 'b'", "'' is not a number"]),
    ("a,b,y\n0.5,0.5,a\n0.5 0.1,0.5,b\n", [], ["line 3", "'0.5 0.1' is not a number"]),
    # a quote left open: in a label (which would otherwise read as an unknown label 'b'), in a
    # probability, across lines, and in the header
    ('a,b,y\n0.5,0.5,a\n0.2,0.8,"b\n0.5,0.5,a\n', [], ["line 3", "double-quoted", "not closed"]),
    ('a,b,y\n0.5,0.5,a\n"0.2,0.8,b\n', [], ["line 3", "not closed"]),
    ('a,b,y\n0.2,0.8,"b\nx"\n', [], ["line 2", "span lines are not supported"]),
    ('"a,b,y\n0.5,0.5,a\n', [], ["line 1", "not closed"]),
]


@pytest.mark.parametrize(("text", "extra", "fragments"), BAD_CSV)
def test_bad_csv_is_a_one_line_error_with_line_number(tmp_path, capsys, text, extra, fragments):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    args = [path, "--label-column", "y"] + [a for a in extra if a is not None]
    if None in extra:
        args = [path]
    status, out, err = score(args, capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err
    for fragment in fragments:
        assert fragment in err


def test_bad_row_found_in_a_later_chunk_has_its_own_line_number(tmp_path, capsys):
    p, y = random_predictions(100, seed=5)
    path = write_csv(tmp_path / "pred.csv", p, y)
    lines = path.read_text().splitlines()
    lines[77] = lines[77].replace(",", ";", 1)  # line 78 of the file: one field fewer
    path.write_text("\n".join(lines) + "\n")
    status, _, err = score([path, "--label-column", "y", "--chunk-rows", 10], capsys)
    assert status == 2 and "line 78" in err


@pytest.mark.parametrize(
    ("labels", "fragments"),
    [
        ("0\n1\n", ["y.txt", "has 2 labels", "more rows", "row 3"]),
        ("0\n1\n2\n0\n1\n", ["y.txt", "more labels than", "(4)"]),
        ("0\n1\n7\n0\n", ["y.txt", "line 3", "label '7'"]),
        ("0\n1,2\n", ["y.txt", "line 2", "one label per line"]),
    ],
)
def test_true_label_file_problems(tmp_path, capsys, labels, fragments):
    p, _ = random_predictions(4, k=3, seed=6)
    np.save(tmp_path / "p.npy", p)
    (tmp_path / "y.txt").write_text(labels)
    status, _, err = score([tmp_path / "p.npy", "--true", tmp_path / "y.txt"], capsys)
    assert status == 2 and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err


def test_npy_problems(tmp_path, capsys):
    p, y = random_predictions(10, k=3, seed=7)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "y_bad.npy", np.where(np.arange(10) == 4, 9, y))
    np.save(tmp_path / "p.npy", p)
    data = (tmp_path / "p.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 8 * 3 * 3 - 4])
    np.save(tmp_path / "p3d.npy", p.reshape(10, 3, 1))
    (tmp_path / "empty.npy").write_bytes(b"")
    cases = [
        ([tmp_path / "p.npy", "--true", tmp_path / "y_bad.npy"], ["y_bad.npy", "row 5", "label 9"]),
        ([tmp_path / "cut.npy", "--true", tmp_path / "y.npy"], ["cut.npy", "row 7", "truncated"]),
        ([tmp_path / "p3d.npy", "--true", tmp_path / "y.npy"], ["p3d.npy", "shape (10, 3, 1)"]),
        ([tmp_path / "empty.npy", "--true", tmp_path / "y.npy"], ["empty.npy", "empty file"]),
        ([tmp_path / "missing.npy", "--true", tmp_path / "y.npy"], ["missing.npy", "no such file"]),
        ([tmp_path / "p.npy", "--true", tmp_path / "nope.txt"], ["nope.txt", "no such file"]),
        ([tmp_path / "p.npy", "--true", tmp_path / "y.npy", "--labels", "a"], ["--labels gives 1"]),
    ]
    for argv, fragments in cases:
        status, _, err = score(argv, capsys)
        assert status == 2 and err.count("\n") == 1, (argv, err)
        for fragment in fragments:
            assert fragment in err, (fragment, err)


def test_subprocess_bad_input_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,y\n0.5,0.5,a\n0.5,0.5\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CROSSENTROPY_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "crossentropy", "score", str(path), "--label-column", "y"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "line 3" in proc.stderr


def test_byte_order_mark_is_not_part_of_a_name(tmp_path, capsys):
    bom = b"\xef\xbb\xbf"
    pred = tmp_path / "p.csv"
    pred.write_bytes(bom + b"label,a,b,c\r\nc,0.2,0.3,0.5\r\nb,0.1,0.8,0.1\r\n")
    status, out, _ = score([pred, "--label-column", "label", "--json"], capsys)
    assert status == 0
    expected = -(np.log(0.5) + np.log(0.8)) / 2
    assert json.loads(out)["log_loss_nats"] == pytest.approx(expected, rel=1e-12)
    # the same in a --true file: the BOM must not turn the first label into a "header" line
    (tmp_path / "n.csv").write_text("a,b,c\n0.2,0.3,0.5\n0.1,0.8,0.1\n")
    (tmp_path / "y.txt").write_bytes(bom + b"c\nb\n")
    status, out, _ = score([tmp_path / "n.csv", "--true", tmp_path / "y.txt", "--json"], capsys)
    assert status == 0
    assert json.loads(out)["log_loss_nats"] == pytest.approx(expected, rel=1e-12)


def test_bad_utf8_is_reported_on_its_own_line(tmp_path, capsys):
    rows = [b"0.5,0.5,a"] * 2000
    rows[1500] = b"0.5,0.5,\xe9"
    pred = tmp_path / "latin1.csv"
    pred.write_bytes(b"a,b,y\n" + b"\n".join(rows) + b"\n")
    status, _, err = score([pred, "--label-column", "y", "--chunk-rows", 700], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "line 1502: not UTF-8 text" in err


def test_old_mac_line_endings_are_lines(tmp_path, capsys):
    # a lone CR ends a line, in the predictions and in a --true file
    pred = tmp_path / "cr.csv"
    pred.write_bytes(b"a,b,y\r0.2,0.8,b\r0.6,0.4,a\r")
    status, out, _ = score([pred, "--label-column", "y", "--json"], capsys)
    assert status == 0
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert json.loads(out)["log_loss_nats"] == pytest.approx(expected, rel=1e-12)
    (tmp_path / "n.csv").write_bytes(b"a,b\r0.2,0.8\r0.6,0.4\r")
    (tmp_path / "y.txt").write_bytes(b"y\rb\ra\r")
    status, out, _ = score([tmp_path / "n.csv", "--true", tmp_path / "y.txt", "--json"], capsys)
    assert status == 0
    assert json.loads(out)["log_loss_nats"] == pytest.approx(expected, rel=1e-12)


def test_bad_utf8_in_a_true_file_is_reported_on_its_line(tmp_path, capsys):
    (tmp_path / "n.csv").write_text("a,b\n0.2,0.8\n0.6,0.4\n")
    (tmp_path / "y.txt").write_bytes(b"y\nb\n\xffa\n")
    status, _, err = score([tmp_path / "n.csv", "--true", tmp_path / "y.txt"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "line 3: not UTF-8 text (byte 0xff" in err


# ----------------------------------------------------------------------------------------------
# Session 4: problems found by probing the CLI as a user


def test_class_and_file_names_are_text_not_markup(tmp_path, capsys):
    # "[pad]"-like tokens are common class names; rich must not read them as style tags
    path = tmp_path / "model[best].csv"
    path.write_text("[/],[pad],[bold red]x,y\n0.2,0.3,0.5,[pad]\n0.6,0.2,0.2,[/]\n")
    status, out, err = score([path, "--label-column", "y"], capsys)
    assert status == 0, err
    assert "model[best].csv" in out.replace("\n", "")  # rich may wrap the long path
    for name in ("[/]", "[pad]", "[bold red]x"):
        assert name in out


def test_normalize_does_not_overflow_on_huge_finite_scores(tmp_path, capsys):
    path = tmp_path / "huge.csv"
    path.write_text("a,b,y\n1e308,1e308,b\n3,1,a\n")
    report = score_json([path, "--label-column", "y", "--normalize"], capsys)
    assert report["log_loss_nats"] == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-12)
    small = tmp_path / "small.csv"
    small.write_text("a,b,y\n0.5,0.5,b\n0.75,0.25,a\n")
    plain = score_json([small, "--label-column", "y"], capsys)
    assert report["brier_score"] == pytest.approx(plain["brier_score"], rel=1e-12)
    assert report["n_zero_prob"] == 0


def test_integer_npy_labels_name_classes_like_text_labels(tmp_path, capsys):
    # header "1,0": the integer label 1 is the class named "1" (column 0), in every label format
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    y_names = ["1", "0", "1"]
    pred = tmp_path / "rev.csv"
    pred.write_text("1,0\n" + "".join(f"{a},{b}\n" for a, b in p))
    (tmp_path / "y.txt").write_text("\n".join(y_names) + "\n")
    np.save(tmp_path / "y.npy", np.array([1, 0, 1]))
    from_text = score_json([pred, "--true", tmp_path / "y.txt"], capsys)
    from_npy = score_json([pred, "--true", tmp_path / "y.npy"], capsys)
    want = skm.log_loss(y_names, p[:, ::-1], labels=["0", "1"])  # sklearn: sorted columns
    assert from_text["log_loss_nats"] == pytest.approx(want, rel=1e-12)
    assert from_npy["log_loss_nats"] == pytest.approx(want, rel=1e-12)
    assert from_npy["accuracy"] == 1.0
    # a label no class is named after is refused, naming the rule
    np.save(tmp_path / "y2.npy", np.array([1, 2, 0]))
    status, _, err = score([pred, "--true", tmp_path / "y2.npy"], capsys)
    assert status == 2 and "row 2" in err and "label 2 is not one of the classes" in err
    # non-numeric class names: integer labels are column positions, as before
    named = tmp_path / "named.csv"
    named.write_text("cat,dog\n" + "".join(f"{a},{b}\n" for a, b in p))
    np.save(tmp_path / "pos.npy", np.array([0, 1, 0]))
    assert score_json([named, "--true", tmp_path / "pos.npy"], capsys)["log_loss_nats"] == (
        pytest.approx(want, rel=1e-12)
    )


def test_a_damaged_npy_header_is_refused_before_any_work(tmp_path, capsys):
    # a 64-byte file whose header claims 10**7 columns, and a truncated column-major array
    header = tmp_path / "hdr.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (2, 10**7)}
        )
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(random_predictions(6, k=3)[0]))
    data = fortran.read_bytes()
    fortran.write_bytes(data[:-20])
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    for path, row in ((header, "row 1"), (fortran, "row 6")):  # 124 of 144 bytes: 5 whole rows
        status, _, err = score([path, "--true", tmp_path / "y.npy"], capsys)
        assert status == 2 and err.count("\n") == 1, err
        assert path.name in err and row in err and "truncated" in err


def test_default_row_sum_tolerance_follows_classes_and_dtype(tmp_path, capsys):
    rng = np.random.default_rng(9)
    k = 1000
    p = rng.dirichlet(np.ones(k), size=50)
    y = rng.integers(0, k, size=50)
    names = [f"c{i}" for i in range(k)]
    six = tmp_path / "k1000.csv"
    rows = [",".join(f"{v:.6f}" for v in row) + f",c{t}" for row, t in zip(p, y)]
    six.write_text(",".join([*names, "y"]) + "\n" + "\n".join(rows) + "\n")
    lines = six.read_text().splitlines()
    sums = [sum(float(v) for v in line.split(",")[:-1]) for line in lines[1:]]
    assert max(abs(s - 1) for s in sums) > 1e-5  # 6-decimal text of 1000 classes
    assert score_json([six, "--label-column", "y"], capsys)["n"] == 50
    half = np.float16(rng.dirichlet(np.ones(10), size=200))
    assert np.abs(half.astype(np.float64).sum(1) - 1).max() > 1e-5
    np.save(tmp_path / "half.npy", half)
    np.save(tmp_path / "y.npy", rng.integers(0, 10, size=200))
    assert score_json([tmp_path / "half.npy", "--true", tmp_path / "y.npy"], capsys)["n"] == 200
    # a row that really does not sum to 1 is still refused, and --tol still overrides
    off = tmp_path / "off.csv"
    off.write_text("a,b,y\n0.5,0.49,a\n")
    status, _, err = score([off, "--label-column", "y"], capsys)
    assert status == 2 and "sum to 0.99" in err and "tolerance 1.07e-05 for 2 classes" in err
    assert score_json([off, "--label-column", "y", "--tol", "0.02"], capsys)["n"] == 1
    assert score_json([off, "--label-column", "y", "--sum-tol", "0.02"], capsys)["n"] == 1


def test_one_column_npy_errors_quote_the_stored_value(tmp_path, capsys):
    np.save(tmp_path / "b.npy", np.array([0.25, -2.0, 0.5]))
    np.save(tmp_path / "y.npy", np.array([0, 1, 1]))
    status, _, err = score([tmp_path / "b.npy", "--true", tmp_path / "y.npy"], capsys)
    assert status == 2 and "row 2: probability -2.0 of '1' is not inside [0, 1]" in err


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("a\tb\ty\n0.5\t0.5\ta\n", ["line 1", "contains tabs", "comma-separated"]),
        ("a;b;y\n0.5;0.5;a\n", ["line 1", "contains semicolons"]),
        ("a,b,y,\n0.5,0.5,a,\n", ["line 1", "column 4 of the header has no name"]),
    ],
)
def test_header_problems_are_named(tmp_path, capsys, text, fragments):
    path = tmp_path / "h.csv"
    path.write_text(text)
    status, _, err = score([path, "--label-column", "y"], capsys)
    assert status == 2 and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err, err


def test_blank_lines_before_the_header_are_skipped_and_counted(tmp_path, capsys):
    path = tmp_path / "lead.csv"
    path.write_text('\n\n a, "b",y\n0.25,0.75,b\n0.5,0.4,a\n')
    status, _, err = score([path, "--label-column", "y"], capsys)
    assert status == 2 and "line 5" in err and "sum to 0.9" in err
    path.write_text('\n\n a, "b",y\n0.25,0.75,b\n')
    report = score_json([path, "--label-column", "y"], capsys)
    assert report["classes"] == ["a", "b"] and report["accuracy"] == 1.0


def test_bins_and_true_paths_are_checked_up_front(tmp_path, capsys):
    status, _, err = score([EXAMPLE, "--label-column", "label", "--bins", str(10**12)], capsys)
    assert status == 2 and "--bins must be between 1 and 100,000" in err
    (tmp_path / "labels").mkdir()
    status, _, err = score([EXAMPLE, "--true", tmp_path / "labels"], capsys)
    assert status == 2 and "is a directory" in err


def test_a_closed_pipe_escaping_a_subcommand_ends_quietly(monkeypatch, capsys):
    # the CLI's fallback for any subcommand: no error line, a non-zero status (score itself ends
    # with 0 when its reader leaves, see test_score_piped_into_head_exits_0)
    from crossentropy.cli import _score

    def run(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(_score, "run", run)
    assert main(["score", str(EXAMPLE), "--json"]) == 1
    assert capsys.readouterr().err == ""


def write_fixed_csv(path, p, y, decimals, names=CLASSES):
    """Probabilities written with printf's %.Nf, labels in a column named label."""
    lines = [",".join([*names[: p.shape[1]], "label"])]
    for row, t in zip(p, y):
        lines.append(",".join([*(f"{v:.{decimals}f}" for v in row), names[t]]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("decimals", [3, 4, 6])
def test_a_csv_written_with_few_decimals_is_scored_as_written(tmp_path, capsys, decimals):
    p, y = random_predictions(300, seed=decimals)
    path = write_fixed_csv(tmp_path / "fixed.csv", p, y, decimals)
    written = np.array(
        [[float(v) for v in line.split(",")[:4]] for line in path.read_text().split()[1:]]
    )
    if decimals <= 4:  # off by more than the arithmetic allowance, about 1e-5
        assert np.abs(written.sum(axis=1) - 1).max() > 2e-5
    report = score_json([path, "--label-column", "label", "--chunk-rows", 64], capsys)
    with pytest.warns(UserWarning, match="do not sum to one"):
        ref = skm.log_loss(y, written, labels=range(4))
    if np.all(written[np.arange(300), y] > 0):
        assert report["log_loss_nats"] == pytest.approx(ref, rel=1e-12)
    else:  # sklearn clips a written 0 on the true class; with the same clipping, the same value
        clipped = score_json(
            [path, "--eps", str(np.finfo(np.float64).eps), "--chunk-rows", 64], capsys
        )
        assert clipped["log_loss_nats"] == pytest.approx(ref, rel=1e-12)
    # a row that sums to 0.99 in the same file is still a mistake
    lines = path.read_text().splitlines()
    # (its last digit is not 0: a row whose numbers all end in 0 reads as fewer decimals)
    near = 0.49 + 10.0**-decimals
    lines[120] = ",".join([f"{0.5:.{decimals}f}", f"{near:.{decimals}f}", "0", "0", CLASSES[0]])
    path.write_text("\n".join(lines) + "\n")
    status, _, err = score([path, "--label-column", "label"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    for fragment in (
        "line 121",
        "sum to 0.99",
        f"written with {decimals} decimals",
        "--renormalize",
        "--tol",
    ):
        assert fragment in err, (fragment, err)


def test_the_label_column_is_found_by_name_and_announced(tmp_path, capsys):
    p, y = random_predictions(40, seed=11)
    path = write_fixed_csv(tmp_path / "named.csv", p, y, 6)
    ref = score_json([path, "--label-column", "label"], capsys)
    for header in ("label", "y", "target", "Target"):
        text = path.read_text().replace(",label\n", f",{header}\n", 1)
        (tmp_path / "h.csv").write_text(text)
        status, out, err = score([tmp_path / "h.csv", "--json"], capsys)
        assert status == 0, err
        assert json.loads(out)["log_loss_nats"] == pytest.approx(ref["log_loss_nats"], rel=1e-12)
        assert f"true labels from column {header!r}" in err and "--label-column" in err
    # --true means the labels are elsewhere: no column is taken
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "nolabel.csv").write_text(
        "\n".join(line.rsplit(",", 1)[0] for line in path.read_text().splitlines()) + "\n"
    )
    status, _, err = score([tmp_path / "nolabel.csv", "--true", tmp_path / "y.npy"], capsys)
    assert status == 0 and "true labels from column" not in err


def test_parquet_label_column_is_found_by_name(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p, y = random_predictions(30, seed=12)
    columns = {name: p[:, j] for j, name in enumerate(CLASSES)}
    columns["target"] = [CLASSES[t] for t in y]
    pq.write_table(pa.table(columns), tmp_path / "p.parquet")
    status, out, err = score([tmp_path / "p.parquet", "--json"], capsys)
    assert status == 0 and "true labels from column 'target'" in err
    assert json.loads(out)["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)


@pytest.mark.parametrize("as_json", [True, False])
def test_score_piped_into_head_exits_0(tmp_path, as_json):
    # 3000 classes make a report far larger than a pipe's buffer, so the write fails for sure
    p, y = random_predictions(5, k=3000, seed=13)
    names = [f"c{i}" for i in range(3000)]
    path = write_csv(tmp_path / "wide.csv", p, y, names=names, label="label")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "crossentropy", "score", str(path)]
    if as_json:
        command.append("--json")
    shell = " ".join(f"'{c}'" for c in command) + " | head -2"
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {shell}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Issue 23, item 1: the tolerance is that of the file's dtype, and for text that of the decimals
# each row was written with; never a format read off the values.


def test_a_text_row_of_bfloat16_lookalikes_is_refused(tmp_path, capsys):
    # 0.4921875 is a bfloat16 number; written in a CSV it is a number with 7 decimals, whose
    # rounding (5e-8 each) does not make up 0.0078.
    path = tmp_path / "bf.csv"
    path.write_text("a,b,label\n0.5,0.5,a\n0.5,0.4921875,b\n")
    status, out, err = score([path], capsys)
    err = err.replace(str(tmp_path), "")  # the test's name is in the path
    assert status == 2 and out == "" and "Traceback" not in err, err
    error = err.splitlines()[-1]  # the first line announces the label column
    assert "line 3: probabilities sum to 0.9921875, not 1" in error, error
    assert "tolerance 1.08e-05 for 2 classes written with 7 decimals" in error, error
    assert "bfloat16" not in err and "holding" not in err, err
    # in a float64 .npy the same numbers are float64 data; in a float16 one, float16's
    rows = np.array([[0.5, 0.5], [0.5, 0.4921875]])
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    for dtype, tolerance in ((np.float64, "1.07e-05"), (np.float32, "1.08e-05")):
        np.save(tmp_path / "p.npy", rows.astype(dtype))
        status, _, err = score([tmp_path / "p.npy", "--true", tmp_path / "y.npy"], capsys)
        err = err.replace(str(tmp_path), "")
        assert status == 2 and err.count("\n") == 1, err
        assert f"row 2: probabilities sum to 0.9921875, not 1 (tolerance {tolerance}" in err
        assert f"of dtype {np.dtype(dtype)})" in err and "bfloat16" not in err, err


def test_real_low_precision_files_and_wide_copies_of_softmax_outputs_pass(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    logits = torch.from_numpy(rng.normal(size=(400, 50)) * 2)  # no float16 underflow to 0
    y = rng.integers(0, 50, size=400)
    np.save(tmp_path / "y.npy", y)
    # float32 softmax stored as float64: off by float32 sums, within the arithmetic allowance
    wide = torch.softmax(logits.float(), -1).double().numpy()
    assert np.abs(wide.sum(axis=1) - 1).max() > 1e-9
    half = torch.softmax(logits.half(), -1).numpy()  # a float16 file keeps float16's epsilon
    assert np.abs(half.astype(np.float64).sum(axis=1) - 1).max() > 1e-4
    for name, p in (("wide", wide), ("half", half)):
        np.save(tmp_path / f"{name}.npy", p)
        report = score_json([tmp_path / f"{name}.npy", "--true", tmp_path / "y.npy"], capsys)
        ref = skm.log_loss(y, p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True))
        assert report["log_loss_nats"] == pytest.approx(ref, rel=1e-3 if name == "half" else 1e-7)
    # the float16 numbers copied into a float64 file are float64 data
    np.save(tmp_path / "copy.npy", half.astype(np.float64))
    status, _, err = score([tmp_path / "copy.npy", "--true", tmp_path / "y.npy"], capsys)
    err = err.replace(str(tmp_path), "")
    assert status == 2 and "of dtype float64)" in err and "float16" not in err, err


def test_each_text_row_gets_the_decimals_it_was_written_with(tmp_path, capsys):
    # %.4f rows and full-precision rows in one file: each row is judged by its own decimals.
    p, y = random_predictions(60, seed=23)
    lines = ["cat,dog,eel,fox,label"]
    for i, (row, t) in enumerate(zip(p, y)):
        text = [f"{v:.4f}" if i % 2 else repr(float(v)) for v in row]
        lines.append(",".join([*text, CLASSES[t]]))
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    assert score_json([path], capsys)["n"] == 60
    # 1e-4 short of 1 is a rounding at 4 decimals, and more than the rounding of a row written
    # with 6: the same row is refused when written with more decimals
    for row, ok in (
        ("0.2500,0.2500,0.2500,0.2499", True),
        ("0.250000,0.250000,0.250000,0.249900", True),
        ("0.250001,0.250000,0.250000,0.249899", False),
    ):
        path.write_text(f"cat,dog,eel,fox,label\n{row},cat\n")
        status, _, err = score([path, "--json"], capsys)
        assert (status == 0) == ok, (row, err)
    # above 1 a written 0 was not rounded up: three classes written as 0 take back their share
    for row, ok in (
        ("0.5001,0.5000,0.0000,0.0000", True),
        ("0.5002,0.5001,0.0000,0.0000", False),
        ("0.4999,0.4999,0.0000,0.0000", True),
        ("0.4998,0.4999,0.0000,0.0000", False),
    ):
        path.write_text(f"cat,dog,eel,fox,label\n{row},cat\n")
        status, _, err = score([path, "--json"], capsys)
        assert (status == 0) == ok, (row, err)
        if not ok:
            assert "written with 4 decimals" in err, err
    # one or two decimals are taken at face value
    path.write_text("cat,dog,eel,fox,label\n0.25,0.25,0.25,0.24,cat\n")
    status, _, err = score([path], capsys)
    assert status == 2 and "tolerance 1.1e-05 for 4 classes)" in err, err


def test_the_json_report_and_scores_use_the_name_brier_score(tmp_path, capsys):
    from crossentropy.metrics import ScoreAccumulator, brier_score

    p, y = random_predictions(50, seed=5)
    report = score_json([write_csv(tmp_path / "p.csv", p, y)], capsys)
    assert "brier" not in report
    assert report["brier_score"] == pytest.approx(brier_score(y, p, labels=range(4)), rel=1e-12)
    acc = ScoreAccumulator(4)
    acc.update(y, p)
    scores = acc.compute()
    assert scores.brier_score == pytest.approx(report["brier_score"], rel=1e-12)
    assert not hasattr(scores, "brier")


# ------------------------------------------------------------------------------------------------
# Row ids, integer labels as column positions, standard input


def write_with_id(path, p, y, first="id", names=CLASSES):
    lines = [",".join([first, *names[: p.shape[1]], "label"])]
    for i, (row, t) in enumerate(zip(p, y)):
        lines.append(",".join([str(1000 + i), *(f"{v:.17g}" for v in row), names[t]]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("first", ["id", "index", "ID", "row"])
def test_a_first_id_column_is_taken_when_the_rest_sum_to_one(tmp_path, capsys, first):
    p, y = random_predictions(40, seed=21)
    path = write_with_id(tmp_path / "ids.csv", p, y, first)
    status, out, err = score([path, "--json", "--chunk-rows", 7], capsys)
    assert status == 0, err
    report = json.loads(out)
    assert report["classes"] == CLASSES
    assert report["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)
    assert f"column {first!r} of {path} taken as row ids" in err and "--id-column" in err
    # the case: --labels names the probability columns, the id column left out
    renamed = score_json([path, "--labels", *CLASSES], capsys)
    assert renamed["log_loss_nats"] == report["log_loss_nats"]


def test_the_id_column_can_be_named_and_is_never_guessed_wrongly(tmp_path, capsys):
    p, y = random_predictions(30, seed=22)
    path = write_with_id(tmp_path / "ids.csv", p, y)
    # an id column anywhere, named explicitly: no announcement, same scores
    moved = tmp_path / "moved.csv"
    lines = path.read_text().splitlines()
    moved.write_text(
        "\n".join(",".join([*f.split(",")[1:-1], f.split(",")[0], f.split(",")[-1]]) for f in lines)
    )
    status, out, err = score([moved, "--id-column", "id", "--json"], capsys)
    assert status == 0, err and "row ids" not in err
    assert json.loads(out)["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)
    # a first column named id whose removal leaves rows that do not sum to 1 is a class
    (tmp_path / "cls.csv").write_text("id,a,label\n0.5,0.5,a\n0.25,0.75,id\n")
    report = score_json([tmp_path / "cls.csv"], capsys)
    assert report["classes"] == ["id", "a"] and report["n"] == 2
    # ... and an error then says that --id-column exists
    (tmp_path / "bad.csv").write_text("id,a,b,label\n7,0.5,0.4,a\n")
    status, _, err = score([tmp_path / "bad.csv"], capsys)
    assert status == 2 and "--id-column id" in err and err.count("error") == 1
    # with --renormalize the choice is announced
    (tmp_path / "scores.csv").write_text("index,a,b,label\n1,2,6,b\n2,3,1,a\n")
    status, _, err = score([tmp_path / "scores.csv", "--renormalize", "--json"], capsys)
    assert status == 0 and "column 'index'" in err and "scored as a class" in err
    for argv, fragment in (
        (["--id-column", "nope"], "no column named 'nope' (--id-column)"),
        (["--id-column", "label"], "cannot hold both the labels and the row ids"),
    ):
        status, _, err = score([path, *argv], capsys)
        assert status == 2 and fragment in err, err


def test_parquet_id_column_and_integer_labels_as_positions(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p, y = random_predictions(50, seed=23)
    names = [f"c{j}" for j in range(4)]
    columns = {"id": np.arange(50), **{n: p[:, j] for j, n in enumerate(names)}, "y": y}
    pq.write_table(pa.table(columns), tmp_path / "p.parquet", row_group_size=16)
    status, out, err = score([tmp_path / "p.parquet", "--json", "--chunk-rows", 9], capsys)
    assert status == 0, err
    report = json.loads(out)
    assert report["classes"] == names
    assert report["log_loss_nats"] == pytest.approx(sklearn_reference(p, y), rel=1e-12)
    assert "column 'id'" in err and "taken as row ids" in err
    assert "integer labels read as column positions (0 = 'c0', 1 = 'c1', ..., 3 = 'c3')" in err
    # a position outside the columns is refused, naming both readings
    columns["y"] = np.where(np.arange(50) == 40, 4, y)
    pq.write_table(pa.table(columns), tmp_path / "bad.parquet")
    status, _, err = score([tmp_path / "bad.parquet"], capsys)
    assert status == 2 and err.count("error") == 1
    assert "row 41: label '4' is not one of the classes (c0, c1, c2, c3)" in err
    assert "nor a column position in [0, 4)" in err


def test_integer_labels_in_a_csv_are_positions_unless_a_class_is_a_number(tmp_path, capsys):
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    (tmp_path / "pos.csv").write_text("cat,dog,label\n0.9,0.1,0\n0.2,0.8,1.0\n0.6,0.4,cat\n")
    status, out, err = score([tmp_path / "pos.csv", "--json"], capsys)
    assert status == 0, err
    want = skm.log_loss([0, 1, 0], p, labels=[0, 1])
    assert json.loads(out)["log_loss_nats"] == pytest.approx(want, rel=1e-12)
    assert "integer labels read as column positions (0 = 'cat', 1 = 'dog')" in err
    # names only: no note
    (tmp_path / "names.csv").write_text("cat,dog,label\n0.9,0.1,cat\n")
    status, _, err = score([tmp_path / "names.csv"], capsys)
    assert status == 0 and "column positions" not in err
    # one class named by a number: integers are names, never positions
    (tmp_path / "mixed.csv").write_text("cat,7,label\n0.9,0.1,0\n")
    status, _, err = score([tmp_path / "mixed.csv"], capsys)
    assert status == 2 and "label '0' is not one of the classes (cat, 7)" in err
    assert "column position" not in err


def _score_stdin(data: bytes, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CROSSENTROPY_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "crossentropy", "score", *argv],
        input=data,
        capture_output=True,
        env=env,
        timeout=120,
    )


def test_standard_input_in_each_format(tmp_path, capsys):
    p, y = random_predictions(60, seed=24)
    csv_path = write_csv(tmp_path / "p.csv", p, y)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "f.npy", np.asfortranarray(p))
    np.save(tmp_path / "y.npy", y)
    want = sklearn_reference(p, y)
    cases = [(csv_path, ["--format", "csv"]), *[
        (tmp_path / name, ["--format", "npy", "--true", str(tmp_path / "y.npy")])
        for name in ("p.npy", "f.npy")
    ]]  # fmt: skip
    pq = None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    if pq is not None:
        table = {name: p[:, j] for j, name in enumerate(CLASSES)}
        table["y"] = [CLASSES[t] for t in y]
        pq.write_table(pa.table(table), tmp_path / "p.parquet")
        cases.append((tmp_path / "p.parquet", ["--format", "parquet"]))
    for path, argv in cases:
        proc = _score_stdin(path.read_bytes(), "-", *argv, "--json", "--chunk-rows", "7")
        assert proc.returncode == 0, (path.name, proc.stderr)
        report = json.loads(proc.stdout)
        assert report["file"] == "<stdin>"
        assert report["log_loss_nats"] == pytest.approx(want, rel=1e-12), path.name
    # labels from standard input, one per line
    (tmp_path / "labels.txt").write_text("\n".join(str(t) for t in y) + "\n")
    proc = _score_stdin(
        (tmp_path / "labels.txt").read_bytes(), str(tmp_path / "p.npy"), "--true", "-", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["log_loss_nats"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("argv", "data", "fragment"),
    [
        (["-"], b"a,b,y\n0.5,0.5,a\n", "PRED is - (standard input): pass --format csv"),
        (["-", "--format", "npy", "--true", "-"], b"", "cannot both be - (standard input)"),
        (
            ["-", "--format", "csv", "--label-column", "y"],
            b"a,b,y\n0.5,0.4,a\n",
            "<stdin>: line 2: probabilities sum",
        ),
        (["-", "--format", "npy", "--true", "y.npy"], b"\x93NUMPY\x01\x00", "<stdin>: not a valid"),
    ],
)
def test_standard_input_errors_are_one_line(argv, data, fragment):
    proc = _score_stdin(data, *argv)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
