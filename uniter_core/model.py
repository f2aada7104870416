"""UniterModel: BERT text embeddings + region embeddings, packed into one sequence, through a post-LN BERT encoder.

Follows ChenRocks/UNITER model/model.py. Parameter names equal the official checkpoints' because the pieces
are transformers' own BERT modules (BertEmbeddings, BertSelfAttention's query/key/value, BertSelfOutput,
BertIntermediate, BertOutput, BertPooler), which the official code copied. Attention is ours: SDPA for
training, and on request (`output_attentions=True`) the eager softmax, whose per-layer probabilities come
back with a `SequenceLayout` saying where [CLS], word-pieces, [SEP], regions and padding sit.

Sequence of one example: [CLS] w1 .. wn [SEP] r1 .. rk, then padding. Text and regions are embedded
separately (text padded to the batch's longest text) and re-packed with the official `gather_index`, so every
example's regions follow its own text directly.

Hook points (`HookPoint`, parameter-free) sit on the embeddings, on every layer's attention output, layer
output and (eager path) attention pattern; `run_with_cache` collects them by name.

Head gates (`head_mask`, Michel et al. 2019's xi_h): a [layers, heads] or per-example [B, layers, heads] tensor
that multiplies each head's output before the output projection. 0 removes a head, 1 leaves the model as it is,
and a gate that requires grad gives d(loss)/d(xi_h), the gradient importance of the head. `encode_from` runs the
layers from one layer on, so a sweep that ablates heads of layer l reuses the states below it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import (BertEmbeddings, BertIntermediate, BertOutput, BertPooler,
                                                    BertSelfAttention, BertSelfOutput)

from uniter_core.checkpoint import load_pretrained, save_pretrained
from uniter_core.config import UniterConfig

MASK_VALUE = -10000.0  # official: (1 - mask) * -10000 added to the attention scores


class HookPoint(nn.Identity):
    """A named no-op: register a forward hook on it to read or replace the activation that passes through."""


@dataclass(frozen=True)
class SequenceLayout:
    """Where each part of every example lies in the packed sequence of length `seq_len`.

    txt_lens count [CLS] and [SEP]; example i occupies [0, txt_lens[i] + num_bbs[i]) and is padding after.
    """

    txt_lens: tuple[int, ...]
    num_bbs: tuple[int, ...]
    seq_len: int

    KINDS = ("cls", "word", "sep", "region", "pad")

    @classmethod
    def from_inputs(cls, attention_mask: torch.Tensor, gather_index: torch.Tensor | None = None,
                    max_txt_len: int | None = None, txt_lens=None, num_bbs=None) -> "SequenceLayout":
        """From the collate's lists when given, else from attn_masks and gather_index (text positions are
        the real positions whose gather index points into the text block, i.e. is below max_txt_len)."""
        total = attention_mask.long().sum(1)
        if txt_lens is None:
            if gather_index is None or max_txt_len is None:  # single modality: everything real is one part
                txt = total if max_txt_len else torch.zeros_like(total)
            else:
                txt = ((gather_index < max_txt_len) & attention_mask.bool()).sum(1)
            txt_lens = txt.tolist()
        if num_bbs is None:
            num_bbs = (total - torch.as_tensor(txt_lens, device=total.device)).tolist()
        return cls(tuple(int(t) for t in txt_lens), tuple(int(n) for n in num_bbs), int(attention_mask.size(1)))

    @classmethod
    def from_batch(cls, batch: dict) -> "SequenceLayout":
        return cls.from_inputs(batch["attn_masks"], batch.get("gather_index"), batch["input_ids"].size(1),
                               batch.get("txt_lens"), batch.get("num_bbs"))

    def __len__(self) -> int:
        return len(self.txt_lens)

    def total_len(self, i: int) -> int:
        return self.txt_lens[i] + self.num_bbs[i]

    def cls_index(self, i: int) -> int:
        return 0

    def sep_index(self, i: int) -> int:
        return self.txt_lens[i] - 1

    def text_slice(self, i: int) -> slice:
        """[CLS] word-pieces [SEP]."""
        return slice(0, self.txt_lens[i])

    def word_slice(self, i: int) -> slice:
        return slice(1, self.txt_lens[i] - 1)

    def region_slice(self, i: int) -> slice:
        return slice(self.txt_lens[i], self.total_len(i))

    def pad_slice(self, i: int) -> slice:
        return slice(self.total_len(i), self.seq_len)

    def kinds(self, i: int) -> list[str]:
        """One of KINDS per position of example i."""
        tl, nbb = self.txt_lens[i], self.num_bbs[i]
        return (["cls"] + ["word"] * (tl - 2) + ["sep"] + ["region"] * nbb
                + ["pad"] * (self.seq_len - tl - nbb))

    def masks(self, device=None) -> dict[str, torch.Tensor]:
        """Bool [B, L] masks for each kind, plus 'text' (cls + word + sep) and 'real' (everything but pad)."""
        pos = torch.arange(self.seq_len, device=device).unsqueeze(0)
        tl = torch.tensor(self.txt_lens, device=device).unsqueeze(1)
        end = tl + torch.tensor(self.num_bbs, device=device).unsqueeze(1)
        out = {"cls": pos == 0, "sep": pos == tl - 1, "text": pos < tl, "region": (pos >= tl) & (pos < end),
               "real": pos < end}
        out["word"] = out["text"] & ~out["cls"] & ~out["sep"]
        out["pad"] = ~out["real"]
        return out


@dataclass(frozen=True)
class PackedTokens:
    """The real (non-padding) positions of a padded [B, L] batch, flattened: position-wise layers (the linear
    maps, LayerNorm, GELU, dropout) then run on [n_real, hidden] rows only and skip the padding's work; attention
    takes the padded [B, L] view back, or with `offsets` runs on the packed rows as well (variable-length
    attention). Real positions get the padded path's values, because padding never enters a real position's
    computation (it is masked out of attention)."""

    index: torch.Tensor  # [n_real] indices into the flattened B * L positions
    batch: int
    seq_len: int
    offsets: torch.Tensor | None = None  # [B + 1] row starts in the packed rows, for variable-length attention

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, with_offsets: bool = False) -> "PackedTokens":
        """`with_offsets` needs every row's real positions first (UNITER's packing: text, regions, padding)."""
        index = attention_mask.flatten().nonzero().squeeze(1)
        offsets = None
        if with_offsets:
            lengths = attention_mask.sum(1)
            prefix = torch.arange(attention_mask.size(1), device=lengths.device) < lengths[:, None]
            if not torch.equal(prefix, attention_mask.bool()):
                raise ValueError("varlen attention needs each row's real positions first and padding last")
            offsets = F.pad(lengths.cumsum(0), (1, 0))
        return cls(index, attention_mask.size(0), attention_mask.size(1), offsets)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [n_real, ...]"""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[n_real, ...] -> [B, L, ...] with zeros at the padding."""
        out = x.new_zeros((self.batch * self.seq_len,) + x.shape[1:]).index_copy(0, self.index, x)
        return out.view((self.batch, self.seq_len) + x.shape[1:])


@dataclass
class UniterOutput:
    last_hidden_state: torch.Tensor  # [B, L, hidden]
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + every layer, with output_hidden_states
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer [B, heads, L, L], with output_attentions
    layout: SequenceLayout | None = None  # with output_attentions


class UniterImageEmbeddings(nn.Module):
    """LayerNorm(img_linear(feat)) + LayerNorm(pos_linear(pos7)) + type embedding, then LayerNorm, dropout."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.img_linear = nn.Linear(config.img_dim, config.hidden_size)
        self.img_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pos_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pos_linear = nn.Linear(7, config.hidden_size)
        self.mask_embedding = nn.Embedding(2, config.img_dim, padding_idx=0)  # row 1 is added to masked regions
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Subtracted from every region feature before img_linear; zeros (the official embedding) unless the
        # trainer sets it (data.center_features). CNN features are all positive and share a large mean, so raw
        # features project to nearly one direction and every region starts with almost the same embedding.
        self.register_buffer("feat_mean", torch.zeros(config.img_dim))

    def forward(self, img_feat, img_pos_feat, type_embeddings, img_masks=None):
        img_feat = img_feat - self.feat_mean.to(img_feat.dtype)
        if img_masks is not None:
            # Official: img_feat + mask_embedding(img_masks) with row 0 zeroed; row 0 contributes nothing, so
            # only row 1 is read (and the parameter is never written in forward).
            img_feat = img_feat + img_masks.unsqueeze(-1).to(img_feat.dtype) * self.mask_embedding.weight[1]
        transformed_im = self.img_layer_norm(self.img_linear(img_feat))
        transformed_pos = self.pos_layer_norm(self.pos_linear(img_pos_feat))
        return self.dropout(self.LayerNorm(transformed_im + transformed_pos + type_embeddings))


