"""CapRLQAReward throughput and noise: `logprob` mode against CapRL's `sample` mode, side by side.

Both modes score the same captions with the same seeded question draws. Throughput is
reader questions (draws) scored per second; noise is the std of each caption's reward
across repeated calls, averaged over captions.

    python benchmarks/reader_reward.py [--reader DIR] [--data FILE.jsonl] [--answer-format cloze]
                                       [--rotations] [--policy DIR --group G] [--quick]
    python benchmarks/reader_reward.py --caption-words 16 64 256 512

Without --reader/--data it builds a tiny reader and a small ShapesWorld set in a temp dir, and
scores each image's gold caption. With --policy the captions are what GRPO scores instead: G
samples per image from that captioner export at temperature 0.7 (grpo.yaml's), where
`logprob` mode scores a caption sampled twice for one image once.

--caption-words sweeps caption length: each gold caption is lengthened with the captions of
the following scenes to N words (dense captions run to hundreds of tokens) and scored by a
random-init "small" reader (hidden 256, 4 layers: matrix multiplies, not per-call overhead, set
its pace) in the letter format. Both modes encode a caption's instructions and caption once;
what differs is the rest, so `sample` is measured at both ends of its cost: one new token (the
answer letter, the least any reader writes) and all 10 (CapRL's cap; a random reader never
stops early).
Writes benchmarks/results/reader_reward.json (reader_reward_length.json for the sweep).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import environment

from lit_caprl.data import prompts, shapes
from lit_caprl.data.schema import load_records
from lit_caprl.evaluate import generate_captions
from lit_caprl.models.loading import load_model
from lit_caprl.models.tiny import make_tiny
from lit_caprl.rewards import CapRLQAReward


def measure(reward: CapRLQAReward, captions: list[str], records: list, repeats: int) -> tuple[float, float]:
    """(questions per second, mean per-caption std over `repeats` calls)."""
    reward(captions[:4], records[:4])  # warm-up
    runs, seconds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        runs.append(reward(captions, records).rewards)
        seconds.append(time.perf_counter() - start)
    qps = len(captions) * reward.num_draws / statistics.median(seconds)
    return qps, float(torch.stack(runs).std(dim=0).mean())


def lengthened(captions: list[str], words: int) -> list[str]:
    """Caption i, then captions i+1, i+2, ... (wrapping around), cut to exactly `words` words."""
    out = []
    for i in range(len(captions)):
        stream, j = [], i
        while len(stream) < words:
            stream += captions[j % len(captions)].split()
            j += 1
        out.append(" ".join(stream[:words]))
    return out


def length_sweep(words: list[int], n: int, draws: int, repeats: int, out: Path) -> None:
    """Throughput of both modes (`sample` at one and at ten new tokens) as captions lengthen."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reader = str(make_tiny("qwen2", "small", Path(tmp) / "reader"))
        records = load_records(shapes.write_dataset(Path(tmp) / "shapes", n, 1, seed=0) / "train.jsonl")[0][:n]
        gold = [r.captions[0] for r in records]
        common = dict(reader=reader, num_draws=draws, seed=0, answer_format="letter")
        logprob = CapRLQAReward(mode="logprob", score="prob", rotations=False, **common)
        one = CapRLQAReward(mode="sample", temperature=0.6, max_new_tokens=1, **common)
        ten = CapRLQAReward(mode="sample", temperature=0.6, max_new_tokens=10, **common)
        tokenizer = logprob.adapter.tokenizer
        for w in words:
            captions = lengthened(gold, w)
            q, order = logprob.draws(records[0], 0)[0]
            body = prompts.reader_question(captions[0], q.question, [q.options[j] for j in order], "letter")
            tokens = len(tokenizer(logprob.adapter.chat(body, False, prompts.ANSWER_PREFIX))["input_ids"])
            lp, one_qps, ten_qps = (measure(r, captions, records, repeats)[0] for r in (logprob, one, ten))
            rows.append(
                dict(
                    caption_words=w,
                    prompt_tokens=tokens,
                    logprob_qps=lp,
                    sample_1_token_qps=one_qps,
                    sample_10_tokens_qps=ten_qps,
                    ratio_vs_1_token=lp / one_qps,
                    ratio_vs_10_tokens=lp / ten_qps,
                )
            )
            print(
                f"{w:5d} words ({tokens:4d}-token prompts): logprob {lp:7.1f} q/s, sample {one_qps:7.1f} (1 token) "
                f"{ten_qps:7.1f} (10 tokens): {lp / one_qps:.2f}x .. {lp / ten_qps:.2f}x"
            )
    result = dict(
        reader="random-init qwen2 'small' (hidden 256, 4 layers), letter format",
        captions=n,
        draws_per_caption=draws,
        rotations=False,
        repeats=repeats,
        environment=environment(),
        lengths=rows,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reader")
    p.add_argument("--data")
    p.add_argument("--captions", type=int, default=64)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--answer-format", default="letter", choices=["letter", "cloze"], help="the reader's training format"
    )
    p.add_argument("--rotations", action="store_true", help="logprob mode averages over all option rotations")
    p.add_argument("--policy", help="captioner export: score G sampled captions per image, as GRPO does")
    p.add_argument("--group", type=int, default=1, help="captions per image with --policy (grpo.yaml: 8)")
    p.add_argument("--caption-words", type=int, nargs="+", help="sweep caption length (words) instead")
    p.add_argument("--quick", action="store_true", help="a few captions, two repeats: checks that it runs")
    p.add_argument("--out", help="default: benchmarks/results/reader_reward[_length].json")
    a = p.parse_args()
    if a.group > 1 and not a.policy:
        p.error("--group needs --policy (gold captions have one per image)")
    if a.quick:
        a.captions, a.repeats = 8, 2
    torch.set_num_threads(2)
    results = Path(__file__).parent / "results"
    if a.caption_words:
        return length_sweep(
            a.caption_words, a.captions, a.draws, a.repeats, Path(a.out or results / "reader_reward_length.json")
        )
    with tempfile.TemporaryDirectory() as tmp:
        reader = a.reader or str(make_tiny("qwen2", "tiny", Path(tmp) / "reader"))
        data = a.data or str(shapes.write_dataset(Path(tmp) / "shapes", a.captions, 1, seed=0) / "train.jsonl")
        records = load_records(data)[0][: a.captions // a.group]
        if a.policy:
            records = [r for r in records for _ in range(a.group)]
            captions = generate_captions(load_model(a.policy), records, temperature=0.7, seed=0)
        else:
            captions = [r.captions[0] for r in records]
        common = dict(reader=reader, num_draws=a.draws, seed=0, answer_format=a.answer_format)
        logprob = CapRLQAReward(mode="logprob", score="prob", rotations=a.rotations, **common)
        sample = CapRLQAReward(mode="sample", temperature=0.6, max_new_tokens=10, **common)
        lp_qps, lp_std = measure(logprob, captions, records, a.repeats)
        s_qps, s_std = measure(sample, captions, records, a.repeats)
    result = {
        "reader": a.reader or "tiny random-init qwen2 (built here)",
        "captions": len(captions),
        "policy": a.policy or "gold captions",
        "distinct_captions": len(set(zip(captions, (r.id for r in records), strict=True))),
        "draws_per_caption": a.draws,
        "answer_format": a.answer_format,
        "rotations": a.rotations,
        "repeats": a.repeats,
        "logprob_qps": lp_qps,
        "sample_qps": s_qps,
        "ratio": lp_qps / s_qps,
        "logprob_std": lp_std,
        "sample_std": s_std,
        "environment": environment(),
    }
    print(
        f"{len(captions)} captions ({result['policy']}), {result['distinct_captions']} distinct (caption, image) pairs"
    )
    print(f"logprob: {lp_qps:8.1f} questions/s   reward std across calls {lp_std:.4f}")
    print(f"sample:  {s_qps:8.1f} questions/s   reward std across calls {s_std:.4f}")
    print(f"ratio logprob/sample: {lp_qps / s_qps:.2f}x")
    out = Path(a.out or results / "reader_reward.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
