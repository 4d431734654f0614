"""Model registry on the MLflow Model Registry: families, versions, aliases, grades, sha256.

MLflow's conventions: one registered model per *family* (its ``model_type``, e.g.
``hierarchical_ppo``, ``analyst_1d``, ``ensemble``), one MLflow model version (1, 2, 3, ...)
per registration. Every registration logs the model's files (an RLlib checkpoint, RLModule
dirs, a saved supervised model or an ensemble spec) as artifacts of an MLflow run; the semantic
version, grade, metrics, DSR, lineage, data fingerprint and the sha256 manifest are tags of the
model version (``rl_trading.*``). Aliases (``champion``, ``challenger``) are set by
:meth:`ModelRegistry.promote`; :meth:`ModelRegistry.rollback` moves an alias back to its
previous holder. A model is referred to as ``NAME`` (newest version), ``NAME/VERSION`` or
``NAME@ALIAS``, with or without ``models:/``, so ``models:/hierarchical_ppo@champion`` works
with plain ``MlflowClient`` / ``mlflow.artifacts.download_artifacts``.

Old layout (before issue 30): one registered model per registration, named
``{model_type}_v{semver}_grade_{grade}_{metric}_{value}``, its tags on the registered model.
Such stores are read as they are (their names still resolve, ``models list`` shows them apart);
:meth:`ModelRegistry.migrate` (``rl-trading models migrate``) adds each one to its family as a
new version pointing at the same verified files, and then hides the old entry.

Names: MLflow forbids ``/`` and ``:`` and names that are not their own normalised path
(``..``, leading ``/``). :func:`sanitize_name` keeps ``[A-Za-z0-9_.+-]`` and turns anything
else into ``_`` (and ``..`` into ``.``).

Semantic versions within one family (first registration is ``1.0.0``):

* **major**: the model's *signature* changed (architecture, observation/action layout, feature
  set or window) — old inference code cannot feed it;
* **minor**: same signature, but trained on different data (fingerprint) or different config;
* **patch**: same signature, data and config (re-registration, re-evaluation, metadata fix).

An explicit ``bump=`` overrides the inferred part.

Grades (see :func:`score_to_grade`): each benchmark maps linearly onto a score in [0, 1]
(0 at or beyond *poor*, 1 at or beyond *excellent*). An RL policy's score is the *minimum* of
its Sharpe score (risk-adjusted return) and its drawdown score, where the drawdown is measured
with the returns scaled to ``evaluation.grade_volatility`` (``max_drawdown_vol_matched``), so a
policy sitting mostly in cash gets no credit for its small raw drawdown. A grade above C also
needs evidence that the edge is not luck: a Deflated Sharpe Ratio of at least
``evaluation.grade_min_dsr`` (0.95), deflated for every trial tried, measured on data that no
selection step saw (``untouched=True``: the test split when checkpoints were chosen on
validation); without it the grade is capped at C and the tag ``grade_capped`` says why. A
supervised model's score is its accuracy edge over the better of its own baselines
(majority class, previous direction): no edge scores 0, ``accuracy_edge_excellent`` scores 1.
Score -> grade: S >= 1.0 (every benchmark excellent), A+ >= 0.9, A >= 0.8, A- >= 0.7,
B+ >= 0.6, B >= 0.5, B- >= 0.4, C >= 0.25, D > 0, F = 0 (at or below poor).

Selection on the test split is recorded: each registration graded on the test split is tagged
``graded_split=test`` and the family's earlier test-split registrations are added to the trial
count of the next; ``models benchmark`` tags every compared model (``test_selections``), and
``promote`` records the split the promoted model was graded on.

Integrity: the sha256 of every file is stored at registration (a model-version tag, held in
the tracking database, plus a ``checksums.json`` artifact); :meth:`ModelRegistry.load_path`
re-hashes the files and raises :class:`~rl_trading.errors.RegistryError` on any changed,
missing or extra file — never a silent load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rl_trading.artifacts import sha256_file, stored_config, write_manifest
from rl_trading.config import AppConfig
from rl_trading.errors import RegistryError
from rl_trading.tracking import configure_mlflow, ensure_experiment, redact

if TYPE_CHECKING:
    from rl_trading.config import EvaluationConfig

GRADES = ["S", "A+", "A", "A-", "B+", "B", "B-", "C", "D", "F"]
# (minimum score, grade), best first; F is everything at score 0.
GRADE_THRESHOLDS: list[tuple[float, str]] = [
    (1.0, "S"),
    (0.9, "A+"),
    (0.8, "A"),
    (0.7, "A-"),
    (0.6, "B+"),
    (0.5, "B"),
    (0.4, "B-"),
    (0.25, "C"),
]
TAG = "rl_trading."
EXPERIMENT = "model_registry"
PREPROCESSING_FILE = "preprocessing.json"
CONFIG_FILE = "training_config.json"  # same name as in run-dir checkpoints (checkpoints.py)
Kind = Literal["rl", "supervised", "ensemble"]
Bump = Literal["major", "minor", "patch"]
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.+\-]")


# --------------------------------------------------------------------------------------------
# Grades, names, versions, checksums (pure functions)
# --------------------------------------------------------------------------------------------


def linear_score(value: float, poor: float, excellent: float) -> float:
    """Map `value` linearly onto [0, 1]: 0 at/beyond `poor`, 1 at/beyond `excellent`.

    Works for higher-is-better (excellent > poor) and lower-is-better (excellent < poor)
    benchmarks; NaN scores 0.
    """
    if value is None or not math.isfinite(float(value)):
        return 0.0
    if excellent == poor:
        raise RegistryError("grading benchmark has excellent == poor")
    frac = (float(value) - poor) / (excellent - poor)
    return float(min(1.0, max(0.0, frac)))


def score_to_grade(score: float) -> str:
    """Grade for a score in [0, 1] (monotone: a higher score never gets a worse grade)."""
    if not math.isfinite(score):
        return "F"
    for minimum, grade in GRADE_THRESHOLDS:
        if score >= minimum - 1e-12:
            return grade
    return "D" if score > 0 else "F"


def rl_score(sharpe: float, max_drawdown: float, ev: EvaluationConfig) -> float:
    """RL policy score: the weaker of its Sharpe and drawdown benchmark scores.

    Pass the drawdown at matched volatility (`max_drawdown_vol_matched`) so that sitting in
    cash does not earn a good drawdown score.
    """
    s = linear_score(sharpe, ev.sharpe_poor, ev.sharpe_excellent)
    d = linear_score(abs(max_drawdown), ev.max_drawdown_poor, ev.max_drawdown_excellent)
    return min(s, d)


#: Highest score a model may keep without significance on untouched data (grade C).
C_CAP = GRADE_THRESHOLDS[-2][0] - 1e-9


def cap_without_evidence(
    score: float, dsr: float | None, untouched: bool, ev: EvaluationConfig
) -> tuple[float, str]:
    """(score capped at grade C unless DSR >= grade_min_dsr on untouched data, the reason)."""
    if not untouched:
        reason = "graded on data a selection step saw"
    elif dsr is None or not math.isfinite(dsr):
        reason = "no deflated Sharpe ratio"
    elif dsr < ev.grade_min_dsr:
        reason = f"DSR {dsr:.3f} < {ev.grade_min_dsr:g}"
    else:
        return score, ""
    return (min(score, C_CAP), reason) if score > C_CAP else (score, "")


def supervised_score(accuracy: float, ev: EvaluationConfig, baseline: float = 0.5) -> float:
    """Supervised model score from its out-of-sample accuracy edge over its best baseline."""
    return linear_score(accuracy - baseline, 0.0, ev.accuracy_edge_excellent)


def grade_rl(
    sharpe: float,
    max_drawdown: float,
    ev: EvaluationConfig,
    dsr: float | None = 1.0,
    untouched: bool = True,
) -> str:
    """Grade of an RL policy from its Sharpe, drawdown at matched volatility and evidence."""
    score, _ = cap_without_evidence(rl_score(sharpe, max_drawdown, ev), dsr, untouched, ev)
    return score_to_grade(score)


def grade_supervised(accuracy: float, ev: EvaluationConfig, baseline: float = 0.5) -> str:
    """Grade of a supervised model from its accuracy over its best own baseline."""
    return score_to_grade(supervised_score(accuracy, ev, baseline))


def sanitize_name(text: str) -> str:
    """Make `text` a valid MLflow registered-model name: keep [A-Za-z0-9_.+-], else `_`."""
    out = _BAD_CHARS.sub("_", text.strip())
    while ".." in out:
        out = out.replace("..", ".")
    out = out.strip(".") or "model"
    return out


def format_metric(value: float) -> str:
    """Metric value as it appears in a model name (2 decimals, `nan` when undefined)."""
    if value is None or not math.isfinite(float(value)):
        return "nan"
    return f"{float(value):.2f}"


def model_name(model_type: str, version: str, grade: str, metric: str, value: float) -> str:
    """`{model_type}_v{version}_grade_{grade}_{metric}_{value}`, sanitised for MLflow."""
    if grade not in GRADES:
        raise RegistryError(f"unknown grade '{grade}' (one of {', '.join(GRADES)})")
    parse_version(version)
    return sanitize_name(f"{model_type}_v{version}_grade_{grade}_{metric}_{format_metric(value)}")


def parse_version(version: str) -> tuple[int, int, int]:
    """`"1.2.3"` -> (1, 2, 3); RegistryError for anything else."""
    m = _SEMVER.match(str(version))
    if not m:
        raise RegistryError(f"version '{version}' is not major.minor.patch")
    return int(m[1]), int(m[2]), int(m[3])


def bump_version(previous: str | None, part: Bump) -> str:
    """Next semantic version: None -> 1.0.0; major resets minor+patch, minor resets patch."""
    if previous is None:
        return "1.0.0"
    major, minor, patch = parse_version(previous)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise RegistryError(f"unknown version bump '{part}' (major, minor or patch)")


def infer_bump(
    previous_tags: Mapping[str, str],
    signature: str,
    data_fingerprint: str | None,
    config_hash: str | None,
) -> Bump:
    """Which part to bump versus the family's newest model (rules in the module docstring)."""
    if previous_tags.get(TAG + "signature", "") != signature:
        return "major"
    if (previous_tags.get(TAG + "data_fingerprint") or "") != (data_fingerprint or ""):
        return "minor"
    if (previous_tags.get(TAG + "config_hash") or "") != (config_hash or ""):
        return "minor"
    return "patch"


