"""Typed, validated configuration: the schema, parsing, overrides and range checks.

A config is a tree of dataclasses.  It is read from YAML, patched with
``--set key=value`` overrides and validated in one place, so every entry point
(CLI, Python API, pipeline component) rejects a bad value with the same
one-line message naming the key, the value and the allowed range.

This module is a leaf: it knows nothing of tasks, data or models. Checks that
need the task (its hyperparameters, metrics, data sources) run when a
:class:`shieldtune.job.Job` is resolved from the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shieldtune.errors import ConfigError, first_line, is_existing_file

T = TypeVar("T")

#: Where tuning jobs write their folders (one per run) unless tuner.output_dir says otherwise.
DEFAULT_OUTPUT_DIR = "shieldtune-runs"

#: Longest string value accepted anywhere in a config (paths, names, constraints).
MAX_STRING = 4096

#: Largest config file read (a real one is a few kB; a huge one is refused before parsing).
MAX_CONFIG_BYTES = 1_000_000

#: Longest task.kwargs (as JSON) and deepest nesting accepted.
MAX_KWARGS_CHARS = 65536
MAX_KWARGS_DEPTH = 8


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}


def _choices(*options: str) -> dict[str, Any]:
    return {"choices": options}


def _pattern(regex: str, example: str) -> dict[str, Any]:
    return {"pattern": (re.compile(regex), example)}


#: A Kubernetes object name (DNS-1123 subdomain, as Secrets, PVCs and ServiceAccounts use).
_K8S_NAME = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_K8S_QUANTITY = r"[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?"


@dataclass
class HyperparameterSpec:
    """One tunable dimension: the actions move it down, keep it, or move it up."""

    #: A built-in hyperparameter (learning_rate, batch_size, weight_decay, momentum, adv_mix)
    #: or one the task adds (see shieldtune.tasks.TaskHyperparameter).
    name: str = field(
        default="learning_rate", metadata=_pattern(r"[A-Za-z_][A-Za-z0-9_]{0,63}", "dropout")
    )
    #: The starting value (within [low, high]; rounded when ``integer``).
    init: float = 0.05
    #: Lower bound: actions that would go below it are masked (must be > 0 with scale log).
    low: float = 1e-4
    #: Upper bound: actions that would go above it are masked (must exceed ``low``).
    high: float = 1.0
    #: ``log``: multiply/divide by ``factor``; ``linear``: add/subtract ``factor``.
    scale: str = field(default="log", metadata=_choices("log", "linear"))
    #: Step of one move: the multiplier (``log``, must exceed 1) or the amount added (``linear``).
    factor: float = field(default=2.0, metadata=_range(1e-9, None))
    #: Round every value to a whole number (required for batch_size).
    integer: bool = False
    #: ``constant``: a segment trains at the level the actions set. ``cosine``: at that level
    #: times a cosine decay over the episode's budget (to ``schedule_floor`` of it at the
    #: end), so "keep" everywhere is cosine annealing and the actions deviate from it.
    schedule: str = field(default="constant", metadata=_choices("constant", "cosine"))
    #: With ``cosine``: the share of the level a segment trains at by the episode's end.
    schedule_floor: float = field(default=0.0, metadata=_range(0.0, 1.0))
    #: The baseline's move for this dimension while the run's state is not certified safe:
    #: ``up`` for a safety lever such as ``adv_mix`` (a ramp), ``down``, or ``none`` (keep).
    #: The controller follows this baseline unless it is confident another move is better.
    ramp: str = field(default="none", metadata=_choices("none", "up", "down"))


@dataclass
class TaskConfig:
    """Which model and data are tuned (see docs/tasks.md)."""

    #: A built-in task (mnist-cnn, breast-cancer, japanese-vowels) or an import string
    #: ``package.module:factory`` whose ``factory(**kwargs)`` returns a shieldtune Task.
    entry_point: str = field(
        default="mnist-cnn",
        metadata=_pattern(r"[A-Za-z0-9_.:-]{1,512}", "my_pkg.tasks:make_task"),
    )
    #: Keyword arguments of the factory (model widths, variants, ...).
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the task's data is and how it is split; each task reads what applies to it."""

    #: The task's data source (mnist-cnn: ``bundled`` real 10k sample, offline;
    #: ``torchvision`` download; ``idx`` local folder). Tasks list what they accept.
    source: str = field(default="bundled", metadata=_pattern(r"[a-z0-9][a-z0-9_-]{0,63}", "idx"))
    #: A folder, PVC path or URI of the data, for tasks that read files.
    root: str | None = None
    #: Split sizes; unset means the task's own default.
    train_size: int | None = field(default=None, metadata=_range(2, 100_000_000))
    #: Validation split size; unset means the task's own default. Steps are evaluated and
    #: certified on it.
    val_size: int | None = field(default=None, metadata=_range(2, 100_000_000))
    #: Test split size; unset means the task's own default. The final report attacks all of it.
    test_size: int | None = field(default=None, metadata=_range(2, 100_000_000))
    #: Seed of the permutation that draws the three splits (separate from tuner.seed), so
    #: runs with the same value see the same samples.
    split_seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    #: DataLoader worker processes for tasks whose data is not held in memory.
    loader_workers: int = field(default=0, metadata=_range(0, 64))


