"""Request and response bodies (Pydantic): the OpenAPI document is generated from these.

Every value a client sends is bounded here, by the annotated types below rather than by checks in
the routes: identifiers match ID_PATTERN, free text has a length and no control characters (NUL
included), integers fit the database's 64-bit columns, floats are finite. So a malformed body is a
422 naming the field, and nothing unbounded reaches the database, the file system or a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from data.schema import CONTROL_CHARS
from services.auth import Role
from training.recap_config import BETA_MAX  # torch-free

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
PRINTABLE = f"^[^{CONTROL_CHARS}]*$"  # no control characters (C0, DEL, C1): the store's rule for names
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=128, pattern=PRINTABLE)]
LongText = Annotated[str, StringConstraints(max_length=1000, pattern=PRINTABLE)]
FsPath = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=PRINTABLE)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# a training-config override: a scalar or a short list of scalars (the worker builds typed configs from them)
Scalar = bool | Int64 | Finite | Text | None
Param = Scalar | Annotated[list[Scalar], Field(max_length=64)]
Params = Annotated[dict[Id, Param], Field(max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(Strict):
    name: Id
    role: Role
    robot_id: Id | None = Field(None, description="Required for robot tokens: the robot this token speaks for.")


class TokenOut(BaseModel):
    name: str
    role: Role
    robot_id: str | None
    created_at_ns: int
    created_by: str
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once; only its sha256 is stored.")


class RobotCreate(Strict):
    id: Id
    group: Id = "default"


class RobotOut(BaseModel):
    id: str
    group: str
    registered_at_ns: int
    last_seen_ns: int | None
    reported_version: str | None
    assigned_version: str | None


class Heartbeat(Strict):
    version: Text | None = Field(None, description="The policy version the robot runs now.")


class EpisodeOut(BaseModel):
    id: str
    robot_id: str
    task_id: str
    instruction: str
    status: str
    outcome: str
    outcome_labeller: str | None
    num_ticks: int
    num_correction_ticks: int
    num_hold_ticks: int = 0
    num_takeovers: int = 0
    evaluation: bool = Field(False, description="recorded to evaluate a policy: held out, never selected for training")
    correction_rate: float
    fps: float
    start_time_ns: int
    end_time_ns: int
    policy_versions: list[str]
    cameras: list[str] = []
    mistake_to_takeover_s: list[float] = Field([], description="per takeover whose mistake is known (recorded by the "
                                                            "teleoperator station or marked on the review page): "
                                                            "seconds from the policy's mistake to the takeover")


class LabelIn(Strict):
    outcome: Literal["success", "failure", "unknown"]


class EvaluationFlag(Strict):
    episode_ids: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ID_PATTERN)]],
                           Field(min_length=1, max_length=10_000)]
    evaluation: bool = Field(True, description="true: held out for evaluation, never selected for training")


class EpisodeRegister(Strict):
    episode_id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


Sha256 = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class IngestOpen(Strict):
    """A robot starts (or resumes) shipping one committed episode (robot_bridge/shipper.py)."""

    episode_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    sha256: Sha256 = Field(description="sha256 of the episode as a tar (data.transfer.EpisodeTar).")
    size: int = Field(ge=1, le=2**63 - 1, description="Bytes of that tar.")


class IngestCommit(Strict):
    outcome: Literal["success", "failure", "unknown"] | None = Field(
        None, description="The robot's newest outcome label made after the episode's commit, if any.")


class IngestOut(BaseModel):
    episode_id: str
    sha256: str
    size: int
    offset: int = Field(description="Bytes the central side holds verified: send the next chunk from here.")
    status: Literal["receiving", "done"] = Field(description="done: the episode is in the store and the catalog, "
                                                             "verified.")


class UploadForm(Strict):
    """The text fields of an upload's form (the archive is the `file` part)."""

    robot_id: str = Field("upload", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                          description="LeRobot datasets: the robot the new episodes are recorded for.")
    task_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                                description="LeRobot datasets: the task (default: from the dataset's task text).")


class UploadJobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "finished", "refused", "failed"]
    phase: str
    progress: float
    format: Literal["zarr", "lerobot"] | None
    episode_ids: list[str] = Field(description="The new episodes, once the import has finished.")
    error: str | None = Field(description="Why the upload was refused, or that the import failed.")
    uploaded_by: str | None
    status_url: str


