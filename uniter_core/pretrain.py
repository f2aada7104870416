"""UniterForPretraining: UniterModel plus the heads of the five pre-training tasks (official ChenRocks/UNITER
model/pretrain.py semantics and parameter names).

`forward(batch, task, compute_loss=True)` takes the official batch dict (see uniter_core.tasks) and returns
unreduced losses, exactly as the official model does, so `.mean()` gives the official objective:

  mlm    cross-entropy per masked word-piece                                  [n_masked]
  mrfr   squared error per masked region and feature                          [n_masked, img_dim]
  mrc    cross-entropy per masked region against the detector's top class     [n_masked]
  mrckl  KL(soft labels || softmax(prediction)) per masked region and class   [n_masked, classes]
  itm    (cross-entropy per pair [B], WRA loss scalar or None)

The WRA loss is the official (sum of OT distances of matched pairs - sum over unmatched pairs) / batch size,
unweighted; the trainer adds config.itm_ot_lambda times it (`task_loss` does all the reductions). With
compute_loss=False: MLM / MRC scores, MRFR predicted features, and for ITM (scores [B, 2], OT distances [B]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uniter_core.checkpoint import init_text_from_bert, load_official_weights
from uniter_core.config import UniterConfig
from uniter_core.heads import (RegionClassification, RegionFeatureRegression, UniterMLMHead, fit_mlm_head,
                               probe_examples)
from uniter_core.model import UniterModel, UniterPreTrainedModel
from uniter_core.tasks import TASKS

# target -> source of the parameters that are one tensor under two names (the checkpoint may hold both)
TIED_WEIGHTS = {"cls.predictions.decoder.weight": "uniter.embeddings.word_embeddings.weight",
                "feat_regress.weight": "uniter.img_embeddings.img_linear.weight"}


class UniterForPretraining(UniterPreTrainedModel):
    tied_weights = TIED_WEIGHTS

    def __init__(self, config: UniterConfig):
        super().__init__(config)
        self.uniter = UniterModel(config)
        self.cls = UniterMLMHead(config, self.uniter.embeddings.word_embeddings.weight)
        self.feat_regress = RegionFeatureRegression(config, self.uniter.img_embeddings.img_linear.weight)
        self.region_classifier = RegionClassification(config)
        self.itm_output = nn.Linear(config.hidden_size, 2)
        for head in (self.cls.predictions.transform, self.feat_regress.net, self.region_classifier,
                     self.itm_output):
            head.apply(self._init_module)  # the encoder initialised itself; tied weights stay as they are

    # ---------------------------------------------------------------- construction from other weights
    @classmethod
    def from_official_state_dict(cls, state_dict_or_path, config: UniterConfig) -> "UniterForPretraining":
        """Strictly load an official UNITER pre-training checkpoint (path or state dict; 'module.' prefixes and
        gamma/beta LayerNorm names accepted), or an encoder-only one (keys 'uniter.*' or unprefixed), which
        leaves the heads initialised: their names are in `model.heads_initialised` and logged.
        Raises uniter_core.checkpoint.CheckpointMismatchError listing every key that does not fit."""
        model = cls(config)
        model.heads_initialised = load_official_weights(model, state_dict_or_path)
        return model

    @classmethod
    def from_minilm(cls, config: UniterConfig | None = None, path=None, examples=(),
                    feature_mean: torch.Tensor | None = None) -> "UniterForPretraining":
        """uniter-mini (or a config of the same widths) with text embeddings, encoder and pooler from the
        offline MiniLM and the MLM head fitted to it by cross-entropy (heads.fit_mlm_head) on `examples` (e.g.
        the training captions with their regions) and the probe sentences; image side and other heads random.
        `feature_mean`: the mean region feature of centred features, set before the fit reads any region.
        The fit's report is kept in `model.mlm_head_report`."""
        model = cls(config or UniterConfig.from_preset("uniter-mini"))
        tokenizer = init_text_from_bert(model.uniter, path)
        if feature_mean is not None:
            model.uniter.img_embeddings.feat_mean.copy_(feature_mean)
        model.mlm_head_report = fit_mlm_head(model, examples, probe_examples(tokenizer))
        return model

    # ---------------------------------------------------------------- tasks
    def forward(self, batch: dict, task: str, compute_loss: bool = True):
        if task == "mlm":
            return self.forward_mlm(batch, compute_loss)
        if task == "mrfr":
            return self.forward_mrfr(batch, compute_loss)
        if task in ("mrc", "mrckl"):
            return self.forward_mrc(batch, task, compute_loss)
        if task == "itm":
            return self.forward_itm(batch, compute_loss)
        raise ValueError(f"unknown pre-training task {task!r} (known: {', '.join(TASKS)})")

    def forward_mlm(self, batch: dict, compute_loss: bool = True) -> torch.Tensor:
        txt_labels = batch["txt_labels"]
        sequence_output = self.uniter.forward_batch(batch).last_hidden_state
        masked = txt_labels != -1
        # text occupies the first txt_len positions of every packed example; score only masked pieces
        prediction_scores = self.cls(sequence_output[:, :txt_labels.size(1)][masked])
        if not compute_loss:
            return prediction_scores
        return F.cross_entropy(prediction_scores, txt_labels[masked], reduction="none")

    def _masked_region_output(self, batch: dict) -> torch.Tensor:
        """Final hidden states of the masked regions, in the row-major order of feat/label targets."""
        sequence_output = self.uniter.forward_batch(batch).last_hidden_state  # applies batch['img_masks']
        return sequence_output[batch["img_mask_tgt"].bool()]

    def forward_mrfr(self, batch: dict, compute_loss: bool = True) -> torch.Tensor:
        prediction_feat = self.feat_regress(self._masked_region_output(batch))
        if not compute_loss:
            return prediction_feat
        return F.mse_loss(prediction_feat, batch["feat_targets"].to(prediction_feat.dtype), reduction="none")

    def forward_mrc(self, batch: dict, task: str = "mrckl", compute_loss: bool = True) -> torch.Tensor:
        prediction = self.region_classifier(self._masked_region_output(batch))
        if not compute_loss:
            return prediction
        label_targets = batch["label_targets"]
        if task == "mrckl":
            return F.kl_div(F.log_softmax(prediction.float(), dim=-1), label_targets.float(), reduction="none")
        if self.config.region_class_has_background:  # the background column is never the target
            target = label_targets[:, 1:].argmax(dim=-1) + 1
            return F.cross_entropy(prediction, target, ignore_index=0, reduction="none")
        return F.cross_entropy(prediction, label_targets.argmax(dim=-1), reduction="none")

    def forward_itm(self, batch: dict, compute_loss: bool = True):
        sequence_output = self.uniter.forward_batch(batch).last_hidden_state
        itm_scores = self.itm_output(self.uniter.pooler(sequence_output))
        targets = batch["targets"]
        ot_dist = ot_loss = None
        pads = _ot_pads(batch)
        if pads is not None and self.config.itm_ot_lambda > 0:
            ot_dist = self.wra_distance(sequence_output, *pads)
            ot_pos, ot_neg = ot_dist[targets == 1], ot_dist[targets == 0]
            ot_loss = (ot_pos.sum() - ot_neg.sum()) / (ot_pos.numel() + ot_neg.numel())
        if not compute_loss:
            return itm_scores, ot_dist
        return F.cross_entropy(itm_scores, targets, reduction="none"), ot_loss

    def wra_distance(self, sequence_output: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor):
        """OT distance [B] between each example's final text states ([CLS] .. [SEP]) and region states, in
        fp32 (autocast off). Official layout: txt_pad [B, max_txt_len], img_pad [B, max_regions], True = pad;
        the regions of example b start right after its text in the packed sequence."""
        from uniter_core.ot import optimal_transport_dist
        txt_pad, img_pad = txt_pad.bool(), img_pad.bool()
        txt_emb, img_emb = split_text_regions(sequence_output.float(), txt_pad, img_pad)
        config = self.config
        with torch.autocast(device_type=txt_emb.device.type, enabled=False):
            return optimal_transport_dist(txt_emb, img_emb, txt_pad, img_pad, beta=config.ot_beta,
                                          iteration=config.ot_iteration, k=config.ot_k, solver=config.ot_solver)