@dataclass
class TrainingConfig:
    """Fixed values for every hyperparameter that the search space does not tune."""

    #: The model's optimizer: ``sgd`` (with ``momentum``) or ``adam`` (``momentum`` is its beta1).
    optimizer: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    #: Optimizer learning rate, unless the search space tunes it.
    learning_rate: float = field(default=0.05, metadata=_range(1e-8, 10.0))
    #: Training samples per optimizer step, unless the search space tunes it.
    batch_size: int = field(default=64, metadata=_range(1, 8192))
    #: The optimizer's L2 weight decay (torch's coupled form, for Adam too), unless tuned.
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    #: SGD momentum, or Adam's beta1, unless the search space tunes it.
    momentum: float = field(default=0.9, metadata=_range(0.0, 0.999))
    #: Share of each batch replaced by FGSM examples (adversarial training); 0 disables it.
    adv_mix: float = field(default=0.0, metadata=_range(0.0, 1.0))
    #: A segment whose mean loss exceeds this (or is NaN/inf) counts as diverged.
    max_loss: float = field(default=100.0, metadata=_range(1e-3, 1e12))
    #: Training samples processed per environment step (one segment).
    segment_samples: int = field(default=3000, metadata=_range(1, 10_000_000))
    #: Fixed values of hyperparameters the task adds (e.g. dropout), where not its defaults.
    task_hyperparameters: dict[str, float] = field(default_factory=dict)
    #: Where a step trains and evaluates: ``auto`` (the first GPU if there is one), ``cpu``,
    #: ``cuda`` or ``cuda:N``.
    device: str = field(default="auto", metadata=_pattern(r"auto|cpu|cuda(:[0-9]{1,2})?", "cuda:0"))
    #: Torch CPU threads of the process that trains (``shieldtune tune``, ``evaluate``, the
    #: pipeline's tasks); null: OMP_NUM_THREADS if set, else half the cores, at most 4.
    #: Process workers use tuner.worker_threads, step pods their CPU limit.
    threads: int | None = field(default=None, metadata=_range(1, 1024))
    #: Mixed precision for training forward passes (bfloat16 autocast); attacks and
    #: evaluation stay in float32.
    amp: bool = False
    #: Radius of the adversarial examples ``adv_mix`` trains on (default: safety.epsilon,
    #: the radius the spec is evaluated at).
    adv_epsilon: float | None = field(default=None, metadata=_range(0.0, 100.0))
    #: How they are made: ``fgsm`` (one step) or ``pgd`` (``adv_pgd_steps`` steps from a
    #: random start; stronger, costs that many more forward/backward passes).
    adv_attack: str = field(default="fgsm", metadata=_choices("fgsm", "pgd"))
    #: PGD steps per adversarial training example when ``adv_attack`` is ``pgd`` (step size
    #: 2.5 x radius / steps).
    adv_pgd_steps: int = field(default=3, metadata=_range(1, 100))


