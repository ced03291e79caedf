"""Prompts, gold answers and offline traces, ready for rollout and the offline term.

- ``dataset``: ``DataConfig`` and ``RedDataset`` (OpenR1/LUFFY parquet or JSONL, or plain
  problem/answer files), chat-templated prompt ids, traces cut at the response limit + EOS.
- ``loader``: ``PromptLoader``: seeded per-epoch shuffles, DP sharding, resumable position.
- ``records``: row reading and field checks (``DataError`` names file, row and field).
- ``chat``: the tokenizer's chat template, encoding, the response-ending token.
- ``synthetic`` / ``tiny_checkpoint``: the built-in verifiable task and a tiny HF checkpoint.
Import the modules directly; nothing is re-exported here, so importing the package stays cheap.
"""
