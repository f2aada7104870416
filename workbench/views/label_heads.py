"""Label heads: hand-label real attention maps into the gold set, then retrain the classifier on it."""
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from analyses import goldset, train_classifier
from analyses.classifier import DEFAULT_MODEL
from analyses.mapfile import MapFileError
from analyses.patterns import PATTERNS
from workbench import compute, exports, loaders, plots, settings, state, ui

st.title("Label heads")
st.caption("Maps not labelled yet come first, the ones the classifier is least sure about before the others (the "
           "order comes from the classifier; its guess stays hidden unless you ask for it, so that it does not "
           "sway the label). Each label is saved at once to the gold set (maps.npz + labels.csv, see "
           "analyses/README.md); *Undo last label* takes back this session's labels one by one.")
loaded, split, _ = ui.need_example()
state.text("gold_dir", str(settings.gold_dir()))
cols = st.columns([3, 1])
typed = cols[0].text_input("Gold-set folder", key="gold_dir", persist_state="session")
gold_dir = settings.resolve(typed) if typed.strip() else settings.gold_dir()
count = len(ui.guarded("Reading the split", loaders.get_dataset, loaded, split))
state.number("label_pool", 1, count, min(8, count))
pool = cols[1].number_input("Candidates from the first N examples", 1, count, key="label_pool")

if gold_dir.exists() and not gold_dir.is_dir():
    st.error(f"`{gold_dir}` is a file: the gold set needs a folder (it holds maps.npz and labels.csv).")
    st.stop()
try:
    gold = goldset.read_gold_labels(gold_dir)
except MapFileError as error:
    st.error(str(error))
    st.stop()
run_name = loaded.source.path
tables = [ui.guarded("Classifying the attention maps", loaders.example_table, loaded, split, i)
          for i in range(int(pool))]
queue = compute.label_queue(pd.concat(tables, ignore_index=True), goldset.labelled_keys(gold), run_name, split)
todo = int((~queue["labelled"]).sum())
counts = gold["label"].value_counts() if len(gold) else pd.Series(dtype=int)
st.markdown(f"**Gold set** `{exports.shown(gold_dir)}`: {len(gold)} labelled map{'' if len(gold) == 1 else 's'} " +
            (" · ".join(f"{str(k).replace('_', ' ')} {v}" for k, v in counts.items()) if len(gold) else "") +
            f" — {todo} of {len(queue)} candidates still unlabelled.")


folder_key = str(gold_dir.resolve())
provenance = {"run": run_name, "split": split}


def saved() -> list[dict]:
    """This session's labels in the chosen gold folder, newest last: what Undo takes back."""
    return st.session_state.setdefault("label_saved", {}).setdefault(folder_key, [])


def save(label: str, record: dict) -> None:
    """Button callback: store the label (and the map), remember it for Undo, and report in the next run."""
    try:
        example = loaders.example(loaded, split, record["example"])
        attention = example.maps[record["layer"], record["head"]]
        where = {**provenance, **record}
        before = goldset.read_gold_labels(gold_dir)
        found = goldset.find_gold_entry(before, where)
        previous = None if found is None else str(before.loc[found, "label"])  # a relabel: Undo restores it
        index = goldset.add_gold_label(gold_dir, attention, example.layout.n_text, example.layout.n_regions, label,
                                       where)
        saved().append({"index": index, "provenance": where, "label": label, "previous": previous})
        st.session_state.pop("label_focus", None)
        st.session_state["label_message"] = ("success", f"Saved map {index} as {label}.")
    except Exception as error:  # a full disk or a broken gold file: say so, keep the page alive
        st.session_state["label_message"] = ("error", f"Could not save the label: {type(error).__name__}: {error}")