@dataclass
class SafetyConfig:
    #: Constraints ``METRIC >= VALUE`` or ``METRIC <= VALUE``; all must hold.
    constraints: list[str] = field(default_factory=lambda: ["fgsm_robust_acc >= 0.70"])
    #: L-inf attack radius in the task's input units (pixels in [0, 1] for images,
    #: standardised units for the built-in tabular and speech tasks).
    epsilon: float = field(default=0.1, metadata=_range(0.0, 100.0))
    #: Gradient steps of the PGD attack behind ``pgd_robust_acc`` (step size 2.5 x epsilon /
    #: steps); more is a stronger, slower attack.
    pgd_steps: int = field(default=10, metadata=_range(1, 1000))
    #: Random starts of that PGD attack; a sample counts as robust only if no restart fools it.
    pgd_restarts: int = field(default=2, metadata=_range(1, 100))
    #: Confidence of every safety decision: a state is certified safe only when the
    #: pessimistic ends of its metrics' confidence bounds meet the spec at this level.
    confidence: float = field(default=0.95, metadata=_range(0.5, 0.9999))
    #: Validation samples attacked at a step's first look; undecided states get twice as
    #: many, and so on up to ``eval_samples_max`` (sequential evaluation).
    eval_samples: int = field(default=200, metadata=_range(1, 10_000_000))
    #: The most validation samples one step attacks (at most the whole split; the final
    #: report attacks the whole test split).
    eval_samples_max: int = field(default=1000, metadata=_range(1, 10_000_000))
    #: Members and non-members each for membership inference (at most the smaller split);
    #: half of each calibrates the attack's threshold, the other half scores it.
    mia_samples: int = field(default=1000, metadata=_range(4, 10_000_000))
    #: With a PGD constraint (some 20 passes a sample): the samples of the one look a state
    #: gets when it cannot be selected (its accuracy does not beat the job's best certified
    #: state), enough for the point estimate the controller learns from.
    screen_samples: int = field(default=50, metadata=_range(1, 10_000_000))


@dataclass
class EnvConfig:
    #: Segments per episode. The default spends the whole budget in one training run (one
    #: episode), as a hand schedule does; the controller steers it.
    steps_per_episode: int = field(default=48, metadata=_range(1, 10000))
    search_space: list[HyperparameterSpec] = field(
        default_factory=lambda: [
            HyperparameterSpec("learning_rate", 0.05, 0.003, 0.8, "log", 2.0, False, "cosine"),
            HyperparameterSpec("batch_size", 64.0, 16.0, 512.0, "log", 2.0, True),
            HyperparameterSpec("adv_mix", 0.0, 0.0, 0.5, "linear", 0.125, False, ramp="up"),
        ]
    )


@dataclass
class ShieldConfig:
    #: Let the safety critic mask actions (and keep a just-rolled-back action masked once);
    #: false: only the search space's bounds limit them (rollback is ``rollback``'s switch).
    enabled: bool = True
    #: Restore the last safe checkpoint when a trained segment breaks a constraint.
    rollback: bool = True
    #: An action is masked when its predicted cost exceeds ``-margin``.
    margin: float = field(default=0.0, metadata=_range(-1.0, 1.0))
    #: Width of each of the safety critic's two hidden layers.
    critic_hidden: int = field(default=64, metadata=_range(1, 4096))
    #: Adam learning rate of the safety critic.
    critic_lr: float = field(default=1e-3, metadata=_range(1e-8, 1.0))
    #: Observed costs needed before the critic is trusted to mask anything.
    critic_min_samples: int = field(default=4, metadata=_range(1, 1_000_000))
    #: Transitions sampled from the replay buffer (shared with the agent) per critic update.
    critic_batch_size: int = field(default=32, metadata=_range(1, 65536))
    #: Critic regression steps per learning update (one per round of environment steps);
    #: 0: the critic never learns.
    critic_updates_per_step: int = field(default=8, metadata=_range(0, 1000))
    #: Reward penalty per unit of cost (the Lagrangian-style alternative to masking).
    cost_penalty: float = field(default=0.0, metadata=_range(0.0, 1e6))
    #: Reward per unit of spec violation an accepted segment removes (shaping with the
    #: potential -max(cost, 0)), so the agent is steered toward safety before it is safe.
    safety_shaping: float = field(default=1.0, metadata=_range(0.0, 1e6))
    #: Until an episode is first safe, allow only actions the critic predicts to lower the
    #: cost (the lowest-predicted one always stays): first reduce cost, then raise accuracy.
    warmup_shield: bool = True
    #: Cost recorded for a diverged segment (NaN/inf loss).
    divergence_cost: float = field(default=1.0, metadata=_range(0.0, 1e6))
    #: A segment whose validation accuracy falls this far below the accepted state's is a
    #: collapse (e.g. a learning rate that kills the network): rolled back even before the
    #: episode was first safe, since nothing would recover from it; null: never.
    collapse_drop: float | None = field(default=0.2, metadata=_range(0.0, 1.0))


