"""The computations behind the pages, free of Streamlit so that tests and the benchmark can call them directly.

Everything here delegates to the project's own modules (analyses.*, uniter_core.*): the app shows what those
compute and never re-implements them.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.export_stats import aggregate, per_map_table
from analyses.goldset import gold_key
from analyses.patterns import PATTERNS
from uniter_core.cli import report
from uniter_core.data.dataset import collate
from uniter_core.errors import UserError
from uniter_core.model import SequenceLayout
from uniter_core.ot import cost_matrix_cosine, ipot
from uniter_core.report import report_rows
from uniter_core.runs import to_device
from uniter_core.train_state import metrics_lines

# Display name -> uniter_core.ot solver. "auto" is IPOT as training runs it (batched on CPU, fused on CUDA).
SOLVERS = {"IPOT": "auto", "POT Sinkhorn": "pot-sinkhorn", "POT EMD": "pot-emd"}


# ------------------------------------------------------------------------------------------ patterns
def example_table(example, classifier) -> pd.DataFrame:
    """One row per (layer, head) of one ExampleAttention: predicted pattern, probabilities and head_stats."""
    return per_map_table([example], classifier)


def summarise(tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-map rows, per-head, per-layer) aggregates of several examples, as analyses.export_stats makes them."""
    table = pd.concat(tables, ignore_index=True)
    return table, aggregate(table, ["layer", "head"]), aggregate(table, ["layer"])


def head_map(maps: np.ndarray, layer: int, head: int | None) -> np.ndarray:
    """One head's map [n, n], or the mean over the layer's heads when head is None."""
    return maps[layer, head] if head is not None else maps[layer].mean(0)


def word_to_regions(attention: np.ndarray, n_text: int, position: int) -> np.ndarray:
    """[K] attention mass the query at text `position` puts on each region key."""
    return attention[position, n_text:]


def region_to_words(attention: np.ndarray, n_text: int, region: int) -> np.ndarray:
    """[n_text] attention each text query puts on region key `region`."""
    return attention[:n_text, n_text + region]


