"""Dataset, collate (official batch keys, gather index) and the token-bucket sampler."""
import pytest
import torch

from uniter_core.data.dataset import ImageTextDataset, TokenBucketSampler, collate, get_gather_index, pos7


def test_gather_index_hand_worked():
    # two examples: text lengths 3 and 2, regions 2 and 3; text padded to 3, regions padded to 3.
    # concatenated embedding rows: [t0 t1 t2 | r0 r1 r2]  -> indices 0..5
    # example 0: t0 t1 t2 r0 r1        -> 0 1 2 3 4
    # example 1: t0 t1 r0 r1 r2        -> 0 1 3 4 5
    index = get_gather_index([3, 2], [2, 3], max_txt_len=3, out_size=5)
    assert index.tolist() == [[0, 1, 2, 3, 4], [0, 1, 3, 4, 5]]


def test_pos7_adds_area():
    bb = torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.4, 0.4]])
    assert torch.allclose(pos7(bb), torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.4, 0.4, 0.16]]))


def _example(n_words, n_regions, dim=4):
    return {"input_ids": torch.arange(1, n_words + 1), "img_feat": torch.randn(n_regions, dim),
            "norm_bb": torch.rand(n_regions, 6), "soft_labels": torch.rand(n_regions, 3),
            "image_id": f"i{n_regions}", "text_id": f"t{n_words}", "alignment": []}


def test_collate_builds_the_official_batch():
    batch = collate([_example(4, 2), _example(2, 3)])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [1, 2, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3]]
    assert batch["img_feat"].shape == (2, 3, 4) and batch["img_pos_feat"].shape == (2, 3, 7)
    assert batch["img_feat"][0, 2].abs().sum() == 0  # padded region
    assert batch["attn_masks"].tolist() == [[1] * 6, [1] * 5 + [0]]
    # packed sequence of example 1: its 2 words then its 3 regions (rows 4, 5, 6 of the concatenation)
    assert batch["gather_index"][1].tolist() == [0, 1, 4, 5, 6, 5]
    assert batch["txt_lens"] == [4, 2] and batch["num_bbs"] == [2, 3]


def test_dataset_items_from_the_corpus(tiny_corpus):
    dataset = ImageTextDataset(tiny_corpus, "train")
    assert len(dataset) == 30 and dataset.img_dim == 1280
    item = dataset[0]
    cls, sep = dataset.special_tokens["[CLS]"], dataset.special_tokens["[SEP]"]
    assert item["input_ids"][0] == cls and item["input_ids"][-1] == sep
    assert item["img_feat"].dtype == torch.float32 and item["img_feat"].shape[1] == 1280
    assert item["alignment"] and all(1 <= p < len(item["input_ids"]) - 1 for p, _ in item["alignment"])
    assert dataset.lengths()[0] == len(item["input_ids"]) + len(item["img_feat"])
    batch = collate([dataset[i] for i in range(4)])
    assert batch["attn_masks"].sum(1).tolist() == [t + n for t, n in zip(batch["txt_lens"], batch["num_bbs"])]


def test_dataset_reports_a_missing_split(tiny_corpus):
    with pytest.raises(FileNotFoundError, match="nosuch.jsonl"):
        ImageTextDataset(tiny_corpus, "nosuch")


def test_token_bucket_sampler_respects_the_budget_and_covers_everything():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (500,), generator=g).tolist()
    sampler = TokenBucketSampler(lengths, max_tokens=600, bucket_size=100, size_multiple=4, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 600
    assert batches == list(TokenBucketSampler(lengths, 600, 100, 4, seed=3))  # same seed, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(1, start_batch=2)
    assert list(sampler) == sampler.batches(1)[2:]


def test_token_bucket_sampler_shards_ranks():
    lengths = [10 + (i % 7) for i in range(203)]
    shards = [TokenBucketSampler(lengths, 120, 64, 2, seed=1, rank=r, world_size=3).batches(0) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBucketSampler([100], max_tokens=50)