@dataclass
class AgentConfig:
    #: Width of each of the DQN Q-network's two hidden layers.
    hidden: int = field(default=64, metadata=_range(1, 4096))
    #: Adam learning rate of the Q-network.
    learning_rate: float = field(default=1e-3, metadata=_range(1e-8, 1.0))
    #: Discount factor of future rewards in the TD target.
    gamma: float = field(default=0.9, metadata=_range(0.0, 1.0))
    #: Replay buffer capacity in transitions (the oldest are overwritten); the critic shares it.
    buffer_size: int = field(default=10000, metadata=_range(1, 10_000_000))
    #: Transitions sampled from the replay buffer per Q-network gradient step.
    batch_size: int = field(default=32, metadata=_range(1, 65536))
    #: Transitions stored before the Q-network is first updated.
    learning_starts: int = field(default=4, metadata=_range(0, 10_000_000))
    #: Q-network gradient steps per learning update (one per round of environment steps);
    #: 0: the agent never learns.
    gradient_steps: int = field(default=4, metadata=_range(0, 1000))
    #: Polyak factor for the target network; 1.0 copies it every ``target_update_interval``.
    tau: float = field(default=1.0, metadata=_range(1e-6, 1.0))
    #: Gradient steps between copies of the Q-network into the target network (with tau 1.0).
    target_update_interval: int = field(default=10, metadata=_range(1, 10_000_000))
    #: Exploration rate at the start: the chance of a random allowed action instead of the
    #: greedy one.
    epsilon_start: float = field(default=0.1, metadata=_range(0.0, 1.0))
    #: Exploration rate after the decay (at most ``epsilon_start``).
    epsilon_end: float = field(default=0.02, metadata=_range(0.0, 1.0))
    #: Transitions (steps of all environments) over which epsilon falls linearly to its end.
    epsilon_decay_steps: int = field(default=48, metadata=_range(1, 10_000_000))
    #: Huber loss threshold: TD errors beyond it (in scaled reward units) count linearly.
    huber_delta: float = field(default=1.0, metadata=_range(1e-6, 1e6))
    #: Q-network gradients are clipped to this L2 norm per step.
    max_grad_norm: float = field(default=10.0, metadata=_range(1e-6, 1e6))
    #: Double DQN targets: the online network picks the next action, the target network values
    #: it (less overestimation); false: the target network's max.
    double_dqn: bool = True
    #: Rewards (accuracy gains, fractions) are multiplied by this before learning.
    reward_scale: float = field(default=10.0, metadata=_range(1e-6, 1e6))
    #: Safe improvement over a baseline: the greedy choice leaves "keep" (the baseline
    #: schedule) only when its Q-value beats keep's by at least this much; null: plain argmax.
    baseline_margin: float | None = field(default=0.5, metadata=_range(0.0, 1e6))
    #: Exploration rate while the episode has not yet been safe (when above the decayed
    #: epsilon): trying moves is how the safety critic learns which of them lower the cost.
    epsilon_unsafe: float = field(default=0.0, metadata=_range(0.0, 1.0))