def checksum_manifest(root: str | Path) -> dict[str, str]:
    """`{relative posix path: sha256}` of every file under `root` (sorted)."""
    root = Path(root)
    if root.is_file():
        return {root.name: sha256_file(root)}
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def verify_manifest(root: str | Path, manifest: Mapping[str, str], label: str = "model") -> None:
    """Raise RegistryError unless the files under `root` match `manifest` exactly."""
    actual = checksum_manifest(root)
    missing = sorted(set(manifest) - set(actual))
    extra = sorted(set(actual) - set(manifest))
    changed = sorted(k for k in set(manifest) & set(actual) if manifest[k] != actual[k])
    if changed:
        raise RegistryError(f"{label}: sha256 mismatch for artifact '{changed[0]}' (tampered?)")
    if missing:
        raise RegistryError(f"{label}: artifact '{missing[0]}' is missing")
    if extra:
        raise RegistryError(f"{label}: unexpected artifact '{extra[0]}' (not registered)")


def _manifest_digest(manifest: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(manifest), sort_keys=True).encode()).hexdigest()


def config_hash(cfg: AppConfig | Mapping[str, Any] | None) -> str | None:
    """Short sha256 of a resolved config (for the minor-version rule)."""
    if cfg is None:
        return None
    tree = cfg if isinstance(cfg, Mapping) else cfg.model_dump(mode="json")
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass
class ModelRecord:
    """One registered model version as the CLI shows it (read from MLflow tags).

    `name` is the reference that resolves to exactly this version: ``FAMILY/VERSION`` (MLflow's
    integer version), or the old registered-model name for a record in the old layout.
    """

    name: str
    model_type: str
    kind: str
    version: str
    grade: str
    metric_name: str
    metric_value: float
    mlflow_version: str
    source: str
    run_id: str | None
    created: str
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    signature: str = ""
    stage: str = "none"
    tags: dict[str, str] = field(default_factory=dict)
    family: str = ""
    legacy: bool = False

    @property
    def display_name(self) -> str:
        """`FAMILY/VERSION (vSEMVER, grade G)`; the old pattern name for an old-layout record."""
        if self.legacy:
            return self.tags.get(TAG + "display_name", self.name)
        return f"{self.name} (v{self.version}, grade {self.grade})"

    @property
    def uri(self) -> str:
        """The plain-MLflow URI of this version (`models:/FAMILY/VERSION`)."""
        return f"models:/{self.family}/{self.mlflow_version}"


