"""Labels as an input file spells them: numbers, missing values, and class names.

A converter reads labels as numbers; the first label that is neither a number nor a
missing-value spelling raises :class:`WordLabel`, after which the labels are read as
text and are class names ("words"), sorted as strings into the classes
(:mod:`mpisgd.data.convert`).
"""

from __future__ import annotations

import numpy as np

from mpisgd.errors import DataError

# Fields read as a missing value (compared in lower case): the spellings of pandas'
# default ``na_values`` that users' files carry, and '?' (the UCI repository's).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "?", "#n/a",
                            "<na>"})


def is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def numeric(field: str) -> bool:
    """A field a number column may hold: a number or a missing value."""
    return is_number(field) or field.lower() in MISSING_TOKENS


class WordLabel(DataError):
    """A label that is no number, met reading numbers: the labels are class names.
    Its message is what a reader of numbers says, should it reach the user."""

    def __init__(self, source, text: str, no):
        self.text, self.no = str(text), int(no)
        super().__init__(f"{source.unit} {no} of '{source.path}': {source.label_name} is "
                         f"{self.text!r}, which is not a number")


def missing_text(texts: np.ndarray) -> np.ndarray:
    """Boolean mask of the labels read as text that spell a missing value."""
    return np.isin(np.char.lower(texts), list(MISSING_TOKENS))


def label_numbers(texts: np.ndarray, source, nos: np.ndarray) -> np.ndarray:
    """Labels held as strings (an ``.npz`` y) as float64, NaN for a missing value;
    WordLabel at the first that is neither a number nor missing."""
    try:
        return texts.astype(np.float64)
    except ValueError:
        pass   # a missing-value spelling or a word: element by element below
    gaps = missing_text(texts)
    for i, text in enumerate(texts.tolist()):
        if not gaps[i] and not is_number(text):
            raise WordLabel(source, text, nos[i])
    return np.array([np.nan if g else float(t) for g, t in zip(gaps, texts.tolist())])