@dataclass
class TunerConfig:
    #: Training runs; the default is one run over the whole budget (see env.steps_per_episode).
    episodes: int = field(default=1, metadata=_range(1, 100000))
    #: Seed of the job: model initialisation, the controller's networks and exploration, the
    #: members' start levels and the attacks' random starts.
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    #: Stop early once a feasible model reaches this validation accuracy.
    target_val_acc: float | None = field(default=None, metadata=_range(0.0, 1.0))
    #: Stop once this many trained segments broke a constraint.
    max_violations: int | None = field(default=None, metadata=_range(0, 10_000_000))
    #: Folder under which each run gets its own folder (best_model.pt, agent.pt, summary.json,
    #: the state that ``--resume`` reads).
    output_dir: str = DEFAULT_OUTPUT_DIR
    #: Evaluate the best checkpoint on the test split at the end (and register it). The
    #: pipeline turns this off: its evaluate_safety stage owns the test report.
    test_report: bool = True
    #: A policy file to start the controller from: ``agent.pt`` of an earlier run (the
    #: retuning path) or one ``shieldtune pretrain`` wrote; null: cold.
    warm_start: str | None = None
    #: Who trains each step: ``local`` (this process), ``process`` (a pool of ``num_envs``
    #: worker processes here) or ``kubernetes`` (one Job per step; see the ``kubernetes`` keys).
    executor: str = field(default="local", metadata=_choices("local", "process", "kubernetes"))
    #: Environments stepped at once; the DQN and the critic learn from all of them. With one
    #: episode (the default) these are a *population* of that many training runs (members)
    #: learning together, with PBT's exploit under the shield; with more episodes they take
    #: the episodes in turn.
    num_envs: int = field(default=1, metadata=_range(1, 256))
    #: A population member's budget: ``full`` (each trains the whole episode: N times the
    #: samples in the wall time of one run on N workers) or ``split`` (the episode's segments
    #: shared out, env.steps_per_episode / N each: the samples of one run).
    member_budget: str = field(default="full", metadata=_choices("full", "split"))
    #: Every this many segments, a member behind (bottom exploit_fraction by validation
    #: accuracy) or not certified safe copies a certified-safe member from the top; 0: never;
    #: null: a quarter of a member's segments (at least 2).
    exploit_interval: int | None = field(default=None, metadata=_range(0, 10000))
    #: Share of the population (at least one member) ranked top, as donors, and bottom, as
    #: copiers, by the exploit step.
    exploit_fraction: float = field(default=0.25, metadata=_range(0.01, 0.5))
    #: A step whose worker process or pod fails (or is evicted) is retried this many times,
    #: then the job stops with an error naming the step.
    step_retries: int = field(default=2, metadata=_range(0, 20))
    #: Also keep the crash-safe controller state in the MLflow run (``controller/``), so a
    #: retried KFP tune task on a fresh pod resumes it; the pipeline turns this on.
    checkpoint_to_mlflow: bool = False
    #: Torch threads per ``process`` worker (default: this machine's cores / num_envs).
    worker_threads: int | None = field(default=None, metadata=_range(1, 1024))
    #: Show a progress bar of the tuning steps.
    progress: bool = True