def _semver_key(version: str) -> tuple[int, int, int]:
    try:
        return parse_version(version)
    except RegistryError:
        return (-1, -1, -1)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`NAME`, `NAME/VERSION`, `NAME@ALIAS` (optionally `models:/`-prefixed) -> (name, version,
    alias); `NAME/latest` is the newest version."""
    text = ref.strip()
    if text.startswith("models:/"):
        text = text[len("models:/") :]
    if "@" in text:
        base, _, alias = text.partition("@")
        if not base or not alias:
            raise RegistryError(f"bad model reference '{ref}' (NAME, NAME/VERSION or NAME@ALIAS)")
        return base, None, alias
    if "/" in text:
        base, _, ver = text.partition("/")
        if not base or not (ver.isdigit() or ver == "latest"):
            raise RegistryError(f"bad model reference '{ref}' (NAME, NAME/VERSION or NAME@ALIAS)")
        return base, None if ver == "latest" else str(int(ver)), None
    if not text:
        raise RegistryError("empty model reference")
    return text, None, None


def _is_legacy(rm: Any) -> bool:
    """Old layout: one registered model per registration, its tags on the registered model."""
    return TAG + "version" in (rm.tags or {})


class ModelRegistry:
    """Register, list, resolve, verify-and-load, promote and roll back models (MLflow registry).

    One registered model per family (its `model_type`), MLflow's integer versions, the
    semantic version, grade, metrics, lineage and sha256 manifest as version tags, aliases
    (`champion`, `challenger`) for promotion. Old-layout stores (one registered model per
    registration) are read as they are; :meth:`migrate` copies them into families.
    """

    def __init__(self, tracking_uri: str | None = None, cfg: AppConfig | None = None) -> None:
        from mlflow import MlflowClient  # heavy: mlflow

        self.cfg = cfg or AppConfig()
        self.uri = configure_mlflow(tracking_uri or self.cfg.tracking.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reading -----------------------------------------------------------------------------

    def _records(self, include_migrated: bool = False) -> list[ModelRecord]:
        ours = [
            rm
            for rm in self.client.search_registered_models(max_results=1000)
            if TAG + "model_type" in (rm.tags or {})  # not one of ours otherwise
        ]
        by_name: dict[str, list[Any]] = {}
        if ours:
            for mv in self.client.search_model_versions(max_results=10_000):
                by_name.setdefault(mv.name, []).append(mv)
        out = []
        for rm in ours:
            versions = by_name.get(rm.name, [])
            if _is_legacy(rm):
                if versions and (include_migrated or not rm.tags.get(TAG + "migrated_to")):
                    mv = max(versions, key=lambda v: int(v.version))
                    out.append(self._record(rm, mv, legacy=True))
            else:
                out.extend(self._record(rm, mv) for mv in versions)
        return out

    def _record(self, rm: Any, mv: Any, legacy: bool = False) -> ModelRecord:
        tags = {**(rm.tags or {}), **(mv.tags or {})}
        metrics = json.loads(tags.get(TAG + "metrics", "{}"))
        lineage = json.loads(tags.get(TAG + "lineage", "{}"))
        aliases = [a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version)]
        return ModelRecord(
            name=rm.name if legacy else f"{rm.name}/{mv.version}",
            model_type=tags.get(TAG + "model_type", "?"),
            kind=tags.get(TAG + "kind", "?"),
            version=tags.get(TAG + "version", "0.0.0"),
            grade=tags.get(TAG + "grade", "F"),
            metric_name=tags.get(TAG + "metric_name", ""),
            metric_value=float(tags.get(TAG + "metric_value", "nan")),
            mlflow_version=str(mv.version),
            source=mv.source,
            run_id=mv.run_id,
            created=tags.get(TAG + "created", ""),
            aliases=sorted(aliases),
            metrics={k: float(v) for k, v in metrics.items() if v is not None},
            lineage=lineage,
            data_fingerprint=tags.get(TAG + "data_fingerprint") or None,
            signature=tags.get(TAG + "signature", ""),
            stage=tags.get(TAG + "stage", "none"),
            tags=tags,
            family=rm.name,
            legacy=legacy,
        )

    def list(self, model_type: str | None = None, grade: str | None = None) -> list[ModelRecord]:
        """Every registered rl-trading model version, newest first, optionally filtered."""
        recs = self._records()
        if model_type:
            recs = [r for r in recs if r.model_type == model_type]
        if grade:
            recs = [r for r in recs if r.grade == grade]
        return sorted(recs, key=lambda r: r.created, reverse=True)

    def families(self) -> dict[str, list[ModelRecord]]:
        """`{family: its versions, newest first}` for the new layout (old-layout records are
        under the key ``""``)."""
        out: dict[str, list[ModelRecord]] = {}
        for rec in self.list():
            out.setdefault("" if rec.legacy else rec.family, []).append(rec)
        return dict(sorted(out.items()))

    def resolve(self, name: str) -> ModelRecord:
        """A model version from `NAME` (newest version), `NAME/VERSION`, `NAME@ALIAS` (also
        with a `models:/` prefix), or an old-layout registered-model name."""
        base, version, alias = parse_ref(name)
        recs = self._records(include_migrated=True)
        legacy = [r for r in recs if r.legacy and base in (r.name, r.display_name)]
        if legacy and version is None and alias is None:
            moved = legacy[0].tags.get(TAG + "migrated_to")
            return self.resolve(moved) if moved else legacy[0]
        family = [r for r in recs if not r.legacy and r.family == base]
        if not family:  # a family with only old-layout records (not migrated yet)
            family = [r for r in recs if r.legacy and r.model_type == base]
            family = [r for r in family if not r.tags.get(TAG + "migrated_to")]
        if not family:
            raise RegistryError(f"unknown model '{name}' (see `rl-trading models list`)")
        if alias is not None:
            held = [r for r in family if alias in r.aliases]
            if not held:
                raise RegistryError(
                    f"no version of '{base}' has alias '{alias}' "
                    "(set one with `rl-trading models promote`)"
                )
            return held[0]
        if version is not None:
            match = [r for r in family if not r.legacy and r.mlflow_version == version]
            if not match:
                have = ", ".join(sorted((r.mlflow_version for r in family), key=int))
                raise RegistryError(f"'{base}' has no version {version} (versions: {have})")
            return match[0]
        return max(family, key=lambda r: (r.created, int(r.mlflow_version)))

    def info(self, name: str) -> ModelRecord:
        """Everything the registry knows about one model (unknown name -> RegistryError)."""
        return self.resolve(name)

    def load_path(self, name: str) -> Path:
        """Local directory of a model's files after verifying every sha256 (RegistryError)."""
        import mlflow  # heavy: mlflow

        rec = self.resolve(name)
        raw = rec.tags.get(TAG + "sha256_manifest")
        if not raw:
            raise RegistryError(f"model '{rec.name}' has no sha256 manifest; refusing to load")
        manifest = json.loads(raw)
        if rec.tags.get(TAG + "manifest_sha256") != _manifest_digest(manifest):
            raise RegistryError(f"model '{rec.name}': checksum manifest was altered")
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=rec.source))
        except Exception as exc:  # noqa: BLE001 - any store failure is a registry problem
            raise RegistryError(f"model '{rec.name}': cannot fetch artifacts ({exc})") from None
        verify_manifest(local, manifest, label=f"model '{rec.name}'")
        return local

    def load_preprocessing(self, name: str) -> dict[str, Any]:
        """The verified preprocessing spec (features, window, scaler stats) of a model."""
        path = self.load_path(name) / PREPROCESSING_FILE
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def load_training_config(self, name: str) -> dict[str, Any] | None:
        """The training config stored with a model (verified files), None for a model
        registered without one; an ensemble uses its first member's."""
        local = self.load_path(name)
        found = stored_config(local)
        if found is None and (local / "ensemble.json").is_file():
            members = json.loads((local / "ensemble.json").read_text()).get("members") or []
            first = members[0] if members else None
            if isinstance(first, Mapping):
                first = first.get("name")
            if isinstance(first, str):
                if Path(first).exists():
                    return stored_config(first)
                return self.load_training_config(first)
        return found

    # -- writing -----------------------------------------------------------------------------

    def _ensure_family(self, family: str, model_type: str) -> None:
        from mlflow.exceptions import MlflowException  # heavy: mlflow

        try:
            rm = self.client.get_registered_model(family)
        except MlflowException:
            rm = None
        if rm is not None:
            if _is_legacy(rm):
                raise RegistryError(
                    f"cannot register into '{family}': an old-layout model has that name"
                )
            if TAG + "model_type" not in (rm.tags or {}):  # made outside rl-trading: adopt it
                self.client.set_registered_model_tag(family, TAG + "model_type", model_type)
                self.client.set_registered_model_tag(family, TAG + "layout", "family")
            return
        try:
            self.client.create_registered_model(
                family,
                tags={TAG + "model_type": model_type, TAG + "layout": "family"},
                description=f"rl-trading model family '{model_type}'",
            )
        except MlflowException as exc:
            if "already exists" not in str(exc.message):  # a concurrent registration made it
                raise RegistryError(f"cannot register '{family}': {exc.message}") from None

    def _set_tag(self, rec: ModelRecord, key: str, value: str) -> None:
        if rec.legacy:
            self.client.set_registered_model_tag(rec.family, key, value)
        else:
            self.client.set_model_version_tag(rec.family, rec.mlflow_version, key, value)

    def register(
        self,
        path: str | Path,
        *,
        model_type: str,
        kind: Kind = "rl",
        metrics: Mapping[str, float] | None = None,
        lineage: Mapping[str, Any] | None = None,
        data_fingerprint: str | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        signature: Mapping[str, Any] | str | None = None,
        config: AppConfig | Mapping[str, Any] | None = None,
        bump: Bump | None = None,
        run_id: str | None = None,
        description: str = "",
        untouched: bool = False,
        graded_split: str | None = None,
        n_trials: int | None = None,
    ) -> ModelRecord:
        """Log `path` as artifacts, grade it and add it as a new version of its family.

        `metrics` needs `sharpe` and `max_drawdown` (rl/ensemble; `max_drawdown_vol_matched`
        is graded when present, `dsr` is the evidence for a grade above C) or `accuracy` and
        `best_baseline_accuracy` (supervised). `untouched`: the graded data was seen by no
        selection step. `graded_split` (val/test) and `n_trials` are recorded as tags.
        `preprocessing` is stored next to the model files (and checksummed with them).
        """
        import mlflow  # heavy: mlflow

        src = Path(path)
        if not src.exists():
            raise RegistryError(f"nothing to register at {src}")
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        ev = self.cfg.evaluation
        capped = ""
        if kind == "supervised":
            if "accuracy" not in metrics or "best_baseline_accuracy" not in metrics:
                raise RegistryError(
                    "a supervised model needs 'accuracy' and 'best_baseline_accuracy' metrics "
                    "to be graded against its own baselines"
                )
            score = supervised_score(metrics["accuracy"], ev, metrics["best_baseline_accuracy"])
            metric_name = "accuracy"
            drawdown_basis = ""
        else:
            if "sharpe" not in metrics or "max_drawdown" not in metrics:
                raise RegistryError("an RL policy needs 'sharpe' and 'max_drawdown' metrics")
            drawdown_basis = "vol_matched" if "max_drawdown_vol_matched" in metrics else "raw"
            dd = metrics.get("max_drawdown_vol_matched", metrics["max_drawdown"])
            score = rl_score(metrics["sharpe"], dd, ev)
            score, capped = cap_without_evidence(score, metrics.get("dsr"), untouched, ev)
            metric_name = "sharpe"
        grade = score_to_grade(score)
        sig = (
            signature
            if isinstance(signature, str)
            else json.dumps(dict(signature or {}), sort_keys=True, default=str)
        )
        chash = config_hash(config)

        mtype = sanitize_name(model_type)
        family = self.list(model_type=mtype)
        previous = max(family, key=lambda r: _semver_key(r.version)) if family else None
        if previous is None:
            version = "1.0.0"
        else:
            part = bump or infer_bump(previous.tags, sig, data_fingerprint, chash)
            version = bump_version(previous.version, part)
        self._ensure_family(mtype, mtype)

        with tempfile.TemporaryDirectory(prefix="rl_trading_reg_") as tmp:
            staged = Path(tmp) / "model"
            if src.is_dir():
                shutil.copytree(src, staged)
            else:
                staged.mkdir()
                shutil.copy2(src, staged / src.name)
            if preprocessing is not None:
                _stage_preprocessing(staged / PREPROCESSING_FILE, preprocessing, src)
            if config is not None and staged.is_dir() and not (staged / CONFIG_FILE).is_file():
                raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
                (staged / CONFIG_FILE).write_text(
                    json.dumps({"config": _redacted(dict(raw))}, indent=1, default=str)
                )
            if (staged / "checkpoint_manifest.json").is_file():  # files added above
                write_manifest(staged)
            manifest = checksum_manifest(staged)
            exp_id = ensure_experiment(EXPERIMENT)
            run_ctx = (
                mlflow.start_run(run_id=run_id)
                if run_id
                else mlflow.start_run(
                    experiment_id=exp_id,
                    run_name=f"register_{mtype}_v{version}",
                    nested=mlflow.active_run() is not None,
                )
            )
            with run_ctx as run:
                mlflow.log_artifacts(str(staged), artifact_path="model")
                mlflow.log_dict(manifest, "checksums.json")
                if metrics:
                    mlflow.log_metrics(
                        {f"registry_{k}": v for k, v in metrics.items() if math.isfinite(v)}
                    )
                artifact_uri = run.info.artifact_uri
                rid = run.info.run_id

        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        tags = {
            TAG + "model_type": mtype,
            TAG + "kind": kind,
            TAG + "version": version,
            TAG + "grade": grade,
            TAG + "grade_score": f"{score:.4f}",
            TAG + "metric_name": metric_name,
            TAG + "metric_value": repr(metrics[metric_name]),
            TAG + "metrics": json.dumps(metrics),
            TAG + "lineage": json.dumps(dict(lineage or {}), default=str),
            TAG + "data_fingerprint": data_fingerprint or "",
            TAG + "signature": sig,
            TAG + "config_hash": chash or "",
            TAG + "created": now,
            TAG + "stage": "none",
            TAG + "source_path": str(src.resolve()),
            TAG + "graded_split": graded_split or "",
            TAG + "graded_untouched": str(bool(untouched)).lower(),
            TAG + "n_trials": str(int(n_trials)) if n_trials is not None else "",
            TAG + "grade_capped": capped,
            TAG + "drawdown_basis": drawdown_basis,
            TAG + "sha256_manifest": json.dumps(manifest, sort_keys=True),
            TAG + "manifest_sha256": _manifest_digest(manifest),
        }
        from mlflow.exceptions import MlflowException  # heavy: mlflow

        text = description or (
            f"v{version}, grade {grade}, {metric_name} {format_metric(metrics[metric_name])}"
        )
        try:
            mv = self.client.create_model_version(
                mtype, source=f"{artifact_uri}/model", run_id=rid, tags=tags, description=text
            )
        except MlflowException as exc:
            raise RegistryError(f"cannot register a version of '{mtype}': {exc.message}") from None
        return self.resolve(f"{mtype}/{mv.version}")

    def _alias_history(self, family: str, alias: str) -> list[str]:
        rm = self.client.get_registered_model(family)
        return json.loads((rm.tags or {}).get(f"{TAG}alias_history.{alias}", "[]"))

    def _point_alias(self, rec: ModelRecord, alias: str) -> None:
        """Move `alias` to `rec`, then recompute every version's stage tag from the aliases it
        holds now (see `stage_of`): a version can hold two aliases and lose one."""
        self.client.set_registered_model_alias(rec.family, alias, rec.mlflow_version)
        for other in self.list(model_type=rec.model_type):
            if other.legacy or other.family != rec.family:
                continue
            stage = stage_of(other.aliases, other.stage)
            if stage != other.stage:
                self._set_tag(other, TAG + "stage", stage)

    def promote(self, name: str, alias: str = "champion") -> ModelRecord:
        """Point `alias` of the model's family at this version (MLflow moves it off the
        previous holder) and remember the previous holders for :meth:`rollback`."""
        rec = self.resolve(name)
        if rec.legacy:
            raise RegistryError(
                f"'{rec.name}' is in the old registry layout; run `rl-trading models migrate` "
                "first (aliases live on a family)"
            )
        history = self._alias_history(rec.family, alias)
        self._point_alias(rec, alias)
        if not history or history[-1] != rec.mlflow_version:
            history.append(rec.mlflow_version)
            self.client.set_registered_model_tag(
                rec.family, f"{TAG}alias_history.{alias}", json.dumps(history[-50:])
            )
        split = rec.tags.get(TAG + "graded_split", "")
        if split == "test" or rec.tags.get(TAG + "test_selections"):
            self._set_tag(rec, TAG + "promoted_on_split", "test")
        return self.resolve(rec.name)

    def rollback(self, family: str, alias: str = "champion") -> ModelRecord:
        """Move `alias` back to the version that held it before the current one."""
        base, _, _ = parse_ref(family)
        current = self.resolve(f"{base}@{alias}")
        history = self._alias_history(current.family, alias)
        while history and history[-1] == current.mlflow_version:
            history.pop()
        if not history:
            raise RegistryError(f"'{base}@{alias}' has no earlier holder to roll back to")
        target = self.resolve(f"{current.family}/{history[-1]}")
        self._point_alias(target, alias)
        self.client.set_registered_model_tag(
            current.family, f"{TAG}alias_history.{alias}", json.dumps(history)
        )
        return self.resolve(target.name)

    def legacy_records(self) -> list[ModelRecord]:
        """Old-layout records not migrated yet (one registered model per registration)."""
        return [r for r in self._records() if r.legacy]

    def migrate(self) -> list[tuple[str, str]]:
        """Copy every old-layout model into its family as a new version, oldest first.

        Files are not copied: the new version points at the same verified artifacts, with
        the same tags (sha256 manifest included); the old registered model is kept, tagged
        `migrated_to`, and hidden from listings. An alias the old model held moves with it.
        Returns `(old name, new FAMILY/VERSION)` pairs.
        """
        done = []
        for old in sorted(self.legacy_records(), key=lambda r: r.created):
            family = sanitize_name(old.model_type)
            self._ensure_family(family, family)
            keep = {k: v for k, v in old.tags.items() if k != TAG + "display_name"}
            keep[TAG + "migrated_from"] = old.name
            mv = self.client.create_model_version(
                family, source=old.source, run_id=old.run_id, tags=keep, description=old.name
            )
            for alias in old.aliases:
                self.client.set_registered_model_alias(family, alias, mv.version)
            self.client.set_registered_model_tag(
                old.family, TAG + "migrated_to", f"{family}/{mv.version}"
            )
            done.append((old.name, f"{family}/{mv.version}"))
        return done

    def test_split_trials(self, model_type: str) -> int:
        """Selections already made on the test split in this family (registrations graded on
        it plus `models benchmark` comparisons), to be added to the next trial count."""
        n = 0
        for rec in self.list(model_type=sanitize_name(model_type)):
            n += rec.tags.get(TAG + "graded_split") == "test"
            n += int(rec.tags.get(TAG + "test_selections") or 0)
        return n

    def record_test_selection(self, names: list[str], pbo: float | None = None) -> None:
        """Tag models compared on the test split (`models benchmark`): one more selection each."""
        for name in names:
            rec = self.resolve(name)
            count = int(rec.tags.get(TAG + "test_selections") or 0) + 1
            self._set_tag(rec, TAG + "test_selections", str(count))
            if pbo is not None:
                self._set_tag(rec, TAG + "benchmark_pbo", f"{pbo:.4f}")


