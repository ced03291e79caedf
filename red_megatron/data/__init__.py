"""Prompts, gold answers and offline traces, ready for rollout and the offline term.

- ``dataset``: ``DataConfig`` and ``RedDataset`` (OpenR1/LUFFY parquet or JSONL, or plain
  problem/answer files), chat-templated prompt ids, traces cut at the response limit + EOS.
- ``loader``: ``PromptLoader``: seeded per-epoch shuffles, DP sharding, resumable position.
- ``records``: row reading and field checks (``DataError`` names file, row and field).
- ``chat``: the tokenizer's chat template, encoding, the response-ending token.
- ``prepare`` / ``trace_check``: dataset conversion, and the traces' answers checked against the golds.
The study's tasks and fixtures (the synthetic and chain tasks, tiny checkpoints) live in red_megatron/study.
Import the modules directly; nothing is re-exported here, so importing the package stays cheap.
"""
