"""Every name the harness writes into a store or reads back from one, spelled once.

Three kinds of record carry a study:

- Optuna user attributes of a trial (:class:`Attr`): what a worker needs to run it (its job key,
  stored configuration, data section) and who runs it (host, pid, start time); of a study
  (:class:`StudyAttr`): the Slurm arrays submitted for it;
- MLflow tags of a run (:class:`Tag`, and the per-axis / per-role / per-state families below):
  what a report needs to group, pair and describe runs;
- trial states (:data:`DONE`, :data:`LIVE`) and job stages (:class:`Stage`), as Optuna's state names
  and the prefixes of job keys.

Writers (``bench.run``, ``bench.stores``) and readers (``bench.study.identity``, ``bench.report``)
import these; a test checks that no ``bench.*`` tag or attribute name is spelled anywhere else.
Pure constants: importing this module imports nothing heavy.
"""

from __future__ import annotations


class Attr:
    """Optuna user attributes of a trial."""

    JOB_KEY = "job_key"  # variant|grid point|seed=N, search|trial=N, or confirm|...
    VARIANT = "variant"
    SEED = "seed"
    STAGE = "stage"  # a confirmation job's stage (grid and search jobs have it in their key)
    CONFIG = "config"  # JSON of MethodConfig.model_dump(mode="json")
    CONFIG_HASH = "config_hash"  # bench.study.identity.config_hash of it (execution settings left out)
    DATA = "data"  # JSON of {"data": the study's data section}
    GRID = "grid"  # JSON of the job's grid point {"dotted.path": value}
    SEARCH_PROTOCOL = "search_protocol"  # JSON of a search trial's tune split and seeds
    CONFIRM_OF = "confirm_of"  # a confirmed configuration's search trial number
    CONFIRM_RANK = "confirm_rank"
    MLFLOW_RUN_ID = "mlflow_run_id"
    ERROR = "error"
    EPOCH = "epoch"  # epochs done (progress display)
    WORKER_HOST = "worker_host"
    WORKER_PID = "worker_pid"
    WORKER_START = "worker_start"  # the pid's start time: written last
    WORKER_DEATHS = "worker_deaths"  # how often a worker died running this job (a queued copy counts on)


class StudyAttr:
    """Optuna user attributes of a study."""

    SLURM_ARRAYS = "slurm_arrays"  # `bench submit`'s job arrays: [{job_id, tasks, submitted, log_folder}]


class Tag:
    """MLflow tags of a study's parent run and of its trial runs."""

    ROLE = "bench.role"  # ROLE_STUDY on the parent run, ROLE_TRIAL on each trial's run
    STUDY = "bench.study"
    VARIANT = "bench.variant"
    SEED = "bench.seed"
    TRIAL = "bench.trial"  # the Optuna trial number
    JOB_KEY = "bench.job_key"
    CONFIG_HASH = "bench.config_hash"
    DEVICE = "bench.device"
    PRECISION = "bench.precision"  # what stage 1 computed in: float32, bf16 or fp16 (train.amp, the device)
    SEG_PRECISION = "bench.seg_precision"  # the same for stage 2 (segment.amp)
    OPTUNA_STUDY = "bench.optuna_study"
    WORLD_SIZE = "bench.world_size"
    STAGE = "bench.stage"  # Stage.SEARCH | Stage.CONFIRM | Stage.GRID
    CONFIRM_OF = "bench.confirm_of"
    CONFIRM_RANK = "bench.confirm_rank"
    STATE = "bench.state"  # FAIL or PRUNED, beside MLflow's own status
    ERROR = "bench.error"
    PRUNED = "bench.pruned"
    SEARCH_SEEDS = "bench.search_seeds"  # comma-separated training seeds of a search trial
    HOST = "bench.host"
    SLURM_JOB_ID = "bench.slurm_job_id"  # the array's job id (the job's own outside an array)
    SLURM_ARRAY_TASK_ID = "bench.slurm_array_task_id"
    SLURM_NODE = "bench.slurm_node"
    GPUS = "bench.gpus"  # "<count> x <model>" where CUDA is available
    GIT_DIRTY = "bench.git_dirty"


ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
GRID_TAG_PREFIX = "bench.grid."  # + the axis' dotted path: the run's value on that grid axis
TRIALS_TAG_PREFIX = "bench.trials_"  # + a lower-case state: the parent run's trial counts
SPLIT_ROLES = ("train", "pseudo", "val", "seg_train")  # the splits a trial reads, by role
#: the dataset-input context of each split role (MLflow's ``mlflow.data.context``)
SPLIT_CONTEXTS = {"train": "training", "pseudo": "scoring", "val": "scoring", "seg_train": "training"}


def grid_tag(axis: str) -> str:
    """The tag of a run's value on grid axis ``axis`` (a dotted configuration path)."""
    return f"{GRID_TAG_PREFIX}{axis}"


def split_tag(role: str) -> str:
    """The name of the split a trial read in ``role`` (one of :data:`SPLIT_ROLES`)."""
    return f"bench.split.{role}"


def split_size_tag(role: str) -> str:
    """How many images that split had."""
    return f"bench.split.{role}_images"


def resumed_tag(suffix: str = "") -> str:
    """The epoch a trial resumed from (``suffix``: ``_seed<k>`` for a search trial's later seeds)."""
    return f"bench.resumed_from_epoch{suffix}"


def discarded_tag(suffix: str = "") -> str:
    """Why a trial's checkpoint was moved aside instead of resumed."""
    return f"bench.checkpoint_discarded{suffix}"


def trials_tag(state: str) -> str:
    """The parent run's count of trials in Optuna state ``state``."""
    return f"{TRIALS_TAG_PREFIX}{state.lower()}"


class Stage:
    """What a trial is for; grid and search jobs carry it in their key's first field."""

    GRID = "grid"
    SEARCH = "search"
    CONFIRM = "confirm"


SEARCH_KEY_PREFIX = "search|"
CONFIRM_KEY_PREFIX = "confirm|"

#: Optuna trial states by name: finished for good, and held (not to be enqueued again)
DONE = ("COMPLETE", "PRUNED")
LIVE = (*DONE, "RUNNING", "WAITING")


def stage_of(job_key: str | None) -> str:
    """The stage of a job key: search (also a sampled trial that has no key yet), confirm or grid."""
    if job_key is None or job_key.startswith(SEARCH_KEY_PREFIX):
        return Stage.SEARCH
    return Stage.CONFIRM if job_key.startswith(CONFIRM_KEY_PREFIX) else Stage.GRID


def seed_metric(metric: str, seed: int, prefix: str = "tune_") -> str:
    """The metric a search run logs one training seed's value under: ``tune_<metric>_seed<k>``
    (``prefix`` "" for a search without a tune split)."""
    return f"{prefix}{metric}_seed{seed}"