class Selection(Strict):
    robot: Annotated[list[Text], Field(max_length=1000)] | None = None
    task: Annotated[list[Text], Field(max_length=1000)] | None = None
    outcome: list[Literal["success", "failure", "unknown"]] | None = None
    policy_version: Annotated[list[Text], Field(max_length=1000)] | None = None
    status: list[Literal["complete", "incomplete"]] | None = None
    since_ns: int | None = Field(None, ge=0, le=2**63 - 1)
    until_ns: int | None = Field(None, ge=0, le=2**63 - 1)

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Recipe(Strict):
    """Each section overrides one typed config and is checked against it here (training/recipe.py:
    unknown fields, non-finite or out-of-range values are a 422 naming the field); the worker fills
    in the rest from the config's defaults and prints them all at the start of the run."""

    value: Params = Field(default_factory=dict, description=(
        "ValueConfig overrides (steps, hidden, batch_size, lr, ensemble, cross_fit, backbone…; "
        "training/value/configuration_value.py)"))
    policy: Params = Field(default_factory=dict, description=(
        'The policy type and overrides of its config: {"type": "native_flow" (default) | "lerobot:act" | '
        '"lerobot:diffusion" | "lerobot:smolvla" | "lerobot:pi0" | "lerobot:pi05", ...}; checked against the '
        "type's config (training/policies/registry.py)"))
    recap: Params = Field(default_factory=dict, description=(
        "RecapConfig overrides (advantage_horizon, positive_fraction_later, indicator_dropout, cfg_beta in "
        "[0, 10], c_fail, num_bins…; training/recap_config.py)"))
    task_max_len: Annotated[dict[Text, Annotated[int, Field(ge=1, le=10**9)]], Field(max_length=1000)] = Field(
        default_factory=dict, description="Episode time limit per task (ticks)")
    cameras: Annotated[list[Text], Field(max_length=64)] = Field(default_factory=list)

    @field_validator("policy")
    @classmethod
    def _policy_fits_its_type(cls, v: dict) -> dict:
        from training.policies.registry import validate_policy_recipe  # torch-free: configs only

        return validate_policy_recipe(v)  # a RecipeError (a ValueError) names the field: a 422

    @field_validator("value", "recap")
    @classmethod
    def _section_fits_its_config(cls, v: dict, info: ValidationInfo) -> dict:
        from training.recipe import check_section  # torch-free: configs only

        return check_section(info.field_name, v)  # "recap.advantage_horizon: ..." in the 422

    @model_validator(mode="after")
    def _selection_fits_the_policy(self) -> "Recipe":
        from training.recipe import check_selection  # torch-free

        check_selection(self.policy, self.recap)  # "recap.select_chunks: ..." in the 422
        return self


class RunCreate(Strict):
    method: Literal["bc", "hg_dagger", "filtered_bc", "awr", "recap"] = "recap"
    selection: Selection = Field(default_factory=Selection)
    recipe: Recipe = Field(default_factory=Recipe)
    first_fit: bool = Field(False, description="Demonstrations-only first fit: indicator fixed to positive.")
    parent_version: Text | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1)


class RunOut(BaseModel):
    id: str
    status: str
    phase: str
    progress: float
    attempts: int
    spec: dict[str, Any]
    created_at_ns: int
    started_at_ns: int | None
    finished_at_ns: int | None
    created_by: str
    version_id: str | None
    error: str | None
    metrics: dict[str, Any]


class VersionCreate(Strict):
    artifact_dir: FsPath
    parent_version: Text | None = None


class VersionOut(BaseModel):
    id: str
    run_id: str | None
    artifact_dir: str
    manifest_sha256: str
    policy_type: str
    parent_version: str | None
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    created_at_ns: int
    created_by: str


class DeploymentCreate(Strict):
    version: Annotated[Text, Field(min_length=1)]
    target_kind: Literal["robot", "group", "fleet"] = "fleet"
    target: Annotated[Text, Field(min_length=1)] = "*"
    stage: Literal["canary", "widen", "deploy"] = "deploy"
    note: LongText = ""
    beta: Annotated[float, Field(ge=0, le=BETA_MAX, allow_inf_nan=False, strict=True)] | None = Field(None, description=(
        f"Serve the version with this classifier-free guidance strength β in [0, {BETA_MAX:g}] on this target "
        "(1: conditioned on 'positive' without guidance). Default: the artifact's, the β its run was evaluated with."))
    gate: GateIn | None = Field(None, description=(
        "A canary on one robot under a gate: after `min_episodes` episodes it is compared with the rest of the fleet "
        "and widened to the fleet or rolled back automatically (services/canary.py)"))


class GateIn(Strict):
    min_episodes: int = Field(10, ge=1, le=100_000, description=(
        "Counted episodes the canary (and the rest of the fleet, over the same window) must have before the gate decides"))
    threshold: float = Field(0.8, ge=0.5, lt=1.0, allow_inf_nan=False, description=(
        "Roll back when the posterior probability that the canary is worse (success or takeovers per robot-hour) "
        "reaches this (services/canary.py)"))


class RollbackIn(Strict):
    target_kind: Literal["robot", "group", "fleet"] = "fleet"
    target: Annotated[Text, Field(min_length=1)] = "*"


class DeploymentOut(BaseModel):
    id: int
    target_kind: str
    target: str
    version_id: str
    stage: str
    created_at_ns: int
    created_by: str
    note: str
    beta: float | None = Field(description="the β override it was deployed with; null: the artifact's")
    gate_id: int | None = Field(None, description="the canary gate on this deployment, if any")


class GateOut(BaseModel):
    id: int
    deployment_id: int
    version_id: str
    robot_id: str
    baseline_version: str | None
    min_episodes: int
    threshold: float
    started_at_ns: int
    status: Literal["open", "passed", "failed", "superseded"]
    reason: str = Field(description="the decision, or what an open gate waits for, in words")
    figures: dict[str, Any] = Field(description="per side: episodes, successes, takeovers, robot-hours; the "
                                                "posterior probabilities the canary is worse")
    decided_at_ns: int | None
    decision_deployment_id: int | None = Field(description="the widen or rollback deployment the gate made")
    created_by: str


class ServingStateOut(BaseModel):
    seq: int = Field(description="serving sequence number of the state the inference servers should hold")
    robots: dict[str, str | None] = Field(description="robot -> the version it should run")
    fleet_version: str | None = Field(description="what robots the registry does not know yet run")
    betas: dict[str, float | None] = Field(description="robot -> the guidance β its version is served with; "
                                                       "null: the artifact's")
    fleet_beta: float | None = Field(description="the β of the fleet's deployment (null: the artifact's)")
    versions: list[str]
    published_seq: int | None = Field(description="the number stored in Redis; null if unreachable or "
                                                   "holding another database's state")


class AuditOut(BaseModel):
    id: int
    at_ns: int
    actor: str
    role: str
    action: str
    status: int
    detail: dict[str, Any]