class UniterSelfAttention(BertSelfAttention):
    """BERT's query/key/value with SDPA (default) or eager attention that returns its probabilities."""

    def __init__(self, config: UniterConfig):
        super().__init__(config)
        self.hook_pattern = HookPoint()

    def forward(self, hidden_states, attention_mask, output_attentions: bool = False,
                packed: PackedTokens | None = None, head_gate: torch.Tensor | None = None):
        """head_gate: [heads] or [B, heads] multipliers of the heads' outputs (padded path only)."""
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        if packed is not None and packed.offsets is not None:
            return self._varlen_attention(q, k, v, packed), None
        if packed is not None:  # hidden_states are [n_real, hidden]: attention needs the padded view
            q, k, v = packed.pad(q), packed.pad(k), packed.pad(v)
        b, n, _ = q.shape
        shape = (b, n, self.num_attention_heads, self.attention_head_size)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        attention_mask = attention_mask.to(q.dtype)
        if output_attentions:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling + attention_mask
            probs = self.hook_pattern(scores.softmax(dim=-1))
            context = torch.matmul(self.dropout(probs), v)
        else:
            probs = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scaling,
                                                     dropout_p=self.dropout.p if self.training else 0.0)
        if head_gate is not None:
            gate = head_gate.to(context.dtype)
            context = context * (gate.view(1, -1, 1, 1) if gate.dim() == 1 else gate.view(b, -1, 1, 1))
        context = context.transpose(1, 2).reshape(b, n, self.all_head_size)
        return (packed.unpad(context) if packed is not None else context), probs

    def _varlen_attention(self, q, k, v, packed: PackedTokens) -> torch.Tensor:
        """Attention on the packed [n_real, hidden] rows without re-padding: the rows become a jagged nested
        tensor [B, heads, (length), head_dim], which SDPA runs as variable-length flash attention on CUDA
        (with dropout, unlike torch's varlen_attn) and with its math kernel elsewhere. No mask is needed:
        each example attends to its own rows only."""
        heads = (q.size(0), self.num_attention_heads, self.attention_head_size)

        def jagged(t):
            return torch.nested.nested_tensor_from_jagged(t.view(heads), packed.offsets,
                                                          max_seqlen=packed.seq_len).transpose(1, 2)

        context = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), scale=self.scaling,
                                                 dropout_p=self.dropout.p if self.training else 0.0)
        return context.transpose(1, 2).values().reshape(q.size(0), self.all_head_size)