# ------------------------------------------------------------------------------------------ transport
@torch.inference_mode()
def final_states(model, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-layer text ([CLS] .. [SEP]) and region states of one example, fp32, as WRA takes them."""
    batch = to_device(collate([item]), next(model.parameters()).device)
    hidden = model.uniter.forward_batch(batch).last_hidden_state.float()[0].cpu()
    layout = SequenceLayout.from_batch(batch)
    return hidden[layout.text_slice(0)], hidden[layout.region_slice(0)]


def transport_plan(txt: torch.Tensor, img: torch.Tensor, solver: str, beta: float = 0.5, iteration: int = 50,
                   k: int = 1) -> dict:
    """Cosine cost [T, K], plan [T, K] of `solver` (a uniter_core.ot name), transport cost and solve time."""
    cost = cost_matrix_cosine(txt[None].double(), img[None].double())
    start = time.perf_counter()
    plan = ipot(cost, None, None, beta, iteration, k, solver)
    seconds = time.perf_counter() - start
    cost_np, plan_np = cost[0].numpy(), plan[0].double().numpy()
    return {"cost": cost_np, "plan": plan_np, "distance": float((cost_np * plan_np).sum()), "seconds": seconds}


def solver_table(results: dict[str, dict], truth: dict[int, set[int]]) -> pd.DataFrame:
    """Per solver: transport cost, L1 distance of its plan to the IPOT plan, and how many grounded words get
    their largest mass on a ground-truth region (the WRA alignment accuracy of this one example)."""
    reference = results["IPOT"]["plan"]
    rows = []
    for name, r in results.items():
        plan = r["plan"]
        hits = sum(int(plan[p].argmax()) in regions for p, regions in truth.items() if p < len(plan))
        rows.append({"solver": name, "transport cost": _no_negative_zero(r["distance"]),
                     "L1 to IPOT": _no_negative_zero(np.abs(plan - reference).sum()),
                     "grounded words hit": f"{hits} / {len(truth)}" if truth else "–",
                     "ms": round(1000 * r["seconds"], 1)})
    return pd.DataFrame(rows)


def _no_negative_zero(value: float, digits: int = 6) -> float:
    """Rounded to `digits`, with -0.0 made 0.0 (a table would print it "-0.0000")."""
    return round(float(value), digits) + 0.0


# ------------------------------------------------------------------------------------------ gold set
# (labels.csv and maps.npz themselves: analyses.goldset)
def label_queue(table: pd.DataFrame, done: set[tuple], run: str, split: str) -> pd.DataFrame:
    """Maps to label next: unlabelled before labelled, then the classifier's least sure (lowest top probability)."""
    queue = table[["example", "layer", "head", "pattern"]].copy()
    queue["confidence"] = table[[f"p_{c}" for c in PATTERNS]].max(axis=1)
    queue["labelled"] = [gold_key(run, split, e, l, h) in done for e, l, h in
                         queue[["example", "layer", "head"]].itertuples(index=False)]
    return queue.sort_values(["labelled", "confidence", "example", "layer", "head"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ commands' work
def run_captured(function, /, *args, **kwargs) -> tuple[object, str, bool]:
    """function(*args, **kwargs) with what it prints kept: (its result or None, the printed text, success). A
    failure is added to the text as its command would show it (`error: ...`, uniter_core.cli.report), or as
    `Type: message` when it is a bug, so that a page shows one message rather than a traceback."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            return function(*args, **kwargs), output.getvalue(), True
        except (UserError, OSError) as error:
            report(error, output)
        except Exception as error:  # noqa: BLE001 - shown, never raised
            output.write(f"{type(error).__name__}: {error}")
    return None, output.getvalue(), False


# ------------------------------------------------------------------------------------------ training run
def read_metrics(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """(one row per logged step, one row per (evaluation, split), numbers of unreadable lines) of a metrics.jsonl.
    A half-written last line (a run killed while logging) is skipped, not fatal."""
    steps, evals, bad = [], [], []
    for number, record in metrics_lines(path):
        is_step = record is not None and "loss" in record and "task" in record
        if record is None or (is_step and "step" not in record):  # the curves are drawn over the step
            bad.append(number)
        elif is_step:
            steps.append(record)
        elif isinstance(record.get("eval"), dict):
            evals += [{"step": record.get("step"), "split": split, **values}
                      for split, values in record["eval"].items() if isinstance(values, dict)]
    if not steps and not evals:
        raise ValueError(f"{path}: holds no training records" + (f" ({len(bad)} unreadable lines)" if bad else ""))
    return pd.DataFrame(steps), pd.DataFrame(evals), bad


def task_losses(steps: pd.DataFrame) -> pd.DataFrame:
    """(step, task, loss) for the per-task loss curves, every loss positive so that a log axis shows it: an ITM
    step's total also holds weight x WRA, a signed transport cost (around -3 in the demo), so ITM is drawn by its
    cross-entropy part (loss_itm_xe) as "itm (cross-entropy)" wherever that was logged."""
    losses = steps[["step", "task", "loss"]].copy()
    if "loss_itm_xe" in steps:
        itm = (steps["task"] == "itm") & steps["loss_itm_xe"].notna()
        losses.loc[itm, "loss"] = steps.loc[itm, "loss_itm_xe"]
        losses.loc[itm, "task"] = "itm (cross-entropy)"
    return losses


def wra_terms(steps: pd.DataFrame) -> pd.DataFrame:
    """(step, part, value) of the ITM steps' WRA term: the transport cost itself and, where the weight was
    logged, what it added to the loss (weight x cost)."""
    if "loss_itm_ot" not in steps:
        return pd.DataFrame(columns=["step", "part", "value"])
    itm = steps[(steps["task"] == "itm") & steps["loss_itm_ot"].notna()]
    parts = [pd.DataFrame({"step": itm["step"], "part": "WRA transport cost", "value": itm["loss_itm_ot"]})]
    if "wra_weight" in itm:
        parts.append(pd.DataFrame({"step": itm["step"], "part": "weight × cost (added to the loss)",
                                   "value": itm["loss_itm_ot"] * itm["wra_weight"]}))
    return pd.concat(parts, ignore_index=True).dropna()


def read_eval(path: Path) -> dict | None:
    """An eval_<split>.json (None when absent); ValueError naming the file when it is not valid JSON."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return result


def eval_table(pretrained: dict, baseline: dict | None) -> pd.DataFrame:
    """The rows of uniter_core.report: pre-trained beside the initialisation, with the difference."""
    rows = []
    for key, label in report_rows(pretrained):
        if not _is_number(pretrained.get(key)):  # absent, or a hand-edited file with text in it
            continue
        base = baseline.get(key) if baseline and _is_number(baseline.get(key)) else None
        rows.append({"metric": label, "pre-trained": pretrained[key], "initialisation": base,
                     "difference": pretrained[key] - base if base is not None else None})
    return pd.DataFrame(rows)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ overview
OVERVIEW_LONG = 30  # examples still to classify above which the Overview first says how long it will take


def export_coverage(table: pd.DataFrame, text_ids: list[str], maps_per_example: int) -> tuple[frozenset, str]:
    """(the example indices an export_stats per-map table holds, "") when each one is still that example of the
    split (same caption id) with all its layers x heads maps; else (frozenset(), why not)."""
    if not pd.api.types.is_integer_dtype(table["example"]):
        return frozenset(), "the export's example column does not hold example numbers"
    counts = table.groupby("example").size()
    short = counts[counts != maps_per_example]
    if len(short):
        return frozenset(), (f"the export holds {short.iloc[0]} maps of example {short.index[0]}, the model has "
                             f"{maps_per_example} (layers × heads)")
    pairs = table.drop_duplicates("example")[["example", "text_id"]]
    examples = pairs["example"].to_numpy()
    outside = examples[(examples < 0) | (examples >= len(text_ids))]
    if len(outside):
        return frozenset(), (f"the export holds example {outside[0]}, the split has {len(text_ids)} examples: it "
                             f"changed since the export")
    now = np.asarray(text_ids, dtype=object)[examples]
    differ = np.flatnonzero(now != pairs["text_id"].astype(str).to_numpy(dtype=object))
    if len(differ):
        k = differ[0]
        return frozenset(), (f"example {examples[k]} of the export is caption {pairs['text_id'].iloc[k]}, in the "
                             f"split it is {now[k]}: the split changed since the export")
    return frozenset(examples.tolist()), ""


def overview_tables(parts: list[pd.DataFrame], chosen: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """summarise() of per-map rows gathered from an export and from example_table(), put in one order first (the
    chosen examples', then layer and head) so that the result does not depend on where the rows came from."""
    table = pd.concat(parts, ignore_index=True)
    position = table["example"].map({e: k for k, e in enumerate(chosen)}).to_numpy()
    return summarise([table.iloc[np.lexsort((table["head"], table["layer"], position))]])


def duration(seconds: float) -> str:
    """A rough time for a person: '40 s', '3 min 20 s', '1 h 5 min' (at least '1 s')."""
    seconds = max(1, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def progress_text(done: int, total: int, seconds_left: float | None) -> str:
    """The progress bar's line: examples done of total, and the time left when it can be estimated."""
    left = f" · about {duration(seconds_left)} left" if seconds_left is not None and done < total else ""
    return f"Classifying the attention maps: {done} / {total} examples{left}"
