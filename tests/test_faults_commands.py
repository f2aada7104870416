"""Fault injection over the commands: bad outputs, damaged checkpoints, non-finite numbers, bad configs (signals
and a full disk: test_faults_signals.py).

Each case checks the contract of README "Errors and recovery": the exit code, a one-line message naming the file
or argument, no traceback, user files intact, nothing half-written, and that a rerun or resume then succeeds.
The cases call main() and read stderr, which is what the command prints.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import assert_failed_cleanly, call, leftovers, tree_digest
from factories import CORPUS_ARGS, tiny_overrides

from analyses import classify_maps, export_stats
from analyses.mapfile import MapRecord, write_maps
from uniter_core import evaluate, train, train_state
from uniter_core.data import build_corpus, extract, official_db
from uniter_core.data.official_db import write_official_image_db, write_official_text_db
from uniter_core.train_state import CheckpointManager



def user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.txt").write_text("keep")
    return folder


# ------------------------------------------------------------------------------------------------ outputs
def test_build_corpus_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    folder = user_folder(tmp_path)
    before = tree_digest(folder)
    result = call(build_corpus.main, ["--out", folder, *CORPUS_ARGS], capsys)
    assert_failed_cleanly(result, 2, str(folder), "a.txt")
    assert tree_digest(folder) == before and not (tmp_path / "mine.partial").exists()
    result = call(build_corpus.main, ["--out", folder, *CORPUS_ARGS, "--force"], capsys)  # --force: not yours
    assert_failed_cleanly(result, 2, str(folder))
    assert tree_digest(folder) == before


def test_extract_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from factories import write_csv
    folder = user_folder(tmp_path)
    before = tree_digest(folder)
    (tmp_path / "images").mkdir()
    result = call(extract.main, ["--images", tmp_path / "images", "--captions",
                                 write_csv(tmp_path / "c.csv", [("x.png", "a cat")]), "--out", folder], capsys)
    assert_failed_cleanly(result, 2, str(folder), "a.txt")
    assert tree_digest(folder) == before


def _official_dbs(tmp_path, nan=False):
    rng = np.random.default_rng(0)
    items = {}
    for name in ("a.npz", "b.npz"):
        n = 12
        features = rng.normal(size=(n, 2048)).astype(np.float32)
        if nan and name == "b.npz":
            features[3, 5] = np.nan
        items[name] = {"features": features, "norm_bb": rng.uniform(0, 1, (n, 6)).astype(np.float32),
                       "conf": np.full(n, 0.5, np.float32), "soft_labels": np.full((n, 1601), 1 / 1601, np.float32)}
    write_official_image_db(tmp_path / "img", items)
    meta = {"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [999, 28996]}
    write_official_text_db(tmp_path / "txt.db", {"0": {"input_ids": [1000, 1001], "img_fname": "a.npz"},
                                                 "1": {"input_ids": [1002], "img_fname": "b.npz"}}, meta)
    return ["--img-db", tmp_path / "img", "--txt-db", tmp_path / "txt.db"]


def test_official_db_refuses_a_folder_it_did_not_write_and_converts_elsewhere(tmp_path, capsys):
    folder = user_folder(tmp_path)
    before = tree_digest(folder)
    dbs = _official_dbs(tmp_path)
    assert_failed_cleanly(call(official_db.main, [*dbs, "--out", folder], capsys), 2, str(folder))
    assert tree_digest(folder) == before
    assert call(official_db.main, [*dbs, "--out", tmp_path / "corpus"], capsys).code == 0


def test_official_db_refuses_nan_features_naming_the_db(tmp_path, capsys):
    result = call(official_db.main, [*_official_dbs(tmp_path, nan=True), "--out", tmp_path / "corpus"], capsys)
    assert_failed_cleanly(result, 2, "b.npz", str(tmp_path / "img"), "NaN")
    assert not (tmp_path / "corpus").exists()


def test_a_foreign_partial_folder_is_refused(tmp_path, capsys):
    partial = tmp_path / "corpus.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    result = call(build_corpus.main, ["--out", tmp_path / "corpus", *CORPUS_ARGS], capsys)
    assert_failed_cleanly(result, 2, str(partial))
    assert (partial / "notes.txt").read_text() == "mine"


def test_force_replaces_only_the_commands_own_output(tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    (corpus / "notes.txt").write_text("mine")
    before = tree_digest(corpus)
    result = call(build_corpus.main, ["--out", corpus, *CORPUS_ARGS, "--force"], capsys)
    assert_failed_cleanly(result, 2, "notes.txt", "--force")
    assert tree_digest(corpus) == before


@pytest.mark.parametrize("command", ["build_corpus", "extract", "official_db", "train", "export_stats",
                                     "classify_maps"])
def test_an_output_under_a_plain_file(command, trained_run, tmp_path, capsys):
    from factories import write_csv
    plain = tmp_path / "f"
    plain.write_text("a file")
    out = plain / "sub"
    maps = tmp_path / "maps.npz"
    write_maps(maps, [MapRecord(0, np.full((5, 5), 0.2, np.float32), 3, 2)])
    (tmp_path / "images").mkdir()
    mains = {"build_corpus": (build_corpus.main, ["--out", out, *CORPUS_ARGS]),
             "extract": (extract.main, ["--images", tmp_path / "images", "--captions",
                                        write_csv(tmp_path / "c.csv", [("x.png", "a")]), "--out", out]),
             "official_db": (official_db.main, [*_official_dbs(tmp_path), "--out", out]),
             "train": (train.main, ["--out", out, *tiny_overrides(tmp_path, steps=1)]),
             "export_stats": (export_stats.main, ["--run", trained_run, "--out", out, "--no-progress"]),
             "classify_maps": (classify_maps.main, ["--maps", maps, "--out", out / "labels.csv"])}
    main, argv = mains[command]
    result = call(main, argv, capsys)
    assert_failed_cleanly(result, 2, str(plain))  # bad input, as the README says
    assert plain.read_text() == "a file"


# ------------------------------------------------------------------------------------------------ training
def test_nan_features_stop_training_before_any_step(tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    shard = corpus / "img_db" / "shard_00001.features.npy"
    features = np.load(shard)
    features[2:4] = np.nan
    np.save(shard, features)
    index = json.loads((corpus / "img_db" / "shard_00001.json").read_text())
    bad = next(r["image_id"] for r in index if r["start"] <= 3 < r["start"] + r["n_regions"])
    result = call(train.main, ["--out", tmp_path / "run", "--no-eval", *tiny_overrides(corpus, steps=3)], capsys)
    assert_failed_cleanly(result, 2, str(shard), bad)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_diverging_loss_stops_at_its_step_without_a_checkpoint(tiny_corpus, tmp_path, capsys, monkeypatch):
    from uniter_core import pretrain
    real = pretrain.task_loss
    monkeypatch.setattr(train, "task_loss", lambda task, out, lam: (real(task, out, lam)[0] * float("nan"),
                                                                     real(task, out, lam)[1]))
    result = call(train.main, ["--out", tmp_path / "run", "--no-eval", *tiny_overrides(tiny_corpus, steps=4)], capsys)
    assert_failed_cleanly(result, 1, "step 1", "task", "nan")
    assert not CheckpointManager(tmp_path / "run").steps()


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "state.pt", "model/config.json"])
def test_resume_skips_a_damaged_newest_checkpoint(run_copy, tiny_corpus, capsys, damaged):
    newest = run_copy / "checkpoints" / "step_00000004"
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval",
                               *tiny_overrides(tiny_corpus, steps=6, save_every=2, keep_last=2)], capsys)
    assert result.code == 0, result.stderr
    assert "skipping checkpoint" in result.stderr and "step_00000004" in result.stderr
    assert "continuing from step_00000002" in result.stderr
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost steps were recomputed, none twice
    assert not leftovers(run_copy)


def test_resume_with_every_checkpoint_damaged_is_refused(run_copy, tiny_corpus, capsys):
    for checkpoint in CheckpointManager(run_copy).steps():
        (checkpoint / "model" / "model.safetensors").write_bytes(b"garbage")
    before = tree_digest(run_copy)
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval", *tiny_overrides(tiny_corpus, steps=6)],
                  capsys)
    assert_failed_cleanly(result, 2, str(run_copy / "checkpoints"), "--force")
    assert tree_digest(run_copy) == before  # nothing restarted, nothing deleted


def test_resume_finds_checkpoints_without_the_latest_pointer_and_repairs_metrics(run_copy, tiny_corpus, capsys):
    (run_copy / "checkpoints" / "latest").unlink()
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "task": "ml')  # a line cut short by a kill
    killed = [run_copy / ".metrics.jsonl.k1ll3d_x.tmp", run_copy / "checkpoints" / ".latest.k1ll3d_x.tmp"]
    users = [run_copy / ".notes.abcdefgh.tmp", run_copy / ".notes.tmp"]  # not temporaries of the run's files
    for path in killed + users:
        path.write_text("half")
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval",
                               *tiny_overrides(tiny_corpus, steps=6, save_every=2, keep_last=2)], capsys)
    assert result.code == 0, result.stderr
    assert "damaged line" in result.stderr
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (run_copy / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert not any(p.exists() for p in killed) and all(p.read_text() == "half" for p in users)


def test_a_fresh_run_into_a_run_folder_is_refused_and_force_keeps_user_files(run_copy, tiny_corpus, capsys):
    before = tree_digest(run_copy)
    argv = ["--out", run_copy, "--no-eval", *tiny_overrides(tiny_corpus, steps=2, save_every=2)]
    result = call(train.main, argv, capsys)
    assert_failed_cleanly(result, 2, str(run_copy), "--resume", "--force", "step_00000004")
    assert tree_digest(run_copy) == before
    (run_copy / "notes.txt").write_text("mine")
    result = call(train.main, [*argv, "--force"], capsys)
    assert result.code == 0, result.stderr
    assert [p.name for p in CheckpointManager(run_copy).steps()] == ["step_00000002"]
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert not (run_copy / "eval_test.json").exists()  # the old run's evaluation went with it


def test_a_later_checkpoint_is_never_pruned_by_an_earlier_step(tmp_path):
    import torch
    from uniter_core.config import UniterConfig
    from uniter_core.pretrain import UniterForPretraining
    from uniter_core.optim import build_optimizer, build_scheduler
    model = UniterForPretraining(UniterConfig.from_preset("uniter-mini", num_hidden_layers=1, hidden_size=32,
                                                          num_attention_heads=4, intermediate_size=64))
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.98), 0.0)
    scheduler = build_scheduler(optimizer, 1, 10)
    manager = CheckpointManager(tmp_path, keep_last=1)
    for step in (3, 6, 2):
        manager.save(step, model, optimizer, scheduler, {})
    assert [p.name for p in manager.steps()] == ["step_00000002", "step_00000006"]
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(Exception, match="NaN"):
        manager.save(7, model, optimizer, scheduler, {})
    assert [p.name for p in manager.steps()] == ["step_00000002", "step_00000006"] and not leftovers(tmp_path)


@pytest.mark.parametrize("override, key", [
    ("batch.size_multiple=0", "batch.size_multiple"), ("data.max_text_len=0", "data.max_text_len"),
    ("tasks.mix={itm: abc}", "tasks.mix.itm"), ("optim.lr=-1e-3", "optim.lr"), ("run.keep_last=0", "run.keep_last"),
    ("optim.betas=[0.9, 1.5]", "optim.betas"), ("model.overrides={hidden_size: 30}", "model.overrides"),
    ("model.overrides={hidden_size: x}", "hidden_size 'x'"),
    ("run.num_stepz=3", "run.num_stepz")])
def test_degenerate_config_values_name_their_key(tiny_corpus, tmp_path, capsys, override, key):
    result = call(train.main, ["--out", tmp_path / "run", *tiny_overrides(tiny_corpus), override], capsys)
    assert_failed_cleanly(result, 2, key)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_refuses_zero_candidates_and_keeps_the_results(run_copy, capsys):
    before = (run_copy / "eval_test.json").read_bytes()
    assert_failed_cleanly(call(evaluate.main, ["--run", run_copy, "--candidates", "0"], capsys), 2, "--candidates")
    assert (run_copy / "eval_test.json").read_bytes() == before


def test_evaluate_uses_the_newest_intact_checkpoint(run_copy, capsys):
    (run_copy / "checkpoints" / "step_00000004" / "model" / "model.safetensors").write_bytes(b"")
    result = call(evaluate.main, ["--run", run_copy, "--split", "val", "--candidates", "3"], capsys)
    assert result.code == 0 and "skipping checkpoint" in result.stderr, result.stderr
    assert json.loads((run_copy / "eval_val.json").read_text())["checkpoint"] == "step_00000002"


@pytest.mark.parametrize("argv, named", [(["--split", "nope"], "nope.jsonl"), (["--run", "/nonexistent"], "/nonexistent")])
def test_evaluate_bad_arguments(run_copy, capsys, argv, named):
    argv = ["--run", run_copy, *argv] if argv[0] != "--run" else argv
    assert_failed_cleanly(call(evaluate.main, argv, capsys), 2, named)


def test_non_finite_results_never_replace_a_file(tmp_path):
    target = tmp_path / "eval_test.json"
    target.write_text('{"t2i_r1": 0.5}')
    with pytest.raises(evaluate.ResultsError, match="t2i_r1"):
        evaluate.write_results(target, {"t2i_r1": float("nan"), "mlm_accuracy": 0.2})
    assert target.read_text() == '{"t2i_r1": 0.5}'


def test_export_stats_refuses_a_foreign_folder_and_a_missing_split(run_copy, tmp_path, capsys):
    folder = user_folder(tmp_path)
    before = tree_digest(folder)
    assert_failed_cleanly(call(export_stats.main, ["--run", run_copy, "--out", folder, "--no-progress"], capsys),
                          2, str(folder))
    assert tree_digest(folder) == before
    result = call(export_stats.main, ["--run", run_copy, "--split", "nope", "--out", tmp_path / "s"], capsys)
    assert_failed_cleanly(result, 2, "nope.jsonl")


def test_export_stats_nan_tables_are_not_written(tmp_path):
    import pandas as pd
    table = pd.DataFrame({"layer": [0], "p_vertical": [float("nan")]})
    with pytest.raises(export_stats.ExportError, match="p_vertical"):
        export_stats.check_tables({"examples": table}, tmp_path / "stats")


# ------------------------------------------------------------------------------------------------ a new user's trial
@pytest.mark.parametrize("override, key", [
    ("run.seed=-1", "run.seed"), ("run.seed=100000000000000000000000", "run.seed"), ("optim.lr=[", "optim.lr=["),
    ("batch.max_tokens=1", "batch.max_tokens"),
    ("model.overrides={num_hidden_layers: 0, hidden_size: 32, num_attention_heads: 4, intermediate_size: 64}",
     "num_hidden_layers 0"),
    ("model.overrides={num_hidden_layers: 1, hidden_size: -32, num_attention_heads: 4, intermediate_size: 64}",
     "hidden_size -32")])
def test_more_bad_config_values(tiny_corpus, tmp_path, capsys, override, key):
    result = call(train.main, ["--out", tmp_path / "run", *tiny_overrides(tiny_corpus), override], capsys)
    assert_failed_cleanly(result, 2, key)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, named", [(b"\xff\xfe\x00binary", "not UTF-8"),
                                            (b"optim: !!python/object:os.system {}\n", "line 1")])
def test_config_files_that_are_not_yaml_text(tmp_path, capsys, content, named):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    result = call(train.main, ["--config", config, "--out", tmp_path / "run"], capsys)
    assert_failed_cleanly(result, 2, str(config), named)
    assert len(result.stderr.strip().splitlines()) == 1  # one line, not YAML's quoted excerpt


def test_an_empty_training_split_is_named(tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    (corpus / "txt_db" / "train.jsonl").write_text("")
    result = call(train.main, ["--out", tmp_path / "run", *tiny_overrides(corpus)], capsys)
    assert_failed_cleanly(result, 2, "train.jsonl", "no captions")


def test_resume_with_a_changed_mix_is_refused_and_nothing_changes(run_copy, tiny_corpus, capsys):
    before = tree_digest(run_copy)
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval", *tiny_overrides(tiny_corpus, steps=6),
                               "tasks.mix={itm: 1}"], capsys)
    assert_failed_cleanly(result, 2, "step_00000004", "train_config.json", "--force")
    assert tree_digest(run_copy) == before


def test_resume_skips_a_state_without_the_trainers_part_and_a_bad_metrics_step(run_copy, tiny_corpus, capsys):
    import torch
    state_file = run_copy / "checkpoints" / "step_00000004" / "state.pt"
    state = torch.load(state_file, weights_only=False)
    state["extra"] = {}
    torch.save(state, state_file)
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": "x"}\n')
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval",
                               *tiny_overrides(tiny_corpus, steps=6, save_every=2, keep_last=2)], capsys)
    assert result.code == 0, result.stderr
    assert "lacks the trainer's" in result.stderr and "damaged line" in result.stderr


def test_force_keeps_user_files_inside_the_run(run_copy, tiny_corpus, capsys):
    (run_copy / "checkpoints" / "NOTES.txt").write_text("mine")
    (run_copy / "eval_my_own.json").write_text("{}")
    result = call(train.main, ["--out", run_copy, "--force", "--no-eval", *tiny_overrides(tiny_corpus, steps=2)], capsys)
    assert result.code == 0, result.stderr
    assert (run_copy / "checkpoints" / "NOTES.txt").read_text() == "mine"
    assert (run_copy / "eval_my_own.json").read_text() == "{}" and not (run_copy / "eval_test.json").exists()


def test_force_never_removes_a_users_dot_old_folder(tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    (tmp_path / ".corpus.old").mkdir()
    (tmp_path / ".corpus.old" / "mine.txt").write_text("precious")
    assert call(build_corpus.main, ["--out", corpus, *CORPUS_ARGS, "--force"], capsys).code == 0
    assert (tmp_path / ".corpus.old" / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symbolic_link_as_a_replaced_output_is_refused_up_front(tiny_corpus, tmp_path, capsys, dangling):
    target = tmp_path / "real"
    if not dangling:
        shutil.copytree(tiny_corpus, target)
    link = tmp_path / "link"
    link.symlink_to(target)
    result = call(build_corpus.main, ["--out", link, *CORPUS_ARGS, "--force"], capsys)
    assert_failed_cleanly(result, 2, str(link), "symbolic link")
    assert link.is_symlink() and not (tmp_path / "link.partial").exists()


def test_two_trainers_never_write_one_run(run_copy, tiny_corpus, capsys):
    held = train_state.lock_run_folder(run_copy)  # as another process training it would
    try:
        result = call(train.main, ["--out", run_copy, "--resume", "--no-eval", *tiny_overrides(tiny_corpus, steps=6)],
                      capsys)
    finally:
        held.close()
    assert_failed_cleanly(result, 2, str(run_copy), "another process")


def test_two_builds_never_write_one_partial(tmp_path, capsys):
    from uniter_core.outputs import OutputFolder
    other = OutputFolder(tmp_path / "corpus", "build_corpus", "manifest.json")
    other.start({"seed": 3})  # another build holds the partial
    result = call(build_corpus.main, ["--out", tmp_path / "corpus", *CORPUS_ARGS], capsys)
    assert_failed_cleanly(result, 2, "corpus.partial", "another build_corpus")


def test_evaluate_and_export_refuse_a_corpus_of_other_features(run_copy, tmp_path, capsys):
    config = json.loads((run_copy / "train_config.json").read_text())
    corpus = tmp_path / "official"
    assert call(official_db.main, [*_official_dbs(tmp_path), "--out", corpus], capsys).code == 0
    config["data"]["corpus"] = str(corpus)
    (run_copy / "train_config.json").write_text(json.dumps(config))
    result = call(evaluate.main, ["--run", run_copy, "--split", "txt"], capsys)
    assert_failed_cleanly(result, 2, "2048-d", "img_dim 1280")
    result = call(export_stats.main, ["--run", run_copy, "--split", "txt", "--out", tmp_path / "s", "--no-progress"],
                  capsys)
    assert_failed_cleanly(result, 2, "2048-d")
    assert not (tmp_path / "s").exists()


def test_evaluate_falls_back_from_a_newest_checkpoint_that_does_not_load(run_copy, capsys):
    from safetensors.torch import load_file, save_file
    weights = run_copy / "checkpoints" / "step_00000004" / "model" / "model.safetensors"
    state = load_file(weights)
    state.pop(sorted(state)[0])
    save_file(state, weights)
    result = call(evaluate.main, ["--run", run_copy, "--split", "val", "--candidates", "3"], capsys)
    assert result.code == 0 and "skipping checkpoint" in result.stderr, result.stderr
    assert json.loads((run_copy / "eval_val.json").read_text())["checkpoint"] == "step_00000002"


def test_export_stats_bad_device_and_empty_out(trained_run, tmp_path, capsys):
    assert_failed_cleanly(call(export_stats.main, ["--run", trained_run, "--out", tmp_path / "s", "--device", "bogus"],
                               capsys), 2, "--device")
    assert_failed_cleanly(call(export_stats.main, ["--run", trained_run, "--out", ""], capsys), 2, "--out")


def test_a_checkpoint_config_with_a_wrong_type_is_skipped_and_named(run_copy, tiny_corpus, capsys):
    config = run_copy / "checkpoints" / "step_00000004" / "model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": "x"}))
    result = call(train.main, ["--out", run_copy, "--resume", "--no-eval",
                               *tiny_overrides(tiny_corpus, steps=6, save_every=2, keep_last=2)], capsys)
    assert result.code == 0, result.stderr
    skipped = next(line for line in result.stderr.splitlines() if line.startswith("skipping checkpoint"))
    assert "config.json" in skipped and "hidden_size 'x'" in skipped, skipped
