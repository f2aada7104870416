"""Shared choices read back from st.session_state, checked and repaired before their widget is drawn.

Why: a widget with persist_state="session" hands back whatever the browser last sent. When its option labels are
made of data (the captions of a split, the word-pieces of an example) and the data changes without the value
changing, Streamlit does not send the new label, so the browser keeps the old one and sends it with the next
click; the new options do not know it and Streamlit returns the label itself, a str: after test -> val,
st.session_state["example"] became "0: <a test caption>" and every page failed on `0 <= "0: …"`. So each value
is coerced (wrong type or out of range -> a default), and it is written back whenever the data behind its
labels changes (its `context`), which makes Streamlit send the new label to the browser.
"""
from __future__ import annotations

import numbers
import re

import streamlit as st


def as_index(value) -> int | None:
    """An option index from a session value: an int (not a bool), a whole float, or a label that starts with
    the index ("3", "3: a red car"); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = re.match(r"\s*(\d+)(?!\d)", value)
        return int(match.group(1)) if match else None
    return None


def _put(key: str, value, force: bool = False) -> None:
    """Write only when needed: a write also tells the browser to show the value (set_value)."""
    current = st.session_state.get(key)
    if force or key not in st.session_state or type(current) is not type(value) or current != value:
        st.session_state[key] = value


def _context_changed(key: str, context) -> bool:
    if context is None:
        return False
    marker = f"_context_{key}"
    changed = st.session_state.get(marker) != context
    st.session_state[marker] = context
    return changed


def index(key: str, size: int, default: int = 0, context=None) -> int:
    """A valid option index 0 <= i < size (size >= 1) under `key`. A stale value, or any value once `context`
    (what the option labels are made of) changed, becomes `default`."""
    default = min(max(int(default), 0), size - 1)
    value = as_index(st.session_state.get(key))
    changed = _context_changed(key, context)
    if changed or value is None or not 0 <= value < size:
        value = default
    _put(key, value, force=changed)
    return value


def indices(key: str, size: int, default: list[int]) -> list[int]:
    """A list of distinct valid indices (for a multiselect over range(size)); indices that no longer exist are
    dropped, and a value that is not a list, or keeps none of its indices, becomes `default`."""
    stored = st.session_state.get(key)
    if isinstance(stored, (list, tuple)):
        kept = [i for i in dict.fromkeys(map(as_index, stored)) if i is not None and 0 <= i < size]
        value = kept if kept or not stored else list(default)
    else:
        value = list(default)
    _put(key, value)
    return value


def choice(key: str, options, default=None):
    """One of `options` (default: the first) under `key`."""
    options = list(options)
    value = st.session_state.get(key)
    if not any(type(value) is type(option) and value == option for option in options):
        value = options[0] if default is None else default
        st.session_state[key] = value
    return value


def members(key: str, options) -> None:
    """Keep only values that are among `options` (a multiselect whose options come from a file)."""
    stored = st.session_state.get(key)
    if key in st.session_state:
        kept = [v for v in stored if v in options] if isinstance(stored, (list, tuple)) else []
        if kept != stored:
            st.session_state[key] = kept


def text(key: str, default: str = "") -> str:
    """A str under `key` (a text input, or a selectbox that accepts typed options)."""
    value = st.session_state.get(key)
    if not isinstance(value, str):
        value = default
        st.session_state[key] = value
    return value


def flag(key: str, default: bool = False) -> bool:
    value = st.session_state.get(key)
    if not isinstance(value, bool):
        value = default
        st.session_state[key] = value
    return value


def number(key: str, low: int, high: int, default: int) -> int:
    """An int low <= n <= high under `key` (a number input drawn without a value argument)."""
    value = as_index(st.session_state.get(key))
    if value is None or not low <= value <= high:
        value = min(max(int(default), low), high)
    _put(key, value)
    return value


def read_text(key: str, default: str = "") -> str:
    """Like `text` but without writing: for values whose widget may already be drawn in this run."""
    value = st.session_state.get(key)
    return value if isinstance(value, str) and value.strip() else default