@dataclass
class KubernetesConfig:
    """Step Jobs of the ``kubernetes`` executor (see docs/cluster.md)."""

    #: Namespace for the step Jobs; default: the controller pod's own namespace in a
    #: cluster, else the kubeconfig context's namespace, else ``default``.
    namespace: str | None = field(
        default=None, metadata=_pattern(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "team-a")
    )
    #: kubeconfig context when running outside a cluster (default: the current context).
    context: str | None = None
    #: Container image of the step pods; it must hold shieldtune (a CUDA one for ``gpus``).
    image: str = field(
        default="shieldtune:0.1.0-cpu",
        metadata=_pattern(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}", "shieldtune:0.1.0-cpu"),
    )
    #: Kubernetes ``imagePullPolicy`` of the step pods.
    image_pull_policy: str = field(
        default="IfNotPresent", metadata=_choices("IfNotPresent", "Always", "Never")
    )
    #: Step pods need no API access: this account should have no RBAC and no token mounted.
    service_account: str = field(default="shieldtune-step", metadata=_pattern(_K8S_NAME, "sa"))
    #: CPU request of each step pod (a Kubernetes quantity: ``1``, ``500m``).
    cpu_request: str = field(default="1", metadata=_pattern(_K8S_QUANTITY, "500m"))
    #: CPU limit of each step pod; its whole cores (at least one) are the pod's torch threads.
    cpu_limit: str = field(default="2", metadata=_pattern(_K8S_QUANTITY, "2"))
    #: Memory request of each step pod (a Kubernetes quantity: ``2Gi``).
    memory_request: str = field(default="2Gi", metadata=_pattern(_K8S_QUANTITY, "2Gi"))
    #: Memory limit of each step pod; a pod beyond it is killed and the step retried.
    memory_limit: str = field(default="4Gi", metadata=_pattern(_K8S_QUANTITY, "4Gi"))
    #: ``nvidia.com/gpu`` per step pod (use the CUDA image with it).
    gpus: int = field(default=0, metadata=_range(0, 16))
    #: Kubernetes kills a step pod after this long (Job ``activeDeadlineSeconds``).
    active_deadline_seconds: int = field(default=1800, metadata=_range(1, 7 * 24 * 3600))
    #: Finished Jobs are garbage-collected after this long even if the controller died.
    ttl_seconds_after_finished: int = field(default=600, metadata=_range(0, 7 * 24 * 3600))
    #: Pod restarts inside one Job; 0 because the controller retries by creating a new Job
    #: (``tuner.step_retries``), so every attempt is visible and bounded.
    backoff_limit: int = field(default=0, metadata=_range(0, 20))
    #: Seconds between checks of the step Jobs (API errors back off from it, up to 30 s).
    poll_seconds: float = field(default=2.0, metadata=_range(0.05, 600))
    #: How step files travel: ``mlflow`` (artifacts of the tuning run) or ``volume`` (a PVC
    #: mounted by the controller and the step pods).
    transport: str = field(default="mlflow", metadata=_choices("mlflow", "volume"))
    #: PersistentVolumeClaim the step pods mount; required when ``transport`` is ``volume``.
    volume_claim: str | None = field(default=None, metadata=_pattern(_K8S_NAME, "shieldtune-steps"))
    #: Where step pods mount ``volume_claim``.
    volume_mount_path: str = field(default="/shared", metadata=_pattern(r"/[^\0]{0,4095}", "/x"))
    #: Where the controller sees that volume (default: ``volume_mount_path``).
    controller_volume_path: str | None = None
    #: Secret whose keys become the step pods' environment (MLflow URI and credentials).
    mlflow_secret: str = field(default="shieldtune-mlflow", metadata=_pattern(_K8S_NAME, "s"))


@dataclass
class TrackingConfig:
    #: Log the job to MLflow (MLFLOW_TRACKING_URI, else mlflow.db in the working folder);
    #: false: only the run's local folder is written.
    enabled: bool = True
    #: MLflow experiment the job's runs go to (created if missing).
    experiment: str = field(
        default="shieldtune", metadata=_pattern(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,254}", "team-a")
    )
    #: Name of the job's parent run (its episode and member runs are named after it);
    #: default: ``tune-<task>-<UTC time>``.
    run_name: str | None = None
    #: Default: ``shieldtune-<task name>``.
    registered_model_name: str | None = field(
        default=None,
        metadata=_pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", "shieldtune-mnist-cnn"),
    )
    #: Log and register the best certified model and decide its promotion; false: nothing
    #: is registered.
    log_model: bool = True
    #: MLflow HTTP retries per request, with exponential backoff (factor * 2**n seconds);
    #: after them the job stops with a clear error and can be resumed.
    http_retries: int = field(default=5, metadata=_range(0, 10))
    #: Backoff factor of those MLflow HTTP retries, in seconds (an already set
    #: MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR environment variable wins).
    http_backoff_factor: int = field(default=1, metadata=_range(0, 60))


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80


