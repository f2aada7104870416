"""Masking statistics, conditional masking, ITM negatives, task collates and the task sampler."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from factories import make_examples, tiny_config
from uniter_core.data.dataset import collate
from uniter_core.masking import example_generator, mask_regions, mask_text
from uniter_core.pretrain import UniterForPretraining, task_loss
from uniter_core.tasks import TASKS, TaskSampler, build_task_dataset


class InMemoryBase:
    """The base-dataset interface the task wrappers rely on: items, image_ids, get_image, lengths."""

    def __init__(self, config, n_images=6, captions_per_image=3):
        self.images = {f"img{i}": e for i, e in enumerate(make_examples(
            config, txt_lens=[4] * n_images, num_bbs=[3 + i % 4 for i in range(n_images)]))}
        self.image_ids = list(self.images)
        captions = make_examples(config, txt_lens=[4 + i % 7 for i in range(n_images * captions_per_image)],
                                 num_bbs=[1] * n_images * captions_per_image, seed=1)
        self.items = [{"input_ids": c["input_ids"], "image_id": self.image_ids[i % n_images], "text_id": f"t{i}"}
                      for i, c in enumerate(captions)]

    def get_image(self, image_id):
        return {k: self.images[image_id][k] for k in ("img_feat", "norm_bb", "soft_labels")}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        return {**item, **self.get_image(item["image_id"])}

    def lengths(self):
        return [len(it["input_ids"]) + len(self.images[it["image_id"]]["img_feat"]) for it in self.items]


def test_text_masking_statistics_follow_80_10_10():
    config = tiny_config(vocab_size=1000, first_word_piece_id=100)
    counts = Counter()
    for i in range(3000):
        ids = torch.cat([torch.tensor([1]), torch.randint(100, 1000, (20,)), torch.tensor([2])])
        masked, labels = mask_text(ids, example_generator(0, 0, i, "mlm"), config.mask_token_id, (100, 1000))
        assert masked[0] == 1 and masked[-1] == 2 and labels[0] == labels[-1] == -1
        chosen = labels != -1
        assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
        counts["pieces"] += 20
        counts["chosen"] += int(chosen.sum())
        counts["mask"] += int((masked[chosen] == config.mask_token_id).sum())
        counts["kept"] += int((masked[chosen] == ids[chosen]).sum())
        counts["random"] += int(((masked[chosen] != ids[chosen]) & (masked[chosen] != 3)).sum())
        assert torch.all((masked[1:-1] == 3) | ((masked[1:-1] >= 100) & (masked[1:-1] < 1000)))
    assert abs(counts["chosen"] / counts["pieces"] - 0.15) < 0.01
    for kind, share in (("mask", 0.8), ("random", 0.1), ("kept", 0.1)):
        assert abs(counts[kind] / counts["chosen"] - share) < 0.02, kind


def test_at_least_one_piece_and_one_region_are_masked():
    for i in range(500):
        g = example_generator(3, 1, i, "mlm")
        masked, labels = mask_text(torch.tensor([1, 50, 2]), g, 3, (5, 100))
        assert labels.tolist() == [-1, 50, -1]  # the only piece is always a target
        assert masked[1] == 3 or 5 <= masked[1] < 100
        regions = mask_regions(2, example_generator(3, 1, i, "mrm"))
        assert regions.sum() >= 1
    shares = torch.stack([mask_regions(40, example_generator(0, 0, i, "mrm")) for i in range(1000)]).float()
    assert abs(shares.mean().item() - 0.15) < 0.01


def test_masks_depend_only_on_seed_epoch_and_index():
    base = InMemoryBase(tiny_config())
    dataset, _ = build_task_dataset("mlm", base, tiny_config(), seed=5)
    first = [dataset[i]["input_ids"] for i in range(len(dataset))]
    assert all(torch.equal(dataset[i]["input_ids"], first[i]) for i in reversed(range(len(dataset))))
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i]["input_ids"], first[i]) for i in range(len(dataset)))
    other, _ = build_task_dataset("mlm", base, tiny_config(), seed=6)
    assert any(not torch.equal(other[i]["input_ids"], first[i]) for i in range(len(dataset)))


def test_each_task_masks_one_modality_only():
    config = tiny_config()
    base = InMemoryBase(config)
    originals = [base[i] for i in range(8)]
    mlm_set, mlm_collate = build_task_dataset("mlm", base, config)
    batch = mlm_collate([mlm_set[i] for i in range(8)])
    assert "img_masks" not in batch and (batch["txt_labels"] != -1).sum(1).min() >= 1
    assert torch.equal(batch["img_feat"], collate(originals)["img_feat"])

    mrm_set, mrm_collate = build_task_dataset("mrfr", base, config)
    examples = [mrm_set[i] for i in range(8)]
    batch = mrm_collate(examples)
    plain = mrm_collate([{**o, "img_mask": torch.zeros(len(o["img_feat"]), dtype=torch.bool)} for o in originals])
    assert torch.equal(batch["input_ids"], plain["input_ids"]) and "txt_labels" not in batch
    masks = batch["img_masks"]
    assert masks.sum(1).min() >= 1 and masks.sum() == batch["img_mask_tgt"].sum() == len(batch["feat_targets"])
    for b, tl in enumerate(batch["txt_lens"]):
        k = batch["num_bbs"][b]
        assert torch.equal(batch["img_mask_tgt"][b, tl:tl + k], masks[b, :k])
        assert not batch["img_mask_tgt"][b, :tl].any() and not batch["img_mask_tgt"][b, tl + k:].any()
    torch.testing.assert_close(batch["feat_targets"], plain["img_feat"][masks])
    torch.testing.assert_close(batch["label_targets"], torch.cat([o["soft_labels"] for o in originals])[
        torch.cat([e["img_mask"] for e in examples])])
    assert torch.all(batch["img_feat"][masks] == 0)
    assert torch.equal(batch["img_feat"][~masks], plain["img_feat"][~masks])

    itm_set, itm_collate = build_task_dataset("itm", base, config)
    batch = itm_collate([itm_set[i] for i in range(8)])
    assert {"txt_labels", "img_masks"}.isdisjoint(batch)
    assert torch.equal(batch["input_ids"], collate(originals)["input_ids"])


def test_itm_negatives_replace_the_image_never_with_the_same_one():
    config = tiny_config()
    base = InMemoryBase(config)
    dataset, collate = build_task_dataset("itm", base, config, seed=1)
    targets = []
    for epoch in range(40):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            example = dataset[i]
            true_image = base.items[i]["image_id"]
            targets.append(example["target"])
            if example["target"] == 1:
                assert example["image_id"] == true_image
            else:
                assert example["image_id"] != true_image
            torch.testing.assert_close(example["img_feat"], base.get_image(example["image_id"])["img_feat"])
    assert abs(sum(targets) / len(targets) - 0.5) < 0.05
    batch = collate([dataset[i] for i in range(5)])
    assert batch["targets"].dtype == torch.long and batch["targets"].shape == (5,)
    assert batch["txt_pad"].dtype == torch.bool and batch["txt_pad"].shape == batch["input_ids"].shape
    assert torch.equal(~batch["txt_pad"], batch["input_ids"] != 0)
    assert torch.equal((~batch["img_pad"]).sum(1), torch.tensor(batch["num_bbs"]))
    no_ot = build_task_dataset("itm", base, tiny_config(itm_ot_lambda=0.0))[1]
    assert "txt_pad" not in no_ot([dataset[0]])


def test_task_sampler_is_deterministic_resumable_and_follows_the_mix():
    a, b = TaskSampler(seed=3), TaskSampler({"mrckl": 2, "mrfr": 2, "mlm": 4, "itm": 3}, seed=3)
    sequence = [next(a) for _ in range(20000)]
    assert sequence == [next(b) for _ in range(20000)]  # dict order does not matter
    counts = Counter(sequence)
    for task, share in {"itm": 3 / 11, "mlm": 4 / 11, "mrfr": 2 / 11, "mrckl": 2 / 11}.items():
        assert abs(counts[task] / 20000 - share) < 0.015, task
    resumed = TaskSampler(seed=3)
    state = TaskSampler(seed=3)
    for _ in range(777):
        next(state)
    resumed.load_state_dict(state.state_dict())
    assert [next(resumed) for _ in range(50)] == sequence[777:827]
    assert [TaskSampler(seed=3).task_at(s) for s in range(10)] == sequence[:10]
    assert [TaskSampler(seed=4).task_at(s) for s in range(30)] != sequence[:30]
    only_mlm = TaskSampler({"mlm": 1, "itm": 0})
    assert {next(only_mlm) for _ in range(100)} == {"mlm"}
    with pytest.raises(ValueError, match="known tasks"):
        TaskSampler({"wra": 1})
    with pytest.raises(ValueError, match="seed"):
        TaskSampler(seed=1).load_state_dict(state.state_dict())


@pytest.mark.parametrize("task", TASKS)
def test_every_task_runs_end_to_end_on_the_embedded_corpus(task, tiny_corpus):
    from uniter_core.data.dataset import ImageTextDataset
    base = ImageTextDataset(tiny_corpus, "train")
    config = tiny_config(vocab_size=base.vocab_size, img_dim=base.img_dim, num_region_classes=1000,
                         region_class_has_background=False, cls_token_id=101, sep_token_id=102, mask_token_id=103,
                         first_word_piece_id=999, max_position_embeddings=128)
    dataset, collate = build_task_dataset(task, base, config, seed=0)
    batch = collate([dataset[i] for i in range(min(6, len(dataset)))])
    model = UniterForPretraining(config)
    loss, parts = task_loss(task, model(batch, task), config.itm_ot_lambda)
    assert torch.isfinite(loss) and parts
    loss.backward()