def split_text_regions(hidden: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor):
    """(text states [B, T, H], region states [B, K, H]) out of the packed sequence [B, L, H], zeros at the
    padding (txt_pad [B, T], img_pad [B, K], bool, True = pad): example b's regions follow its own text."""
    txt_emb = hidden[:, :txt_pad.size(1)].masked_fill(txt_pad.unsqueeze(-1), 0.0)
    start = (~txt_pad).sum(dim=1, keepdim=True)
    index = (start + torch.arange(img_pad.size(1), device=hidden.device)).clamp(max=hidden.size(1) - 1)
    img_emb = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
    return txt_emb, img_emb.masked_fill(img_pad.unsqueeze(-1), 0.0)


def _ot_pads(batch: dict):
    """(txt_pad, img_pad) from the batch, or from the official nested 'ot_inputs'; None when absent."""
    source = batch if batch.get("txt_pad") is not None else (batch.get("ot_inputs") or {})
    if source.get("txt_pad") is None or source.get("img_pad") is None:
        return None
    return source["txt_pad"], source["img_pad"]


def task_loss(task: str, output, itm_ot_lambda: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The official reduction of `forward`'s output to the scalar that is back-propagated, plus its parts
    (detached, no device sync) for logging: the mean of the per-element loss; for ITM the mean cross-entropy
    + itm_ot_lambda * WRA loss."""
    if task != "itm":
        loss = output.mean()
        return loss, {task: loss.detach()}
    itm_loss, ot_loss = output
    loss = itm_loss.mean()
    parts = {"itm_xe": loss.detach()}
    if ot_loss is not None:
        parts["itm_ot"] = ot_loss.detach()
        loss = loss + itm_ot_lambda * ot_loss
    parts["itm"] = loss.detach()
    return loss, parts