def undo() -> None:
    """Button callback: take back this session's newest label in the gold folder, if the files still hold it."""
    if not saved():  # a click sent before the button was disabled
        st.session_state["label_message"] = ("error", "Nothing to undo: no label saved in this session.")
        return
    entry = saved().pop()
    where = entry["provenance"]
    what = f"map {entry['index']} (example {where['example']}, layer {where['layer']}, head {where['head']})"
    try:
        goldset.remove_gold_label(gold_dir, entry["index"], where, expected_label=entry["label"],
                                  restore_label=entry["previous"])
    except Exception as error:  # changed meanwhile, or unreadable: one line, nothing written
        st.session_state["label_message"] = ("error", f"Could not undo the label {entry['label']} of {what}: "
                                                      f"{error}")
        return
    st.session_state["label_focus"] = (folder_key, goldset.gold_key(*(where[k] for k in goldset.GOLD_KEY)))
    again = (f"it is labelled {entry['previous']} again" if entry["previous"] is not None else
             "it is unlabelled again")
    st.session_state["label_message"] = ("success", f"Took back the label {entry['label']} of {what}: {again}.")


kind, message = st.session_state.pop("label_message", (None, None))
if kind:
    (st.success if kind == "success" else st.error)(message)

focus = st.session_state.get("label_focus")  # the map an undo gave back is the next one to label
keys = [goldset.gold_key(run_name, split, *values) for values in
        queue[["example", "layer", "head"]].itertuples(index=False)]
position = keys.index(focus[1]) if focus and focus[0] == folder_key and focus[1] in keys else 0
current = queue.iloc[position]
record = {"example": int(current["example"]), "layer": int(current["layer"]), "head": int(current["head"])}
example = loaders.example(loaded, split, record["example"])
table = tables[record["example"]]
row = table[(table["layer"] == record["layer"]) & (table["head"] == record["head"])].iloc[0]
status = "already labelled" if current["labelled"] else "unlabelled"
state.flag("label_show_guess", False)
top = st.columns([3, 2], vertical_alignment="center")
top[0].markdown(f"**This map is {status}.** Which pattern is it?")
show_guess = top[1].toggle("Classifier's guess", key="label_show_guess", persist_state="session",
                           help="Off by default: label what you see first, then compare if you like.")
# The buttons above the map, four to a row, so that the map keeps the page's whole width for its columns.
buttons = st.columns(4)
for i, label in enumerate(goldset.LABELS):
    buttons[i % 4].button(ui.pattern_name(label), key=f"label_{label}", on_click=save, args=(label, record),
                          width="stretch")
stack = saved()
buttons[len(goldset.LABELS) % 4].button(
    "Undo last label", key="label_undo", on_click=undo, disabled=not stack, icon=":material/undo:",
    width="stretch", help=(f"Takes back map {stack[-1]['index']} ({stack[-1]['label']})" if stack else
                           "Nothing labelled in this session yet"))
if show_guess:
    guess, bars = st.columns([1, 2])
    guess.markdown(f"The classifier says *{ui.pattern_name(row['pattern'])}* (p = {current['confidence']:.2f})")
    bars.plotly_chart(plots.probability_bars({c: float(row[f"p_{c}"]) for c in PATTERNS}), key="label_probs",
                      config=ui.CHART)
st.plotly_chart(plots.attention_heatmap(example.maps[record["layer"], record["head"]], example.layout.labels(),
                                        example.layout.n_text, f"Example {record['example']}, layer "
                                        f"{record['layer']}, head {record['head']}: rows = queries, columns = keys",
                                        hover_labels=example.layout.hover_labels()),
                key="label_map", config=ui.CHART)

st.subheader("Retrain the classifier")


# Retrain writes the classifier of the chosen gold folder (goldset.gold_classifier_file). The project's default
# model and the one the app uses (WORKBENCH_CLASSIFIER) are replaced only with the box ticked.
own = goldset.gold_classifier_file(gold_dir)
in_use = loaders.classifier_file()
protected = {DEFAULT_MODEL.resolve(), in_use.resolve()}
# The default model belongs to the project's gold set alone (never to a folder WORKBENCH_GOLD_DIR points at); a
# WORKBENCH_CLASSIFIER goes with the configured gold folder.
partner = goldset.PROJECT_GOLD if in_use.resolve() == DEFAULT_MODEL.resolve() else settings.gold_dir()
replaceable = in_use if gold_dir.resolve() == Path(partner).resolve() else \
    (own if own.resolve() in protected else None)
replace = False
if replaceable is not None:
    what = (f"the project's default classifier {exports.shown(DEFAULT_MODEL)} and its committed report"
            if replaceable.resolve() == DEFAULT_MODEL.resolve() else
            f"the classifier the app uses, {exports.shown(replaceable)} (WORKBENCH_CLASSIFIER)")
    replace = st.checkbox(f"Replace {what}", key="retrain_replace_default")
