"""CapRL's published data formats in: every field lands where it should, every bad row is named."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lit_caprl.data.formats import parse_question_text, strip_labels
from lit_caprl.data.importer import import_data
from lit_caprl.data.schema import DataError, load_records
from lit_caprl.stages.optim import Optim

PROMPT = [{"role": "user", "content": "<image> Please describe this image in detail."}]


def encoded(mode: str, size: tuple[int, int], fmt: str, color=(200, 30, 30)) -> bytes:
    image = Image.new("RGB", size, color).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def caprl_qa_rows() -> list[dict]:
    """Rows with exactly CapRL-QA-75K's columns: mixed sizes, modes and encodings, Chinese text."""
    images = [
        encoded("RGB", (64, 48), "PNG"),
        encoded("L", (30, 90), "JPEG"),
        encoded("RGBA", (17, 17), "PNG"),
        encoded("P", (120, 40), "PNG"),
        encoded("CMYK", (50, 50), "JPEG"),
    ]
    truths = [
        [
            {
                "question": "Which city is mentioned in the company's address?",
                "choices": ["A) 北京市", "B) 上海市", "C) 惠州市", "D) 广州市"],
                "answer": "C",
            },
            {"question": "What colour is the logo?", "choices": ["A) red", "B) blue"], "answer": "A"},
        ],
        [{"question": "图中有几个人？", "choices": ["A) 一个", "B) 两个", "C) 三个"], "answer": "B"}],
        [
            {
                "question": "What is written on the sign?",
                "choices": ["A) STOP", "B) GO", "C) YIELD", "D) EXIT"],
                "answer": "D",
            }
        ],
        [{"question": "Is it day or night?", "choices": ["A) day", "B) night"], "answer": "A"}],
        [{"question": "Which shape is largest?", "choices": ["A) circle", "B) square", "C) star"], "answer": "C"}],
    ]
    return [
        {
            "id": f"caprl_{i}",
            "image": {"bytes": b, "path": None},
            "prompt": PROMPT,
            "data_source": "image_caption_rl",
            "reward_model": {"ground_truth": t},
        }
        for i, (b, t) in enumerate(zip(images, truths, strict=True))
    ]


def write_parquet(path, rows: list[dict], schema: pa.Schema | None = None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)
    return path


CAPRL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("data_source", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    (
                        "ground_truth",
                        pa.list_(
                            pa.struct(
                                [("question", pa.string()), ("choices", pa.list_(pa.string())), ("answer", pa.string())]
                            )
                        ),
                    )
                ]
            ),
        ),
    ]
)


@pytest.fixture
def caprl_parquet(tmp_path):
    return write_parquet(tmp_path / "train-00000-of-00001.parquet", caprl_qa_rows(), CAPRL_SCHEMA)


def test_caprl_qa_parquet_imports_every_record_exactly(caprl_parquet, tmp_path):
    rows = caprl_qa_rows()
    report = import_data(caprl_parquet, "caprl-qa", tmp_path / "out", progress=False)
    assert (report["records"], report["questions"], report["skipped"]) == (5, 6, 0)
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    exts = ["png", "jpg", "png", "png", "jpg"]
    for n, (line, row, ext) in enumerate(zip(lines, rows, exts, strict=True), start=1):
        expected = {
            "id": row["id"],
            "image": f"images/{row['id']}.{ext}",
            "questions": [
                {"question": q["question"], "options": [c[3:] for c in q["choices"]], "answer": q["answer"]}
                for q in row["reward_model"]["ground_truth"]
            ],
            "captions": [],
            "meta": {
                "source": {"data_source": "image_caption_rl", "prompt": "Please describe this image in detail."},
                "imported_from": f"{caprl_parquet}:{n}",
            },
        }
        assert json.loads(line) == expected
        assert (tmp_path / "out" / expected["image"]).read_bytes() == row["image"]["bytes"]  # bytes kept unchanged
    records, problems = load_records(tmp_path / "out" / "train.jsonl")
    assert problems == [] and records[0].questions[0].answer_text == "惠州市"
    sizes = [r.load_image().size for r in records]
    assert sizes == [(64, 48), (30, 90), (17, 17), (120, 40), (50, 50)]
    assert all(r.load_image().mode == "RGB" for r in records)