STAGE_ORDER = ("champion", "challenger")


def stage_of(aliases: list[str], previous: str) -> str:
    """A version's stage from the aliases it holds: champion before challenger (then any
    other alias, alphabetically); none held: `archived` if it held one before, else as was."""
    held = [a for a in STAGE_ORDER if a in aliases] + sorted(set(aliases) - set(STAGE_ORDER))
    if held:
        return held[0]
    return "archived" if previous not in ("none", "") else previous


def _stage_preprocessing(target: Path, preprocessing: Mapping[str, Any], src: Path) -> None:
    """Write `preprocessing` next to the staged model files, never over the one a checkpoint
    carries: the stored spec is what it was trained with (equal: kept byte for byte; different:
    one-line RegistryError)."""
    text = json.dumps(dict(preprocessing), indent=2, sort_keys=True, default=str)
    if target.is_file():
        if json.loads(target.read_text()) != json.loads(text):
            raise RegistryError(
                f"{src} carries its own {PREPROCESSING_FILE}, different from the preprocessing "
                "given to register it; register it with its stored preprocessing"
            )
        return
    target.write_text(text)


def _redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict with a credential in `data.db_url` hidden (stored with the model)."""
    data = dict(raw.get("data") or {})
    if data.get("db_url"):
        data["db_url"] = redact(str(data["db_url"]))
    return {**raw, "data": data}
