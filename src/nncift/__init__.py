"""nncift: NN-CIFT data valuation and selection for instruction fine-tuning.

Compute an expensive influence function on a small random fraction of the data, train a tiny
InfluenceNetwork on sentence embeddings to predict the rest, and select the fine-tuning subset.

Typical use::

    from nncift import SelectSettings, read_records, run_select
    pool, report = read_records("pool.json")
    result = run_select(SelectSettings(influence="delift-se"), "runs/x", pool=pool, reports=[report])
    result.indices, result.scores, result.manifest
"""

from .config import FidelitySettings, SelectSettings
from .data import DataError, LoadReport, Record, read_many, read_records
from .demo_data import demo_records
from .fidelity import FidelityResult, run_fidelity
from .influence import InfluenceSpec, PairwiseInfluence, PointwiseInfluence, build_influence
from .pipeline import SelectionResult, run_select

__version__ = "0.1.0"

__all__ = [
    "DataError", "FidelityResult", "FidelitySettings", "InfluenceSpec", "LoadReport", "PairwiseInfluence",
    "PointwiseInfluence", "Record", "SelectSettings", "SelectionResult", "build_influence", "demo_records",
    "read_many", "read_records", "run_fidelity", "run_select",
]