def test_reimport_is_idempotent_and_val_split_is_stable(caprl_parquet, tmp_path):
    import_data(caprl_parquet, "caprl-qa", tmp_path / "a", val_fraction=0.4, progress=False)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    import_data(caprl_parquet, "caprl-qa", tmp_path / "a", val_fraction=0.4, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == first
    train, val = (load_records(tmp_path / "a" / f"{s}.jsonl")[0] for s in ("train", "val"))
    assert len(train) + len(val) == 5 and train and val
    assert not {r.id for r in train} & {r.id for r in val}


def test_verl_ground_truth_shapes(tmp_path):
    png = encoded("RGB", (32, 32), "PNG")
    common = {"data_source": "caprl", "prompt": PROMPT, "images": [{"bytes": png, "path": None}]}
    rows = [
        common
        | {
            "reward_model": {
                "style": "rule",
                "ground_truth": [{"question": "What colour?", "choices": ["Black", "White", "Red"], "answer": "B"}],
            },
            "extra_info": {"split": "train", "index": 7},
        },
        common
        | {
            "reward_model": {
                "style": "rule",
                "ground_truth": [
                    {"question": "What animal?", "choices": ["A. Black cat", "B. Dog", "C. Bird"], "answer": "A"}
                ],
            },
            "extra_info": {"split": "train", "index": 8},
        },
        common
        | {
            "reward_model": {
                "style": "rule",
                "ground_truth": [
                    ["How many cars are parked?\n   - A) two\n   - B) three\n   - C) none", "C"],
                    ["Where is the tree?\nOptions:\n   - A) left\n   - B) right", "A"],
                ],
            },
            "extra_info": {"split": "train", "index": 9},
        },
    ]
    (tmp_path / "verl").mkdir()
    for i, row in enumerate(rows):  # a parquet column holds one shape: one file each
        write_parquet(tmp_path / "verl" / f"part-{i}.parquet", [row])
    import_data(tmp_path / "verl", "verl", tmp_path / "out", progress=False)
    records, _ = load_records(tmp_path / "out" / "train.jsonl")
    got = {r.id: [(q.question, q.options, q.answer) for q in r.questions] for r in records}
    assert got == {
        "7": [("What colour?", ("Black", "White", "Red"), "B")],
        "8": [("What animal?", ("Black cat", "Dog", "Bird"), "A")],
        "9": [
            ("How many cars are parked?", ("two", "three", "none"), "C"),
            ("Where is the tree?", ("left", "right"), "A"),
        ],
    }
    assert records[0].meta["source"]["extra_info"] == {"split": "train", "index": 7}
    assert records[0].meta["source"]["reward_style"] == "rule"


def test_labels_and_question_text():
    assert strip_labels(["A) 北京市", "B) 上海市"]) == ["北京市", "上海市"]
    assert strip_labels(["(A) yes", "(B) no"]) == ["yes", "no"]
    assert strip_labels(["A. Lincoln", "Washington"]) == ["A. Lincoln", "Washington"]  # not a label: kept
    assert strip_labels(["B) x", "A) y"]) == ["B) x", "A) y"]  # out of order: kept verbatim
    q, opts, rest = parse_question_text("Question: what?\nA. one\nB. two\nAnswer with the letter.", "prompt")
    assert (q, opts, rest) == ("Question: what?", ["one", "two"], "Answer with the letter.")


@pytest.mark.parametrize(
    "change, field, message",
    [
        (lambda rs: rs[2].update(image=None), "image", "missing"),
        (
            lambda rs: rs[2].update(image={"bytes": b"\x89PNG not really", "path": None}),
            "image",
            "not a decodable image",
        ),
        (
            lambda rs: rs[2]["reward_model"]["ground_truth"][0].update(answer="E"),
            "reward_model.ground_truth[0].answer",
            "not among the option letters A, B, C, D",
        ),
        (
            lambda rs: rs[2]["reward_model"]["ground_truth"][0].update(choices=[]),
            "reward_model.ground_truth[0].choices",
            "non-empty list",
        ),
        (
            lambda rs: (
                [r["reward_model"].update(ground_truth=[["How many?\n - A) one\n - B) two", "A"]]) for r in rs]
                and rs[2]["reward_model"].update(ground_truth=[["How many? no options here", "A"]])
            ),
            "reward_model.ground_truth[0]",
            "no option lines",
        ),
    ],
)
def test_bad_rows_are_named_or_counted(tmp_path, change, field, message):
    rows = caprl_qa_rows()
    change(rows)
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as err:
        import_data(path, "caprl-qa", tmp_path / "out", progress=False)
    assert str(err.value).startswith(f"{path}: row 3: {field}: ") and message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written
    report = import_data(path, "caprl-qa", tmp_path / "out", skip_bad=True, progress=False)
    assert (report["records"], report["skipped"]) == (4, 1)
    assert report["skipped_rows"][0].startswith(f"{path}: row 3: {field}: ")
    assert json.loads((tmp_path / "out" / "import.json").read_text())["skipped"] == 1


def test_jsonl_bad_bytes_and_duplicate_ids_name_their_line(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(encoded("RGB", (8, 8), "PNG"))
    good = json.dumps({"image": "a.png", "caption": "a red square", "id": "x"}).encode()
    (tmp_path / "caps.jsonl").write_bytes(good + b"\n" + b'{"caption": "\xff"}\n' + good + b"\n")
    report = import_data(tmp_path / "caps.jsonl", "captions", tmp_path / "out", skip_bad=True, progress=False)
    assert report["skipped_rows"] == [
        f"{tmp_path / 'caps.jsonl'}:2: record: not UTF-8 (byte 13 of the line)",
        f"{tmp_path / 'caps.jsonl'}:3: id: duplicate id 'x' (first at {tmp_path / 'caps.jsonl'}:1)",
    ]
    records, _ = load_records(tmp_path / "out" / "train.jsonl")
    assert [(r.id, r.captions, r.questions) for r in records] == [("x", ("a red square",), ())]


def test_prism_rows_of_one_image_become_one_record(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.jpg").write_bytes(encoded("RGB", (40, 40), "JPEG"))
    rows = [
        {
            "image": "img/cat.jpg",
            "prompt": "What animal is shown?\nOptions:\nA. dog\nB. cat\nPlease select the correct answer.",
            "answer": "B",
            "index": 0,
        },
        {"image": "img/cat.jpg", "prompt": "How many animals?\n(A) one\n(B) two", "answer": "A", "index": 1},
        {"image": "img/cat.jpg", "prompt": "Describe the mood.", "answer": "calm", "index": 2},
    ]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"bench.jsonl:3: prompt: .*open-ended"):
        import_data(tmp_path / "bench.jsonl", "prism", tmp_path / "out", progress=False)
    import_data(tmp_path / "bench.jsonl", "prism", tmp_path / "out", skip_bad=True, progress=False)
    (record,), _ = load_records(tmp_path / "out" / "train.jsonl")
    assert record.id == "cat"
    assert [(q.question, q.options, q.answer) for q in record.questions] == [
        ("What animal is shown?", ("dog", "cat"), "B"),
        ("How many animals?", ("one", "two"), "A"),
    ]
    assert [q["index"] for q in record.meta["source"]["questions"]] == [0, 1]


def test_grpo_trains_straight_from_caprl_parquet(caprl_parquet, tiny_models, tmp_path, monkeypatch):
    import lightning as L
    import torch

    from lit_caprl.callbacks import RolloutCallback
    from lit_caprl.data import PromptData
    from lit_caprl.rewards import CapRLQAReward
    from lit_caprl.stages import GRPOStage

    monkeypatch.setenv("LIT_CAPRL_CACHE", str(tmp_path / "cache"))
    L.seed_everything(0)
    module = GRPOStage(
        tiny_models["qwen2_5_vl"],
        CapRLQAReward(tiny_models["qwen2"], num_draws=2),
        num_generations=2,
        max_new_tokens=6,
        micro_batch_size=4,
        optim=Optim(lr=1e-2),
    )
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    data = PromptData(str(caprl_parquet), format="caprl-qa", batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[RolloutCallback()],
    )
    trainer.fit(module, datamodule=data)
    assert module.rollout_step == 2
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters())
    (imported,) = (tmp_path / "cache" / "imports").iterdir()  # imported once, into the cache
    assert json.loads((imported / "import.json").read_text())["records"] == 5


def test_sft_trains_on_captions_only_rows_from_a_datasets_directory(tiny_models, tmp_path, monkeypatch):
    """CapRL-2M-style rows (image + caption, no questions), saved with `datasets.save_to_disk`."""
    import datasets
    import lightning as L
    import torch

    from lit_caprl.data import CaptionData
    from lit_caprl.stages import SFTStage

    monkeypatch.setenv("LIT_CAPRL_CACHE", str(tmp_path / "cache"))
    rows = [
        {
            "image": {"bytes": encoded("RGB", (40 + i, 30), "PNG", (20 * i, 0, 0)), "path": None},
            "caption": f"top big red circle {'.' * (i % 2 + 1)}",
        }
        for i in range(6)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "caps"))
    data = CaptionData(str(tmp_path / "caps"), format="captions", batch_size=2)
    module = SFTStage(tiny_models["qwen2_5_vl"], optim=Optim(lr=1e-2, warmup_steps=20, schedule="cosine"))
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(module, datamodule=data)
    assert len(data.train_set) == 6 and data.val_set is None
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters())
    ids = [json.loads(line)["id"] for line in next((tmp_path / "cache").rglob("train.jsonl")).read_text().splitlines()]
    assert len(set(ids)) == 6 and all(len(i) == 16 for i in ids)  # no id column: named by image hash


def test_an_unreachable_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-data' is neither a local path nor a reachable"):
        import_data("nobody/no-such-data", "caprl-qa", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="no .parquet, .json or .jsonl input at ./typo"):
        import_data("./typo", "caprl-qa", tmp_path / "out", progress=False)
