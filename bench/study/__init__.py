"""Study files: schema, validation, the jobs they define and their identity in the stores.

Light: pydantic and PyYAML only (plus the method's configuration models), so a bad study file is
an error before torch, MLflow or Optuna is imported.
"""

from .check import check_study_file, yaml_path
from .errors import StudyError, input_error_types
from .identity import JOB_ATTRS, config_hash, data_json, first_difference, run_config, stored_config, trial_attrs
from .jobs import Job, confirm_total, confirmation_jobs, rank_trials, search_job, study_jobs, top_label
from .resolve import flatten, merge, search_config, search_variant, variant_config, with_execution_values, with_seed
from .schema import CategoricalParam, FloatParam, IntParam, SearchConfig, Study, check_data_root, load_study

__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Job",
    "SearchConfig",
    "Study",
    "StudyError",
    "check_data_root",
    "check_study_file",
    "config_hash",
    "confirm_total",
    "confirmation_jobs",
    "data_json",
    "first_difference",
    "flatten",
    "input_error_types",
    "load_study",
    "merge",
    "rank_trials",
    "run_config",
    "search_config",
    "search_job",
    "search_variant",
    "stored_config",
    "study_jobs",
    "top_label",
    "trial_attrs",
    "JOB_ATTRS",
    "variant_config",
    "with_execution_values",
    "with_seed",
    "yaml_path",
]
