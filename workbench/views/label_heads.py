"""Label heads: hand-label real attention maps into the gold set, then retrain the classifier on it."""
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from analyses import goldset, train_classifier
from analyses.mapfile import MapFileError
from analyses.patterns import PATTERNS
from workbench import compute, loaders, plots, settings, state, ui

st.title("Label heads")
st.caption("Maps not labelled yet come first, the ones the classifier is least sure about before the others. "
           "Each label is saved at once to the gold set (maps.npz + labels.csv, see analyses/README.md).")
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
st.markdown(f"**Gold set** `{gold_dir}`: {len(gold)} labelled maps " +
            (" · ".join(f"{str(k).replace('_', ' ')} {v}" for k, v in counts.items()) if len(gold) else "") +
            f" — {todo} of {len(queue)} candidates still unlabelled.")


def save(label: str, record: dict) -> None:
    """Button callback: store the label (and the map) and report in the next run."""
    try:
        example = loaders.example(loaded, split, record["example"])
        attention = example.maps[record["layer"], record["head"]]
        index = goldset.add_gold_label(gold_dir, attention, example.layout.n_text, example.layout.n_regions, label,
                                       {"run": run_name, "split": split, **record})
        st.session_state["label_message"] = ("success", f"Saved map {index} as {label}.")
    except Exception as error:  # a full disk or a broken gold file: say so, keep the page alive
        st.session_state["label_message"] = ("error", f"Could not save the label: {type(error).__name__}: {error}")


kind, message = st.session_state.pop("label_message", (None, None))
if kind:
    (st.success if kind == "success" else st.error)(message)

current = queue.iloc[0]
record = {"example": int(current["example"]), "layer": int(current["layer"]), "head": int(current["head"])}
example = loaders.example(loaded, split, record["example"])
table = tables[record["example"]]
row = table[(table["layer"] == record["layer"]) & (table["head"] == record["head"])].iloc[0]
left, right = st.columns([3, 2])
left.plotly_chart(plots.attention_heatmap(example.maps[record["layer"], record["head"]], example.layout.labels(),
                                          example.layout.n_text, f"Example {record['example']}, layer "
                                          f"{record['layer']}, head {record['head']}", height=560),
                  key="label_map", config=ui.CHART)
with right:
    state = "already labelled" if current["labelled"] else "unlabelled"
    st.markdown(f"**{state}** · classifier says *{row['pattern'].replace('_', ' ')}* "
                f"(p = {current['confidence']:.2f})")
    st.plotly_chart(plots.probability_bars({c: float(row[f"p_{c}"]) for c in PATTERNS}), key="label_probs",
                    config=ui.CHART)
    buttons = st.columns(2)
    for i, label in enumerate(goldset.LABELS):
        buttons[i % 2].button(label.replace("_", " "), key=f"label_{label}", on_click=save, args=(label, record),
                              type="primary" if label == row["pattern"] else "secondary", width="stretch")

st.subheader("Retrain the classifier")
out = loaders.classifier_file()
st.caption(f"`python -m analyses.train_classifier --gold-dir {gold_dir} --out {out} --gold-folds K`: synthetic maps "
           f"plus the gold set; every gold map is scored by one of K cross-validation models that did not see it, "
           f"and the saved classifier is trained on all of them.")
cols = st.columns(3)
n_synthetic = cols[0].number_input("Synthetic maps", 60, 20000, 6000, step=500, key="retrain_synthetic")
folds = cols[1].number_input("Cross-validation folds", 2, 10, 5, step=1, key="retrain_folds")
if cols[2].button("Retrain", key="retrain", type="primary", icon=":material/model_training:"):
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

report_file = Path(out).with_suffix(".eval.json")
if report_file.exists():
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        rows = [{"evaluated on": e["description"], "maps": e["n"],
                 "classifier macro-F1": round(e["classifier"]["macro_f1"], 3),
                 "rules macro-F1": round(e["rules"]["macro_f1"], 3),
                 "classifier accuracy": round(e["classifier"]["accuracy"], 3)} for e in report["evaluations"]]
        st.markdown(f"**Current classifier** ({report['metadata'].get('created', '?')}): "
                    f"{report['training']['description']}")
        st.dataframe(rows, hide_index=True)
        if report.get("note"):
            st.caption(report["note"])
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:  # JSON and Unicode errors too
        st.error(f"`{report_file}` cannot be read ({type(error).__name__}: {error}).")