class UniterAttention(nn.Module):
    def __init__(self, config: UniterConfig):
        super().__init__()
        self.self = UniterSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, attention_mask, output_attentions: bool = False, packed=None, head_gate=None):
        context, probs = self.self(hidden_states, attention_mask, output_attentions, packed, head_gate)
        return self.output(context, hidden_states), probs


class UniterLayer(nn.Module):
    """Post-LN transformer block: LN(x + attn(x)), then LN(h + FFN(h)) with erf GELU."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.attention = UniterAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.hook_attn_out = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, hidden_states, attention_mask, output_attentions: bool = False, packed=None, head_gate=None):
        attention_output, probs = self.attention(hidden_states, attention_mask, output_attentions, packed,
                                                 head_gate)
        attention_output = self.hook_attn_out(attention_output)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return self.hook_out(layer_output), probs


class UniterEncoder(nn.Module):
    def __init__(self, config: UniterConfig):
        super().__init__()
        self.layer = nn.ModuleList([UniterLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask, output_attentions=False, output_hidden_states=False,
                packed: PackedTokens | None = None, head_mask: torch.Tensor | None = None, start: int = 0):
        """With `packed`, hidden_states are [n_real, hidden] rows (see PackedTokens) and stay so. `head_mask`:
        [layers, heads] or [B, layers, heads] gates; `start`: hidden_states are the input of that layer."""
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for index in range(start, len(self.layer)):
            gate = None if head_mask is None else head_mask[..., index, :]
            hidden_states, probs = self.layer[index](hidden_states, attention_mask, output_attentions, packed, gate)
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if output_attentions:
                all_attn.append(probs)
        return hidden_states, all_hidden, all_attn


class UniterPreTrainedModel(nn.Module):
    """Official initialisation (normal(0, initializer_range), LayerNorm 1/0, zero biases) and
    `save_pretrained` / `from_pretrained` (safetensors + config.json, see uniter_core.checkpoint)."""

    config_class = UniterConfig

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.config = config

    def _init_module(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()

    def init_weights(self) -> None:
        self.apply(self._init_module)

    def save_pretrained(self, folder) -> None:
        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder):
        return load_pretrained(cls, folder)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class UniterModel(UniterPreTrainedModel):
    def __init__(self, config: UniterConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.img_embeddings = UniterImageEmbeddings(config)
        self.encoder = UniterEncoder(config)
        self.pooler = BertPooler(config)
        self.hook_embeddings = HookPoint()
        # Run the encoder on real tokens only (PackedTokens) when neither attentions nor hidden states are asked
        # for. A speed switch, not part of the config: outputs are the same (padding rows come back as zeros).
        self.unpad_tokens = False
        # With unpad_tokens: attention on the packed rows too (variable-length flash attention on CUDA; on CPU
        # the nested-tensor math kernel is slower than the padded one). Same outputs, another speed switch.
        self.varlen_attention = False
        self.init_weights()

    def embed(self, input_ids, position_ids, img_feat, img_pos_feat, gather_index=None, img_masks=None,
              txt_type_ids=None, img_type_ids=None) -> torch.Tensor:
        """Packed input embeddings [B, L, hidden]; input_ids=None gives image only, img_feat=None text only."""
        if img_feat is not None:
            if img_type_ids is None:
                img_type_ids = torch.ones(img_feat.shape[:2], dtype=torch.long, device=img_feat.device)
            img_emb = self.img_embeddings(img_feat, img_pos_feat,
                                          self.embeddings.token_type_embeddings(img_type_ids), img_masks)
            if input_ids is None:
                return img_emb
        txt_emb = self.embeddings(input_ids=input_ids, token_type_ids=txt_type_ids, position_ids=position_ids)
        if img_feat is None:
            return txt_emb
        if gather_index is None:
            raise ValueError("text + image input needs gather_index (see uniter_core.data.dataset.collate)")
        index = gather_index.unsqueeze(-1).expand(-1, -1, txt_emb.size(-1))
        return torch.gather(torch.cat([txt_emb, img_emb], dim=1), dim=1, index=index)

    def forward(self, input_ids, position_ids, img_feat, img_pos_feat, attention_mask, gather_index=None,
                img_masks=None, txt_type_ids=None, img_type_ids=None, output_attentions: bool = False,
                output_hidden_states: bool = False, txt_lens=None, num_bbs=None,
                head_mask: torch.Tensor | None = None) -> UniterOutput:
        """Arguments in the official order. `output_attentions` switches every layer to eager attention and
        adds the layout; txt_lens / num_bbs (the collate's lists) spare deriving the layout from the masks.
        `head_mask`: head gates (module docstring)."""
        extended_mask = self.extended_mask(attention_mask)
        embeddings = self.hook_embeddings(self.embed(input_ids, position_ids, img_feat, img_pos_feat,
                                                     gather_index, img_masks, txt_type_ids, img_type_ids))
        packed = None
        if self.unpad_tokens and not (output_attentions or output_hidden_states or head_mask is not None):
            packed = PackedTokens.from_mask(attention_mask, with_offsets=self.varlen_attention)
            embeddings = packed.unpad(embeddings)
        hidden, all_hidden, all_attn = self.encoder(embeddings, extended_mask, output_attentions,
                                                    output_hidden_states, packed, head_mask)
        if packed is not None:
            hidden = packed.pad(hidden)
        layout = None
        if output_attentions:
            max_txt_len = input_ids.size(1) if input_ids is not None else 0
            if img_feat is None:
                gather_index = None
            layout = SequenceLayout.from_inputs(attention_mask, gather_index, max_txt_len, txt_lens, num_bbs)
        return UniterOutput(hidden, tuple(all_hidden) if all_hidden else None,
                            tuple(all_attn) if all_attn else None, layout)

    def extended_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The additive [B, 1, 1, L] attention mask of a [B, L] 0/1 mask (official: (1 - mask) * -10000)."""
        dtype = self.embeddings.word_embeddings.weight.dtype
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE

    def encode_from(self, layer: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                    head_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final states [B, L, hidden] from `hidden_states`, the input of encoder layer `layer` (the
        embeddings for 0, else hidden_states[layer] of output_hidden_states), through that layer and the rest:
        what forward() gives when the layers below are unchanged."""
        return self.encoder(hidden_states, self.extended_mask(attention_mask), head_mask=head_mask,
                            start=layer)[0]

    def forward_batch(self, batch: dict, **kwargs) -> UniterOutput:
        """forward() on a collated batch dict (official keys); applies batch['img_masks'] when present.
        A batch without img_feat (or without input_ids) runs text only (image only)."""
        return self(batch.get("input_ids"), batch.get("position_ids"), batch.get("img_feat"),
                    batch.get("img_pos_feat"), batch["attn_masks"], batch.get("gather_index"),
                    img_masks=batch.get("img_masks"),
                    txt_type_ids=batch.get("txt_type_ids"), img_type_ids=batch.get("img_type_ids"),
                    txt_lens=batch.get("txt_lens"), num_bbs=batch.get("num_bbs"), **kwargs)

    def run_with_cache(self, *args, names=None, **kwargs) -> tuple[UniterOutput, dict[str, torch.Tensor]]:
        """forward(*args, **kwargs) -- or forward_batch(batch, **kwargs) when given a batch dict -- recording
        every HookPoint's activation (detached), keyed by module name, e.g. 'encoder.layer.3.hook_out'.
        Attention patterns ('...attention.self.hook_pattern') need output_attentions=True. `names`: optional
        collection of names to keep."""
        cache: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in self.named_modules():
            if isinstance(module, HookPoint) and (names is None or name in names):
                handles.append(module.register_forward_hook(
                    lambda _module, _inputs, output, name=name: cache.__setitem__(name, output.detach())))
        unpad_tokens, self.unpad_tokens = self.unpad_tokens, False  # hooks see the padded [B, L, ...] view
        try:
            if len(args) == 1 and isinstance(args[0], dict):
                output = self.forward_batch(args[0], **kwargs)
            else:
                output = self(*args, **kwargs)
        finally:
            self.unpad_tokens = unpad_tokens
            for handle in handles:
                handle.remove()
        return output, cache