def _show(value: Any) -> str:
    """``repr(value)`` cut to one short line, for error messages about arbitrary input.

    Safe for what a plain ``repr`` chokes on: integers too long to print (ValueError),
    5000-character strings and YAML alias bombs (a gigantic message).
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int with more digits than Python turns into text
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(meta: dataclasses.Field) -> str:
    lo, hi = meta.metadata.get("range", (None, None))
    if lo is not None and hi is not None:
        return f"[{lo}, {hi}]"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def _convert(key: str, value: Any, annotation: Any, meta: dataclasses.Field | None) -> Any:
    """Coerce ``value`` to ``annotation`` or raise a one-line :class:`ConfigError`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(key, value, args[0], meta)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be a list")
        return [_convert(f"{key}[{i}]", v, item_type, None) for i, v in enumerate(value)]
    if origin is dict:
        return _convert_mapping(key, value, typing.get_args(annotation)[1])
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be a mapping")
        return _build(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be true or false")
        return value
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())  # also NaN and inf
        ):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be an integer")
        value = int(value)
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be a number")
        try:
            value = float(value)
        except OverflowError:  # an int beyond the float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be a finite number")
    elif annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' = {_show(value)} must be a string")
        if len(value) > MAX_STRING:
            raise ConfigError(
                f"config key '{key}' is {len(value)} characters long; at most {MAX_STRING}"
            )
        if "\x00" in value:
            raise ConfigError(f"config key '{key}' contains a NUL character")
    if meta is not None:
        pattern = meta.metadata.get("pattern")
        if pattern is not None and not pattern[0].fullmatch(value):
            raise ConfigError(
                f"config key '{key}' = {_show(value)} is malformed; expected something like "
                f"{pattern[1]!r}"
            )
        choices = meta.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"config key '{key}' = {_show(value)} is not allowed; "
                f"choose one of {', '.join(choices)}"
            )
        lo, hi = meta.metadata.get("range", (None, None))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(
                f"config key '{key}' = {_show(value)} is out of range; allowed: {_describe(meta)}"
            )
    return value


def _convert_mapping(key: str, value: Any, value_type: Any) -> dict[str, Any]:
    """A mapping with identifier keys; plain data (YAML/JSON scalars, lists, mappings) as
    values when ``value_type`` is ``Any``."""
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}' = {_show(value)} must be a mapping")
    for name in value:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
            raise ConfigError(f"config key '{key}' has a malformed key {_show(name)}")
    if value_type is not Any:
        return {k: _convert(f"{key}.{k}", v, value_type, None) for k, v in value.items()}
    _check_plain(key, value, 0)
    size = len(json.dumps(value))
    if size > MAX_KWARGS_CHARS:
        raise ConfigError(
            f"config key '{key}' is {size} characters as JSON; at most {MAX_KWARGS_CHARS}"
        )
    return dict(value)


