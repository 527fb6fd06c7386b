"""Attention analysis of ViTs (paper section 2): distance, NMI, attention maps, figures.

Plotting lives in `hybrid_distill.analysis.plots` and is imported only by the command, so that
training and tests that need the numbers never import matplotlib.
"""

from hybrid_distill.analysis.extract import batch_metrics, dataset_metrics, query_maps, reduce_attention
from hybrid_distill.analysis.metrics import attention_distance, attention_nmi
from hybrid_distill.analysis.monitor import AttentionMonitor

__all__ = [
    "attention_distance",
    "attention_nmi",
    "reduce_attention",
    "batch_metrics",
    "dataset_metrics",
    "query_maps",
    "AttentionMonitor",
]
