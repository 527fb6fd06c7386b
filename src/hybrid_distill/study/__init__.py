"""Studies: a grid of named rows (config diffs over one base) times seeds, trained, evaluated and analysed,
reported as mean, standard deviation and Student-t 95% interval per row and paired against a reference row."""

from hybrid_distill.study.command import run_study
from hybrid_distill.study.spec import StudyError, cell_config, load_study
from hybrid_distill.study.stats import paired, summary, t_critical

__all__ = ["load_study", "run_study", "cell_config", "StudyError", "summary", "paired", "t_critical"]