out = replaceable if replace else (None if own.resolve() in protected else own)
if out is None:  # the folder's own classifier is a protected one (then `replaceable` is set)
    whose = ("the project's gold set, whose classifier is the default one" if own.resolve() == DEFAULT_MODEL.resolve()
             else "the gold folder whose classifier is the one the app uses")
    how = ("tick the box above to replace it" if replaceable.resolve() == own.resolve() else
           f"tick the box above to replace `{exports.shown(replaceable)}` instead")
    st.info(f"`{exports.shown(gold_dir)}` is {whose}, `{exports.shown(own)}`, which Retrain does not replace unasked: {how}, or "
            f"type another gold folder to train a classifier of its own there.")
elif out.resolve() == in_use.resolve():
    st.markdown(f"Retrain writes `{exports.shown(out)}` (with its `.json` metadata and `.eval.json` / `.eval.md` report), "
                f"the classifier the app uses: the maps are classified anew with it afterwards.")
else:
    st.markdown(f"Retrain writes `{exports.shown(out)}` (with its `.json` metadata and `.eval.json` / `.eval.md` report). "
                f"The app keeps classifying with `{exports.shown(in_use)}`; to use the new one, start it with "
                f"`WORKBENCH_CLASSIFIER={exports.shown(out)} streamlit run workbench/app.py`.")
st.caption(f"`python -m analyses.train_classifier --gold-dir {exports.shown(gold_dir)} --out {exports.shown(out or own)} "
           f"--gold-folds K`: synthetic maps plus the gold set; every gold map is scored by one of K "
           f"cross-validation models that did not see it, and the saved classifier is trained on all of them. An "
           f"existing file that train_classifier did not write is never replaced.")
cols = st.columns(3)
n_synthetic = cols[0].number_input("Synthetic maps", 60, 20000, 6000, step=500, key="retrain_synthetic")
folds = cols[1].number_input("Cross-validation folds", 2, 10, 5, step=1, key="retrain_folds")
if cols[2].button("Retrain", key="retrain", type="primary", icon=":material/model_training:",
                 disabled=out is None):
    counts = gold[gold["label"] != "skip"]["label"].value_counts() if len(gold) else None
    smallest = int(counts.min()) if counts is not None and len(counts) else 0
    used = min(int(folds), smallest)
    if used < 2:
        used = 0
        st.info("Too few labels per class for cross-validation: the classifier is trained on all gold maps and "
                "evaluated on synthetic maps only.")
    elif used < folds:
        st.info(f"The rarest class has {smallest} labels: using {used} folds.")
    with st.spinner("Training the classifier…"):
        report, printed, trained = compute.run_captured(
            train_classifier.train_classifier, gold_dir=gold_dir, out=out, n_synthetic=int(n_synthetic),
            n_test=max(6, int(n_synthetic) // 4), gold_folds=used)
    message = printed + (train_classifier.summary(report) if trained else "")
    (st.success if trained else st.error)(message.strip())

model_file = out or own
report_file = model_file.with_suffix(".eval.json")
if not report_file.exists():
    st.caption(f"No classifier trained on this gold folder yet (`{exports.shown(report_file)}` does not exist).")
else:
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        rows = [{"evaluated on": e["description"], "maps": e["n"],
                 "macro-F1": round(e["classifier"]["macro_f1"], 3),
                 "rules' F1": round(e["rules"]["macro_f1"], 3),
                 "accuracy": round(e["classifier"]["accuracy"], 3)} for e in report["evaluations"]]
        st.markdown(f"**Current classifier** `{exports.shown(model_file)}` ({report['metadata'].get('created', '?')}): "
                    f"{report['training']['description']}")
        st.dataframe(rows, hide_index=True)
        st.caption("macro-F1 and accuracy: the classifier's; rules' F1: the macro-F1 of the threshold rules "
                   "(analyses.patterns) on the same maps.")
        if report.get("note"):
            st.caption(report["note"])
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:  # JSON and Unicode errors too
        st.error(f"`{exports.shown(report_file)}` cannot be read ({type(error).__name__}: {error}).")