def _check_plain(key: str, value: Any, depth: int) -> None:
    """Plain, finite, JSON-representable data, nested at most ``MAX_KWARGS_DEPTH`` deep."""
    if depth > MAX_KWARGS_DEPTH:
        raise ConfigError(f"config key '{key}' is nested more than {MAX_KWARGS_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"config key '{key}' has a non-string key {_show(k)}")
            _check_plain(f"{key}.{k}", v, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(f"{key}[{i}]", v, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' = {_show(value)} must be a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        raise ConfigError(f"config key '{key}' = {_show(value)} is too large")
    elif isinstance(value, str) and (len(value) > MAX_STRING or "\x00" in value):
        raise ConfigError(f"config key '{key}' holds an overlong string or a NUL character")
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise ConfigError(f"config key '{key}' = {_show(value)} must be plain data")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in fields:
            shown = name if isinstance(name, str) else _show(name)
            where = f"{prefix}.{shown}" if prefix else shown
            raise ConfigError(
                f"unknown config key {_show(where)}; known keys here: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(key, data[name], hints[name], f)
    return cls(**kwargs)


def _check_cross_field(cfg: Config) -> None:
    """Rules that involve more than one key."""
    if cfg.agent.epsilon_end > cfg.agent.epsilon_start:
        raise ConfigError(
            f"config key 'agent.epsilon_end' = {cfg.agent.epsilon_end} must not exceed "
            f"agent.epsilon_start = {cfg.agent.epsilon_start}"
        )
    if cfg.safety.eval_samples > cfg.safety.eval_samples_max:
        raise ConfigError(
            f"config key 'safety.eval_samples' = {cfg.safety.eval_samples} exceeds "
            f"safety.eval_samples_max = {cfg.safety.eval_samples_max}; the first look cannot "
            "attack more than the cap"
        )
    if not cfg.env.search_space:
        raise ConfigError(
            "config key 'env.search_space' is empty; list at least one hyperparameter"
        )
    t = cfg.tuner
    if t.episodes == 1 and t.member_budget == "split" and t.num_envs > cfg.env.steps_per_episode:
        raise ConfigError(
            f"config key 'tuner.num_envs' = {t.num_envs} members cannot share "
            f"env.steps_per_episode = {cfg.env.steps_per_episode} segments "
            "(tuner.member_budget=split); use fewer members or tuner.member_budget=full"
        )
    _check_executor(cfg)
    _check_device(cfg)


def _check_device(cfg: Config) -> None:
    gpu = cfg.training.device.startswith("cuda")
    if cfg.tuner.executor == "kubernetes" and gpu and cfg.kubernetes.gpus < 1:
        raise ConfigError(
            f"training.device={cfg.training.device} runs steps on a GPU, but kubernetes.gpus "
            "is 0; request one (kubernetes.gpus=1) or use training.device=auto"
        )


def _check_executor(cfg: Config) -> None:
    k = cfg.kubernetes
    if cfg.tuner.executor != "kubernetes":
        return
    if k.transport == "volume" and not k.volume_claim:
        raise ConfigError(
            "config key 'kubernetes.volume_claim' is not set but kubernetes.transport is 'volume'; "
            "name the PersistentVolumeClaim the controller and step pods share"
        )
    if k.transport == "mlflow" and not cfg.tracking.enabled:
        raise ConfigError(
            "kubernetes.transport 'mlflow' moves step files through the tuning run's artifacts, "
            "so tracking.enabled must be true (or use kubernetes.transport=volume)"
        )


def section_from_dict(cls: type[T], data: Any, key: str) -> T:
    """One config section (``cls``, e.g. :class:`SafetyConfig`) from a mapping, checked as
    :func:`config_from_dict` checks it inside a whole config (``key`` names it in errors)."""
    return _convert(key, data, cls, None)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a :class:`Config` (the schema and the rules between keys; checks
    against the task come with :class:`shieldtune.job.Job`); raises :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data, "")
    _check_cross_field(cfg)
    return cfg


def load_yaml(text: str | bytes, *, all_documents: bool = False) -> Any:
    """``yaml.safe_load`` (or every document, with ``all_documents``), with every way it
    fails on hostile text raised as ``YAMLError``.

    PyYAML lets some input escape as other exceptions: deep nesting (RecursionError),
    integers too long for ``int()`` or impossible dates like ``2020-13-45`` (ValueError),
    ``!!timestamp x`` (AttributeError).
    """
    try:
        return list(yaml.safe_load_all(text)) if all_documents else yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise yaml.YAMLError(f"a value cannot be constructed: {first_line(exc, 100)}") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML) to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    key, _, raw = assignment.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {assignment!r} has an empty key; write section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"override {assignment!r}: value is not valid YAML ({' '.join(problem.split())})"
        ) from None
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {_show(part)} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not is_existing_file(p):
            raise ConfigError(
                f"config file {_show(str(p))} does not exist; pass an existing YAML file"
            )
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise ConfigError(f"config file {_show(str(p))} cannot be read: {exc}") from None
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {_show(str(p))} is {size} bytes; a config is at most "
                f"{MAX_CONFIG_BYTES} bytes (is this the right file?)"
            )
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {_show(str(p))} is not valid YAML{where}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {_show(str(p))} cannot be read: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {_show(str(p))} must hold a mapping of sections")
        data = loaded or {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data)


def flatten(cfg: Config) -> dict[str, str]:
    """Flatten a config to ``section.key -> str`` pairs (for MLflow params)."""
    out: dict[str, str] = {}

    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if isinstance(value, list | dict):  # lists and mappings (task.kwargs) in YAML flow
                text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            else:
                text = str(value)
            out[f"{section}.{key}"] = text
    return out
