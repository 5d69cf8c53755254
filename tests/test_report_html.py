"""report.html opened in a real headless browser: every image decodes, every caption is there."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lit_caprl import report, report_files
from lit_caprl.data.schema import load_records

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> str:
    if BROWSER is None:
        if os.environ.get("LIT_CAPRL_REQUIRE_BROWSER"):  # set by .ci/run, which installs Chromium
            pytest.fail("Chromium is required here but not installed")
        pytest.skip("Chromium not installed (apt-get install -y chromium)")
    return BROWSER


def test_report_html_renders_images_and_captions_side_by_side(browser, shapes_root, tmp_path):
    records = load_records(Path(shapes_root) / "val.jsonl")[0][: report.EXAMPLES]
    gold = [r.captions[0] for r in records]
    rows = {
        "sft": {
            "utility": 0.5,
            "best_of_n": None,
            "precision": 0.9,
            "recall": 0.4,
            "length": 5.0,
            "examples": [f"sft caption <{i}> & more" for i in range(len(records))],
        },
        "gold": {"utility": 0.9, "best_of_n": None, "precision": 1.0, "recall": 1.0, "length": 12.0, "examples": gold},
    }
    tables = {"heldout": {"rows": rows, "images": [str(r.image) for r in records]}}
    report_files.write_report(tmp_path / "report", tables, {}, [(1, 0.3), (2, 0.5)])
    page = (tmp_path / "report" / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    scenes = re.findall(r"<img class=\"scene\"[^>]*>", dom)
    assert len(scenes) == len(records) == report.EXAMPLES
    assert all('data-rendered="true"' in tag for tag in scenes), scenes[:2]  # each decoded in the browser
    assert 'data-rendered="true"' in re.search(r"<img class=\"plot\"[^>]*>", dom)[0]
    assert all(caption in dom for caption in gold) and "sft caption &lt;3&gt; &amp; more" in dom  # escaped
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", page], capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one
