"""The countdown chain task (../shared/STUDY_DESIGN.md §6.1-6.3): a task on which a tiny model can have
*partial* ability, and teacher traces that extend it while carrying redundancy.

A state is W digits. One step of the rule ``a+c`` maps ``(a, b, c)`` to ``(b, c, (a + c) mod 10)``
(the state shifts left and the new last digit is computed from its first three digits; ``a*c+b``
is the GPU scale-up's non-linear rule). The gold answer of ``(s0, k)`` is ``T^k(s0)`` as a W-digit
string; problems whose gold starts with 0 are never drawn, so the gold has no leading zero.

- Prompt (one user turn, fixed length): ``Start 372. Steps 7.`` (the rule is never stated).
- Native response (the base's style): ``7|372 6|725 5|252 ... 0|xyz So the answer is xyz. \\boxed{xyz}``;
  line ``j|abc`` is the state after ``k - j`` steps.
- Teacher trace: the native lines; after each line but the first, with prob. ``p_check``,
  ``Wait, let me check: a + c ends in d. Yes, j|abc``; with prob. ``p_detour`` a line is first written
  with a wrong last digit, then ``Wait, that is wrong: a + c ends in d.`` and the right line; with
  prob. ``p_replay`` (per trace) ``Wait, let me verify the whole chain again.`` and every line again;
  with prob. ``p_preamble`` (per trace) the sentence ``PREAMBLE`` at ``preamble_at`` (``start``: before
  the first line, ``end``: before the answer sentence); with prob. ``p_wrong`` (per trace) one line's
  last digit is silently wrong and the chain continues from it, so the trace's own answer is wrong.
  Redundancy is redrawn while the trace is longer than ``max_trace_tokens`` (EOS included).

Splits (disjoint (s0, k) pairs, made in this order, each excluding every pair drawn before it): test
(seed 1; bands ``chain_easy`` k 1-3, ``chain_medium`` k 4-5, ``chain_hard`` k 6-9, and optionally
``chain_ood`` k 10-12), val (seed 2, ``val_per_k`` a k), train (seed 0, k uniform), pretrain (seed
10, native rows, k from ``pretrain_k_probs``; the only split with repeated pairs: k = 1 alone has
~900 starts). The problems of a split depend only on the *problem* fields (``problem_fields()``);
the trace knobs draw from a separate per-row stream, so a premise-off variant (``p_replay=0``)
keeps every problem and every split. Rows are in the OpenR1 schema of ``synthetic.py``;
``extra_info`` carries k, s0, band, checks, replay, detours, wrong, preamble, trace_tokens,
resamples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

RULES = {  # name -> (next digit from (a, b, c), the check's arithmetic text)
    "a+c": (lambda a, b, c: (a + c) % 10, "{a} + {c}"),
    "a*c+b": (lambda a, b, c: (a * c + b) % 10, "{a} * {c} + {b}"),
}
PREAMBLE = "Okay, so I need to follow the chain from the start, one step at a time."
PREAMBLE_AT = ("start", "end")
CPU_BANDS = (("chain_easy", 1, 3), ("chain_medium", 4, 5), ("chain_hard", 6, 9))
OOD_BAND = ("chain_ood", 10, 12)
SPLITS = ("pretrain", "train", "val", "test")
_TRACE_FIELDS = ("p_check", "p_replay", "p_preamble", "preamble_at", "p_detour", "p_wrong", "max_trace_tokens")


@dataclass(kw_only=True)
class ChainTaskConfig:
    """The generator's knobs (STUDY_DESIGN §6.2, CPU defaults; ``gpu_config()`` gives the §6.9 set)."""

    width: int = 3
    rule: str = "a+c"
    k_max: int = 9  # train and val cover k = 1..k_max
    pretrain_k_probs: dict = field(default_factory=lambda: {1: .30, 2: .30, 3: .25, 4: .12, 5: .03})
    p_check: float = 0.3
    p_replay: float = 0.15
    p_preamble: float = 0.0
    preamble_at: str = "start"
    p_detour: float = 0.0
    p_wrong: float = 0.0
    max_trace_tokens: int = 224  # trace tokens + EOS (the response limit of the study)
    bands: tuple = CPU_BANDS  # (data_source, k_lo, k_hi) of the test split's "benchmarks"
    ood: bool = False  # add the chain_ood band (k beyond k_max) to the test split
    ood_band: tuple = OOD_BAND
    pretrain_rows: int = 24000
    pretrain_seed: int = 10
    train_rows: int = 2048
    train_seed: int = 0
    val_per_k: int = 32
    val_seed: int = 2
    test_per_band: int = 64
    test_seed: int = 1

    def __post_init__(self) -> None:
        self.pretrain_k_probs = {int(k): float(v) for k, v in dict(self.pretrain_k_probs).items()}
        self.bands = tuple(tuple(b) for b in self.bands)
        self.ood_band = tuple(self.ood_band)
        if not 3 <= self.width <= 8:
            raise ValueError(f"ChainTaskConfig.width must be in [3, 8] (the rule reads three digits), got {self.width}")
        if self.rule not in RULES:
            raise ValueError(f"ChainTaskConfig.rule must be one of {tuple(RULES)}, got {self.rule!r}")
        if not 1 <= self.k_max <= 99:
            raise ValueError(f"ChainTaskConfig.k_max must be in [1, 99], got {self.k_max}")
        for name in ("p_check", "p_replay", "p_preamble", "p_detour", "p_wrong"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ChainTaskConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.preamble_at not in PREAMBLE_AT:
            raise ValueError(f"ChainTaskConfig.preamble_at must be one of {PREAMBLE_AT}, got {self.preamble_at!r}")
        probs = self.pretrain_k_probs
        if not probs or any(k < 1 or p < 0 for k, p in probs.items()) or abs(sum(probs.values()) - 1) > 1e-6:
            raise ValueError(f"ChainTaskConfig.pretrain_k_probs must map k >= 1 to probabilities summing to 1, "
                             f"got {probs}")
        for b in self.bands + ((self.ood_band,) if self.ood else ()):
            if len(b) != 3 or not (isinstance(b[0], str) and 1 <= b[1] <= b[2] <= 99):
                raise ValueError(f"ChainTaskConfig.bands: each band is (data_source, k_lo, k_hi) with "
                                 f"1 <= k_lo <= k_hi <= 99, got {b!r}")
        for name in ("pretrain_rows", "train_rows", "val_per_k", "test_per_band", "max_trace_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ChainTaskConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pretrain_seed", "train_seed", "val_seed", "test_seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ChainTaskConfig.{name} must be >= 0, got {getattr(self, name)}")

    def problem_fields(self) -> dict:
        """The fields that decide which (s0, k) every split holds and the native texts (not the trace knobs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _TRACE_FIELDS}

    def key(self, fields: dict | None = None) -> str:
        """A short stable hash of ``fields`` (default: every field), for cache directory names."""
        blob = json.dumps(fields if fields is not None else dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def gpu_config(**overrides) -> ChainTaskConfig:
    """The §6.9 scale-up flag set. The pretrain horizon (k <= 8, decaying) and the bands are this module's choice."""
    d = dict(width=4, rule="a*c+b", k_max=24, p_preamble=0.5, preamble_at="start", p_check=0.3, p_replay=0.2,
             p_detour=0.1, p_wrong=0.1, max_trace_tokens=1024,
             pretrain_k_probs={1: .20, 2: .20, 3: .17, 4: .14, 5: .12, 6: .09, 7: .05, 8: .03},
             bands=(("chain_easy", 1, 5), ("chain_medium", 6, 8), ("chain_hard", 9, 24)),
             ood_band=("chain_ood", 25, 30))
    return ChainTaskConfig(**{**d, **overrides})


# --- the rule and the texts ------------------------------------------------------------------------------

def step(state: tuple, rule: str = "a+c") -> tuple:
    """One application of the rule: shift left, append f(a, b, c) of the first three digits."""
    a, b, c = state[0], state[1], state[2]
    return tuple(state[1:]) + (RULES[rule][0](a, b, c),)


def chain_states(s0: tuple, k: int, rule: str = "a+c") -> list[tuple]:
    """[s0, T(s0), ..., T^k(s0)]."""
    out = [tuple(s0)]
    for _ in range(k):
        out.append(step(out[-1], rule))
    return out


def digits(state: tuple) -> str:
    return "".join(str(d) for d in state)


def to_state(s: str | int, width: int) -> tuple:
    return tuple(int(ch) for ch in str(s).zfill(width))


def prompt_text(s0: tuple, k: int) -> str:
    return f"Start {digits(s0)}. Steps {k}."


def line_text(j: int, state: tuple) -> str:
    return f"{j}|{digits(state)}"


def answer_text(final: tuple) -> str:
    return f"So the answer is {digits(final)}. \\boxed{{{digits(final)}}}"


def check_text(prev: tuple, j: int, state: tuple, rule: str) -> str:
    arith = RULES[rule][1].format(a=prev[0], b=prev[1], c=prev[2])
    return f"Wait, let me check: {arith} ends in {state[-1]}. Yes, {line_text(j, state)}"


def native_response(s0: tuple, k: int, rule: str = "a+c") -> str:
    states = chain_states(s0, k, rule)
    return " ".join([line_text(k - i, s) for i, s in enumerate(states)] + [answer_text(states[-1])])


_PRETOKENIZER = None


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the chain tokenizer: its Qwen2 pre-tokenizer pieces (digits one per token).

    The chain BPE merges every word piece of the task's fixed phrases into one token (tests check that
    this count equals the trained tokenizer's), so the count needs no tokenizer, which is itself
    trained on this module's text.
    """
    global _PRETOKENIZER
    if _PRETOKENIZER is None:
        from tokenizers import Regex, pre_tokenizers

        from red_megatron.study.tiny_checkpoint import _QWEN2_SPLIT

        _PRETOKENIZER = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False)
    return len(_PRETOKENIZER.pre_tokenize_str(text))


def teacher_trace(s0: tuple, k: int, cfg: ChainTaskConfig, rng: random.Random) -> tuple[str, dict]:
    """(trace, info) for one problem; ``rng`` is the row's own stream. Redundancy is redrawn while too long."""
    wrong_at = None
    if k >= 1 and rng.random() < cfg.p_wrong:  # the silent error: a line (not the first) with a wrong digit
        wrong_at = rng.randint(1, k)
        wrong_digit = rng.randint(1, 9)  # an offset, so the digit differs; redrawn until the answer differs
    true_final = chain_states(s0, k, cfg.rule)[-1]
    states = chain_states(s0, k, cfg.rule)
    if wrong_at is not None:
        for _ in range(100):
            bad = states[wrong_at][:-1] + ((states[wrong_at][-1] + wrong_digit) % 10,)
            cand = states[:wrong_at] + chain_states(bad, k - wrong_at, cfg.rule)
            if cand[-1] != true_final and cand[-1][0] != 0:
                states = cand
                break
            wrong_digit = rng.randint(1, 9)
        else:  # no corrupted chain gives a different answer without a leading zero: leave the trace right
            wrong_at = None
    for attempt in range(200):
        parts, info = _redundant_parts(states, k, cfg, rng, wrong_at, attempt)
        text = " ".join(parts)
        n = count_tokens(text)
        if n + 1 <= cfg.max_trace_tokens:
            info.update(wrong=int(wrong_at is not None), trace_tokens=n, resamples=attempt)
            return text, info
    raise ValueError(f"ChainTaskConfig.max_trace_tokens={cfg.max_trace_tokens} is below the native trace of "
                     f"k={k} ({n} tokens + EOS); raise max_trace_tokens or lower k_max")


def _redundant_parts(states, k, cfg, rng, wrong_at, attempt) -> tuple[list[str], dict]:
    last_try = attempt == 199  # the fall-back: no redundancy at all (the native lines, the silent error kept)
    on = (lambda p: (not last_try) and rng.random() < p)
    parts, checks, detours = [], 0, 0
    preamble = on(cfg.p_preamble)
    if preamble and cfg.preamble_at == "start":
        parts.append(PREAMBLE)
    for i, s in enumerate(states):
        j = k - i
        if i >= 1 and i != wrong_at and on(cfg.p_detour):
            bad = s[:-1] + ((s[-1] + rng.randint(1, 9)) % 10,)
            arith = RULES[cfg.rule][1].format(a=states[i - 1][0], b=states[i - 1][1], c=states[i - 1][2])
            parts += [line_text(j, bad), f"Wait, that is wrong: {arith} ends in {s[-1]}."]
            detours += 1
        parts.append(line_text(j, s))
        if i >= 1 and i != wrong_at and on(cfg.p_check):
            parts.append(check_text(states[i - 1], j, s, cfg.rule))
            checks += 1
    replay = on(cfg.p_replay)
    if replay:
        parts.append("Wait, let me verify the whole chain again.")
        parts += [line_text(k - i, s) for i, s in enumerate(states)]
    if preamble and cfg.preamble_at == "end":
        parts.append(PREAMBLE)
    parts.append(answer_text(states[-1]))
    return parts, {"checks": checks, "replay": int(replay), "detours": detours, "preamble": int(preamble)}


# --- the splits ----------------------------------------------------------------------------------------------

def _candidates(k: int, cfg: ChainTaskConfig, used: set) -> list[tuple]:
    """Every start whose k-step gold has no leading zero and whose (s0, k) no earlier split holds, in order."""
    out = []
    for n in range(10 ** cfg.width):
        s0 = to_state(n, cfg.width)
        if (s0, k) not in used and chain_states(s0, k, cfg.rule)[-1][0] != 0:
            out.append(s0)
    return out


def _draw_unique(ks: list[int], cfg: ChainTaskConfig, used: set, rng: random.Random, split: str) -> list[tuple]:
    """One distinct start per entry of ``ks`` (per k, without replacement), in the order of ``ks``."""
    need: dict[int, int] = {}
    for k in ks:
        need[k] = need.get(k, 0) + 1
    pools = {}
    for k in sorted(need):
        cand = _candidates(k, cfg, used)
        if len(cand) < need[k]:
            raise ValueError(f"ChainTaskConfig: split {split!r} needs {need[k]} distinct starts at k={k}, only "
                             f"{len(cand)} are left after the earlier splits; lower the split sizes")
        pools[k] = rng.sample(cand, need[k])
    taken = {k: 0 for k in pools}
    out = []
    for k in ks:
        out.append((pools[k][taken[k]], k))
        taken[k] += 1
    return out


def _balanced(ks: list[int], n: int) -> list[int]:
    """n values cycling through ks (counts differ by at most one)."""
    return [ks[i % len(ks)] for i in range(n)]


def split_problems(cfg: ChainTaskConfig) -> dict[str, list[tuple]]:
    """{split: [(s0, k, data_source), ...]}, test first; no (s0, k) of one split appears in another."""
    used: set = set()
    out: dict[str, list[tuple]] = {}
    rng = random.Random(f"red-megatron-chain:test:{cfg.test_seed}")
    bands = list(cfg.bands) + ([cfg.ood_band] if cfg.ood else [])
    test = []
    for name, lo, hi in bands:
        ks = _balanced(list(range(lo, hi + 1)), cfg.test_per_band)
        test += [(s, k, name) for s, k in _draw_unique(ks, cfg, used, rng, "test")]
    out["test"] = test
    used |= {(s, k) for s, k, _ in test}

    def band_of(k):
        return next((n for n, lo, hi in bands if lo <= k <= hi), f"chain_k{k}")

    rng = random.Random(f"red-megatron-chain:val:{cfg.val_seed}")
    ks = [k for k in range(1, cfg.k_max + 1) for _ in range(cfg.val_per_k)]
    out["val"] = [(s, k, band_of(k)) for s, k in _draw_unique(ks, cfg, used, rng, "val")]
    used |= {(s, k) for s, k, _ in out["val"]}
    rng = random.Random(f"red-megatron-chain:train:{cfg.train_seed}")
    ks = _balanced(list(range(1, cfg.k_max + 1)), cfg.train_rows)
    rng.shuffle(ks)
    out["train"] = [(s, k, "chain_train") for s, k in _draw_unique(ks, cfg, used, rng, "train")]
    used |= {(s, k) for s, k, _ in out["train"]}
    rng = random.Random(f"red-megatron-chain:pretrain:{cfg.pretrain_seed}")
    kvals = sorted(cfg.pretrain_k_probs)
    ks = rng.choices(kvals, weights=[cfg.pretrain_k_probs[k] for k in kvals], k=cfg.pretrain_rows)
    pools = {k: _candidates(k, cfg, used) for k in kvals}
    for k in kvals:
        if not pools[k] and k in ks:
            raise ValueError(f"ChainTaskConfig: no start is left for pretrain k={k} after the other splits")
    out["pretrain"] = [(rng.choice(pools[k]), k, "chain_pretrain") for k in ks]
    return out


def make_rows(cfg: ChainTaskConfig, split: str, problems: dict | None = None) -> list[dict]:
    """The OpenR1-schema rows of one split (pretrain: native responses; the others: teacher traces)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    problems = problems if problems is not None else split_problems(cfg)
    seed = getattr(cfg, f"{split}_seed")
    rows = []
    for i, (s0, k, source) in enumerate(problems[split]):
        gold = digits(chain_states(s0, k, cfg.rule)[-1])
        if split == "pretrain":
            text = native_response(s0, k, cfg.rule)
            info = {"checks": 0, "replay": 0, "detours": 0, "preamble": 0, "wrong": 0,
                    "trace_tokens": count_tokens(text), "resamples": 0}
        else:
            text, info = teacher_trace(s0, k, cfg, random.Random(f"red-megatron-chain:trace:{split}:{seed}:{i}"))
        rows.append({
            "data_source": source,
            "prompt": [{"role": "user", "content": prompt_text(s0, k)}],
            "target": [{"role": "assistant", "content": text}],
            "reward_model": {"ground_truth": gold, "style": "rule"},
            "ability": "math",
            "extra_info": {"index": i, "split": split, "k": k, "s0": digits(s0), **info},
        })
    return rows


_INFO_INT = ("index", "k", "checks", "replay", "detours", "preamble", "wrong", "trace_tokens", "resamples")


def write_rows(rows: list[dict], path) -> Path:
    """Write rows as parquet with an explicit schema (the synthetic task's, with the chain's extra_info)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    msg = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    info = pa.struct([(n, pa.int64()) for n in _INFO_INT[:1]] + [("split", pa.string())]
                     + [(n, pa.int64()) for n in _INFO_INT[1:2]] + [("s0", pa.string())]
                     + [(n, pa.int64()) for n in _INFO_INT[2:]])
    schema = pa.schema([
        ("data_source", pa.string()), ("prompt", msg), ("target", msg),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("ability", pa.string()), ("extra_info", info),
    ])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_splits(cfg: ChainTaskConfig, out_dir, splits=SPLITS) -> dict[str, Path]:
    """Write ``chain_<split>.parquet`` for each split under ``out_dir``; returns their paths."""
    problems = split_problems(cfg)
    out = Path(out_dir)
    return {s: write_rows(make_rows(cfg, s, problems), out / f"chain_{s}.parquet") for s in splits}


def tokenizer_corpus() -> list[str]:
    """Texts the chain tokenizer's BPE is trained on: chat-rendered rows with every knob on, CPU and GPU shapes."""
    texts = []
    variants = (ChainTaskConfig(p_check=0.5, p_replay=0.5, p_detour=0.2, p_preamble=0.5, p_wrong=0.1),
                gpu_config(preamble_at="end"), gpu_config())
    for v, cfg in enumerate(variants):
        rng = random.Random(f"red-megatron-chain:tokenizer:{v}")
        for i in range(300):
            k = rng.randint(1, cfg.k_max)
            s0 = to_state(rng.randrange(10 ** cfg.width), cfg.width)
            if i % 4 == 0:
                resp = native_response(s0, k, cfg.rule)
            else:
                resp = teacher_trace(s0, k, cfg, random.Random(f"red-megatron-chain:tokenizer:{v}:{i}"))[0]
            texts.append(f"user\n{prompt_text(s0, k)}\nassistant\n{resp}\n")
    return texts
