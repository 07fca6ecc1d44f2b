"""How fast does the hardened spec loader chew through hostile documents, and does any
document make it do something other than return a spec or raise SpecError? A figure and
a check, not a test (the CI runs a bounded hypothesis test: tests/hardening/test_spec_loader.py).

Corpus (seeded, reproducible): the project's example specs mutated at random (values
replaced by other types, NaN/inf, booleans, huge numbers, long strings, control
characters, keys dropped, renamed or duplicated), YAML noise built from YAML's
punctuation and the spec's keywords, and the hostile shapes found by the fault-injection
run: alias bombs, deep nesting, duplicate keys, oversized documents.

Baseline, in the same run on a systematic sample of the same documents (every 5th): the
loader before hardening (``yaml.safe_load`` then ``parse_spec``), except the documents it
cannot survive (alias bombs past a small size blow up its memory; left out). The figure is
documents per second for each and their ratio; any outcome of the new loader other than
a spec or a SpecError is listed (there must be none).

Run: ``python bench/fuzz_spec.py [--documents 10000] [--seed 1] [--baseline-every 5]``; writes
bench/results/fuzz_spec.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollout import redact  # noqa: E402
from rollout.errors import SpecError  # noqa: E402
from rollout.spec import parse_spec, spec_from_yaml  # noqa: E402

KEYWORDS = ["model", "registry", "type", "url", "platform", "server", "strategy", "weights", "steps", "set_weight",
            "pause", "duration_s", "analysis", "metrics", "name", "query", "judge", "max", "min", "interval_s",
            "prometheus", "bearer_token_env", "webhooks", "hooks", "notify", "url_env", "namespace", "canary",
            "local", "git", "threshold", "error_rate", "builtin", "kubernetes", "blue_green", "shadow", "{port}"]
PUNCTUATION = list("[]{}:,-&*!|>'\"#%@`? \n\t\\") + [".nan", ".inf", "<<", "0x1", "~", "---", "\\e"]


def weird_value(rng: random.Random) -> Any:
    return rng.choice([
        float("nan"), float("inf"), -float("inf"), True, False, None, 10 ** rng.randint(6, 30), -1, 0, 2.5,
        "", "x" * rng.randint(1, 20_000), "\x1b[2J\x07", "v9$(touch /tmp/x)", "../kube-system", "{prot}",
        "https://u:p@host/x", [], {}, [True], ["10"], {"a": 1}, rng.choice(KEYWORDS),
    ])


def mutate(node: Any, rng: random.Random, rate: float) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            roll = rng.random()
            if roll < rate / 3:
                continue  # drop the key
            if roll < rate / 2:
                k = rng.choice(KEYWORDS)  # rename it
            out[k] = weird_value(rng) if rng.random() < rate else mutate(v, rng, rate)
        if rng.random() < rate:
            out[rng.choice(KEYWORDS)] = weird_value(rng)
        return out
    if isinstance(node, list):
        return [weird_value(rng) if rng.random() < rate else mutate(v, rng, rate) for v in node]
    return weird_value(rng) if rng.random() < rate else node


def hostile(rng: random.Random) -> tuple[str, bool]:
    """(document, the old loader can run it without exhausting memory)."""
    kind = rng.randrange(5)
    if kind == 0:  # alias bomb
        levels = rng.randint(3, 9)
        lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
        return "\n".join(lines) + "\n", levels <= 4
    if kind == 1:  # deep nesting
        depth = rng.choice([50, 100, 1000, 10_000])
        return rng.choice(["[", "{a: "]) * depth, True
    if kind == 2:  # duplicate keys
        return "model: iris\nregistry: {type: git, url: /r}\nmodel: other\n", True
    if kind == 3:  # control characters via escapes, long
        return 'model: "\\e]0;x\\a' + "A" * rng.randint(10, 100_000) + '"\n', True
    return "model: iris\nregistry: {type: git, url: /r}\nanalysis: {metrics: [" + "x, " * rng.randint(1, 200_000) \
        + "]}\n", True


CATEGORIES = ("mutated spec", "YAML noise", "hostile shape")


def corpus(n: int, seed: int) -> list[tuple[str, bool, str]]:
    """(document, the old loader survives it, category)."""
    rng = random.Random(seed)
    bases = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    docs: list[tuple[str, bool, str]] = []
    while len(docs) < n:
        roll = rng.random()
        if roll < 0.6:
            doc = mutate(rng.choice(bases), rng, rate=rng.choice([0.02, 0.1, 0.3]))
            docs.append((yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), True, CATEGORIES[0]))
        elif roll < 0.9:
            text = "".join(rng.choice(PUNCTUATION + KEYWORDS) for _ in range(rng.randint(1, 80)))
            docs.append((text, True, CATEGORIES[1]))
        else:
            docs.append((*hostile(rng), CATEGORIES[2]))
    return docs


def timed(docs: list[tuple[str, bool, str]], load: Any) -> dict[str, float]:
    """Seconds spent per category."""
    spent = dict.fromkeys(CATEGORIES, 0.0)
    for text, _, category in docs:
        start = time.perf_counter()
        load(text)
        spent[category] += time.perf_counter() - start
    return spent


def run_new(docs: list[tuple[str, bool, str]]) -> tuple[float, dict[str, int], list[str]]:
    outcomes = {"spec": 0, "SpecError": 0}
    surprises: list[str] = []
    start = time.perf_counter()
    for text, _, _ in docs:
        try:
            spec_from_yaml(text, "fuzz.yaml")
            outcomes["spec"] += 1
        except SpecError:
            outcomes["SpecError"] += 1
        except BaseException as exc:  # noqa: BLE001 - the point is to find any
            surprises.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {text[:120]!r}\n{traceback.format_exc(limit=3)}")
    return time.perf_counter() - start, outcomes, surprises


def run_baseline(docs: list[tuple[str, bool, str]], sample: int) -> tuple[float, int, int]:
    """The old path, yaml.safe_load + parse_spec, on every ``sample``-th document (it is
    slow on the hostile ones); returns (seconds, documents run, non-SpecError outcomes)."""
    limit = sys.getrecursionlimit()
    ran = crashes = 0
    start = time.perf_counter()
    for text, survivable, _ in docs[::sample]:
        if not survivable:
            continue
        ran += 1
        try:
            parse_spec(yaml.safe_load(text), "fuzz.yaml")
        except SpecError:
            pass
        except BaseException:  # noqa: BLE001 - tracebacks of the old loader
            crashes += 1
    sys.setrecursionlimit(limit)
    return time.perf_counter() - start, ran, crashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-every", type=int, default=5, help="run the baseline on every Nth document")
    args = parser.parse_args()
    docs = corpus(args.documents, args.seed)
    total_bytes = sum(len(t) for t, _, _ in docs)
    new_s, outcomes, surprises = run_new(docs)
    print(f"hardened loader: {len(docs) / new_s:,.0f} documents/s", file=sys.stderr, flush=True)
    redact.REDACTOR.clear()
    base_s, base_ran, base_crashes = run_baseline(docs, args.baseline_every)
    redact.REDACTOR.clear()
    new_rate = len(docs) / new_s
    base_rate = base_ran / base_s
    # Per category, on the same sample (the hostile shapes dominate the baseline's time).
    sample = [d for d in docs[::args.baseline_every] if d[1]]
    counts = {c: sum(1 for d in sample if d[2] == c) for c in CATEGORIES}

    def new_load(text: str) -> None:
        try:
            spec_from_yaml(text, "fuzz.yaml")
        except SpecError:
            pass

    def old_load(text: str) -> None:
        try:
            parse_spec(yaml.safe_load(text), "fuzz.yaml")
        except BaseException:  # noqa: BLE001
            pass

    new_by, old_by = timed(sample, new_load), timed(sample, old_load)
    redact.REDACTOR.clear()
    lines = [
        "# Spec loader fuzz run", "",
        f"Command: `python bench/fuzz_spec.py --documents {args.documents} --seed {args.seed}`", "",
        f"- documents: {len(docs)} ({total_bytes / 1e6:.1f} MB in all), seed {args.seed}",
        f"- hardened loader: {new_rate:,.0f} documents/s ({new_s:.2f} s); outcomes: {outcomes['spec']} valid specs, "
        f"{outcomes['SpecError']} SpecError (exit 2), **{len(surprises)} anything else**",
        f"- baseline (yaml.safe_load + parse_spec) on every {args.baseline_every}th document, {base_ran} in all "
        f"(alias bombs it cannot survive left out): {base_rate:,.0f} documents/s ({base_s:.2f} s); {base_crashes} "
        "ended in something other than SpecError (tracebacks)",
        f"- ratio hardened / baseline: {new_rate / base_rate:.2f}",
        "", "Per kind of document, on the baseline's sample (documents/s, hardened vs baseline):", "",
        "| kind | documents | hardened | baseline | ratio |", "|---|---|---|---|---|",
        *(f"| {c} | {counts[c]} | {counts[c] / new_by[c]:,.0f} | {counts[c] / old_by[c]:,.0f} | "
          f"{old_by[c] / new_by[c]:.2f} |" for c in CATEGORIES if counts[c]),
    ]
    if surprises:
        lines += ["", "## Surprises", "", *("```\n" + s + "\n```" for s in surprises[:20])]
    report = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "fuzz_spec.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(report)
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())
