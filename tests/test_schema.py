import json
from pathlib import Path

import pytest
from PIL import Image

from lit_caprl.cli import main
from lit_caprl.data.schema import DataError, load_records, scan

GOOD = {
    "id": "a",
    "image": "img.png",
    "captions": ["top big red circle ."],
    "questions": [{"question": "what color ?", "options": ["red", "blue"], "answer": "A"}],
}


def _write(tmp_path: Path, lines: list[str]) -> Path:
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def _rec(**changes) -> str:
    r = json.loads(json.dumps(GOOD))
    for k, v in changes.items():
        if k.startswith("q_"):
            r["questions"][0][k[2:]] = v
        else:
            r[k] = v
    return json.dumps(r)


BAD = [
    (_rec(image="missing.png"), "image", "does not exist"),
    (_rec(image="corrupt.png"), "image", "not a readable image"),
    (_rec(image="../outside.png"), "image", "outside the data root"),
    (_rec(image="/etc/passwd"), "image", "absolute path"),
    (_rec(q_answer="C"), "questions[0].answer", "not among the option letters"),
    (_rec(q_options=["red", "red"]), "questions[0].options", "duplicate options"),
    (_rec(questions="what ?"), "questions", "must be a list"),
    (_rec(captions=[""]), "captions[0]", "empty caption"),
    (_rec(chosen="top big red circle ."), "rejected", "needs a rejected string"),
    (_rec(chosen="", rejected="top big red circle ."), "chosen", "needs a non-empty chosen string"),
    (_rec(chosen="top big red circle .", rejected="top big red circle ."), "rejected", "equals chosen"),
    ('{"id": "a", "image": "img.png", "questions": [', "record", "malformed JSON"),
    ("", "record", "empty line"),
]


@pytest.mark.parametrize(("line", "field", "message"), BAD, ids=[b[2] for b in BAD])
def test_bad_record_error_names_file_line_and_field(tmp_path, line, field, message):
    f = _write(tmp_path, [_rec(id="ok"), line])
    with pytest.raises(DataError) as err:
        load_records(f)
    assert f"{f}:2: {field}: " in str(err.value)
    assert message in str(err.value)


def test_a_pair_may_reject_the_empty_caption(tmp_path):
    """A policy can sample an empty caption; as the rejected side of a pair it is valid data."""
    records, problems = load_records(_write(tmp_path, [_rec(chosen="top big red circle .", rejected="")]))
    assert problems == [] and records[0].rejected == ""


def test_skip_mode_keeps_good_records_and_reports_bad(tmp_path):
    f = _write(tmp_path, [_rec(id="ok"), _rec(id="bad", q_answer="Z"), _rec(id="ok2")])
    records, problems = load_records(f, on_bad_record="skip")
    assert [r.id for r in records] == ["ok", "ok2"]
    assert [(p.line, p.field) for p in problems] == [(2, "questions[0].answer")]


def test_duplicate_ids_are_reported(tmp_path):
    _, problems = scan(_write(tmp_path, [_rec(), _rec()]))
    assert [(p.line, p.field) for p in problems] == [(2, "id")]


def test_data_check_prints_every_problem_and_exits_1(tmp_path, capsys):
    f = _write(tmp_path, [_rec(id="ok"), _rec(id="x", image="missing.png"), _rec(id="y", q_answer="C")])
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{f}:2: image: ") and out[1].startswith(f"{f}:3: questions[0].answer: ")
    good = _write(tmp_path, [_rec()])
    assert main(["data", "check", str(good)]) == 0


def test_shapes_data_passes_the_checker(shapes_root):
    records, problems = scan(Path(shapes_root) / "val.jsonl")
    assert problems == [] and len(records) == 16


def test_datamodule_skip_mode_counts_and_reports_bad_records(tmp_path):
    from lit_caprl.data import CaptionData

    f = _write(tmp_path, [_rec(id="a"), _rec(id="b", image="missing.png"), _rec(id="c")])
    with pytest.raises(DataError, match=rf"{f}:2: image: .*does not exist"):
        CaptionData(str(f), str(f)).setup("fit")  # the default stops before any training
    dm = CaptionData(str(f), str(f), on_bad_record="skip")
    with pytest.warns(UserWarning, match=r"(?s)skipped 1 bad records .*d.jsonl:2: image"):
        dm.setup("fit")
    assert len(dm.train_set) == 2 and len(dm.skipped) == 2  # once in train, once in val (same file)
    with pytest.warns(UserWarning, match="end of fit: skipped 2 bad records"):
        dm.teardown("fit")
