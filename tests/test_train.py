"""The trainer: runs from a config, resumes exactly after SIGKILL, refuses bad configs, runs under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uniter_core import train
from uniter_core.data.dataset import ImageTextDataset
from uniter_core.io import read_jsonl
from uniter_core.runs import build_model, initial_model
from uniter_core.train_config import ConfigError, config_from_dict, load_config

from factories import REPO, final_weights, losses, tiny_overrides

def _command(out: Path, overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "uniter_core.train", "--out", str(out), "--no-eval", *extra, *overrides]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_corpus, tmp_path):
    overrides = tiny_overrides(tiny_corpus, steps=10)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = tmp_path / "straight"
    subprocess.run(_command(straight, overrides), check=True, env=env, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, overrides), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and pointer.read_text().strip() >= "step_00000004":
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "checkpoints" / "step_00000010").exists()

    subprocess.run(_command(killed, overrides, "--resume"), check=True, env=env, cwd=REPO, capture_output=True)
    assert losses(killed) == losses(straight)
    assert sorted(losses(killed)) == list(range(1, 11))
    reference = final_weights(straight)
    resumed = final_weights(killed)
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name
    kept = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert kept == ["step_00000008", "step_00000010"]


def test_training_logs_every_task_and_evaluates(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), *tiny_overrides(tiny_corpus, steps=12),
                       "tasks.mix={itm: 1, mlm: 1, mrfr: 1, mrc: 1, mrckl: 1}", "data.test_split=val",
                       "data.center_features=true"]) == 0
    records = read_jsonl(out / "metrics.jsonl")
    tasks = {r["task"] for r in records if "task" in r}
    assert tasks == {"itm", "mlm", "mrfr", "mrc", "mrckl"}
    for record in records:
        if "loss" in record:
            assert record["tokens"] > 0 and record["lr"] > 0 and record["examples_per_s"] > 0
    itm = [r for r in records if r.get("task") == "itm"]
    assert all("loss_itm_ot" in r for r in itm)  # WRA is part of ITM
    evaluation = records[-1]["eval"]["val"]
    for key in ("t2i_r1", "i2t_r10", "mlm_accuracy", "mrckl_kl", "alignment_accuracy", "alignment_chance"):
        assert key in evaluation
    assert 0 < evaluation["alignment_chance"] < 1
    assert json.loads((out / "train_config.json").read_text())["run"]["num_steps"] == 12
    # data.center_features: the training split's mean region feature, saved with the model
    train_set = ImageTextDataset(tiny_corpus, "train")
    regions = np.concatenate([train_set.store[i]["features"] for i in train_set.image_ids])
    mean = torch.from_numpy(regions.astype(np.float64).mean(axis=0)).float()
    torch.testing.assert_close(final_weights(out)["uniter.img_embeddings.feat_mean"], mean)
    config = config_from_dict(json.loads((out / "train_config.json").read_text()), "train_config.json")
    baseline = build_model(config)  # what `evaluate --which baseline` scores: the run's initialisation
    torch.testing.assert_close(baseline.uniter.img_embeddings.feat_mean, mean)


def test_the_baseline_is_the_runs_own_initialisation(tiny_corpus, tmp_path):
    """evaluate --which baseline and collapse --checkpoint init score what the trainer starts from: the same
    seed and corpus give the same weights, the random image side included (and another seed does not)."""
    config = load_config(None, tiny_overrides(tiny_corpus) + ["data.center_features=true", "run.seed=5"])
    trainer = train.Trainer(config, tmp_path / "run", resume=False)
    baseline = initial_model(config)
    started = trainer.model.state_dict()
    assert started.keys() == baseline.state_dict().keys()
    for name, tensor in baseline.state_dict().items():
        assert torch.equal(tensor, started[name].cpu()), name
    config.run.seed = 6
    other = initial_model(config).state_dict()
    assert not torch.equal(other["uniter.img_embeddings.img_linear.weight"],
                           started["uniter.img_embeddings.img_linear.weight"])


def test_the_wra_weight_follows_its_schedule(tiny_corpus, tmp_path):
    """tasks.itm_ot_schedule: the weight starts at itm_ot_lambda, moves linearly between the points and stays at
    the last one; each ITM step logs it and back-propagates cross-entropy + weight * WRA."""
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--no-eval", *tiny_overrides(tiny_corpus, steps=10),
                       "tasks.mix={itm: 1}", "tasks.itm_ot_lambda=2.0",
                       "tasks.itm_ot_schedule=[[4, 1.0], [8, 0e0]]"]) == 0  # 0e0: YAML reads it as text
    records = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("task") == "itm"]
    assert [r["step"] for r in records] == list(range(1, 11))
    expected = [2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]  # step k runs with the weight at index k-1
    assert [r["wra_weight"] for r in records] == pytest.approx(expected)
    for record in records:
        assert record["loss"] == pytest.approx(record["loss_itm_xe"] + record["wra_weight"] * record["loss_itm_ot"],
                                               rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("override, message", [
    ("tasks.itm_ot_schedule=[[0, 1.0]]", "point 1 [0, 1.0] needs a whole step above 0"),
    ("tasks.itm_ot_schedule=[[50, 1.0], [20, 0.1]]", "point 2 [20, 0.1] needs a whole step above 50"),
    ("tasks.itm_ot_schedule=[[50, -1]]", "point 1 [50, -1] needs a weight that is a number >= 0"),
    ("tasks.itm_ot_schedule=[50, 1.0]", "must be a list of [step, weight] pairs; point 1 is 50"),
    ("optim.learning_rate=1", "unknown key 'optim.learning_rate'"),
    ("data.corpus=/nonexistent/corpus", "not a built corpus"),
    ("model.overrides={img_dim: 2048}", "dimension 1280 but the model expects img_dim 2048"),
    ("tasks.mix={itm: 1, vqa: 1}", "unknown tasks"),
    ("run.threads=-1", "run.threads must be >= 0"),
    ("optim.image_lr_scale=0", "optim.image_lr_scale must be > 0"),
    (("run.varlen_attention=true", "run.unpad=false"), "run.varlen_attention needs run.unpad"),
])
def test_bad_config_fails_before_any_work(tiny_corpus, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    overrides = [override] if isinstance(override, str) else list(override)
    assert train.main(["--out", str(out), *tiny_overrides(tiny_corpus), *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


def test_yaml_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  num_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'run.num_stepz'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    for shipped in (REPO / "configs").glob("*.yaml"):
        load_config(shipped)


def test_two_cpu_processes_stay_in_sync(tiny_corpus, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "uniter_core.train", "--out", str(out), "--no-eval",
               *tiny_overrides(tiny_corpus, steps=4, save_every=4), "batch.max_tokens=200", "run.sync_check=true"]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["params_in_sync"] for r in records)


def test_weight_decay_spares_biases_and_every_layer_norm():
    from uniter_core.config import UniterConfig
    from uniter_core.optim import build_optimizer, build_scheduler, linear_warmup_decay
    from uniter_core.pretrain import UniterForPretraining

    model = UniterForPretraining(UniterConfig.from_preset("uniter-mini", num_hidden_layers=1, hidden_size=32,
                                                          num_attention_heads=4, intermediate_size=64))
    decay, no_decay = build_optimizer(model, lr=1e-3).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "region_classifier.net.2.weight" in {names[id(p)] for p in no_decay["params"]}
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    total = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == total  # tied weights counted once
    factor = linear_warmup_decay(10, 110)
    assert factor(0) == 0.1 and factor(9) == 1.0 and factor(60) == 0.5 and factor(110) == 0.0

    # optim.image_lr_scale: the image embedder gets its own groups at the scaled rate, the schedule scales both
    groups = build_optimizer(model, lr=1e-3, image_lr_scale=10.0).param_groups
    assert len(groups) == 4 and len({id(p) for g in groups for p in g["params"]}) == total
    image = {id(p) for n, p in model.named_parameters() if n.startswith("uniter.img_embeddings.")}
    for group in groups:
        inside = {id(p) in image for p in group["params"]}
        assert len(inside) == 1 and group["lr"] == (1e-2 if inside == {True} else 1e-3)
    scheduler = build_scheduler(build_optimizer(model, lr=1e-3, image_lr_scale=10.0), 10, 110)
    assert [g["lr"] for g in scheduler.optimizer.param_groups] == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])


def test_unpadded_and_compiled_training_follow_the_plain_run(tiny_corpus, tmp_path):
    """run.unpad (the default), run.varlen_attention and run.compile change speed, not the computation: without
    dropout, the per-step losses of four short runs agree."""
    common = [*tiny_overrides(tiny_corpus, steps=4, save_every=4), "tasks.mix={itm: 1, mlm: 1, mrfr: 1}",
              "model.overrides={num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 4, "
              "intermediate_size: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"]
    runs = {}
    for name, switches in {"plain": ["run.unpad=false", "run.threads=1"], "unpadded": ["run.unpad=true"],
                           "compiled": ["run.unpad=true", "run.compile=true"],
                           "varlen": ["run.unpad=true", "run.varlen_attention=true"]}.items():
        assert train.main(["--out", str(tmp_path / name), "--no-eval", *common, *switches]) == 0
        runs[name] = losses(tmp_path / name)
    assert len(runs["plain"]) == 4
    for name in ("unpadded", "compiled", "varlen"):
        for step, (task, loss) in runs["plain"].items():
            assert runs[name][step][0] == task
            assert runs[name][step][1] == pytest.approx(loss, rel=1e-4, abs=1e-5), (name, step)
