"""TensorRT plans on disk: where they live, their JSON sidecar, and whether one may be used.

A plan only runs on the TensorRT version and GPU architecture that built it, and only means
something for the exact model bytes it was built from. Every plan therefore travels with a
sidecar (`<plan>.json`) recording TensorRT's version, the GPU's compute capability, the model's
sha256, the profile, the builder settings, and the plan's own sha256. `check_plan` decides from
the sidecar alone, before TensorRT deserializes anything (deserializing a foreign plan fails
with an opaque "magic tag" / "version tag" error at best).

The plan header: TensorRT does not document its plan format and has no public API to read the
version from a plan (NVIDIA/TensorRT issue 3073; `IRuntime::getEngineValidity` exists only in
TensorRT-RTX). The byte offsets people use were read off TensorRT 8.x/10.x files and change
between releases, so mtc does not parse the header; instead the sidecar pins the plan's sha256,
which rejects a plan swapped or copied in without its own sidecar just as surely.

Two places hold plans:
- the artifact, `engines/<profile>.plan` (+ `.json`), written by `mtc build` so a deployed
  folder carries its engines;
- the cache, `<mtc cache>/tensorrt/<cache key>/<profile>.plan`, keyed by model hash + TensorRT
  version + compute capability (+ profile and builder settings), where the runtime builds
  missing plans without ever writing into an artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mtc.artifact.manifest import sha256_file
from mtc.artifact.profiles import ResolutionProfile
from mtc.errors import MtcError
from mtc.fsutil import atomic_write_text

log = logging.getLogger("mtc")

SIDECAR_FORMAT = "mtc-tensorrt-plan"
SIDECAR_VERSION = 1
ENGINES_DIR = "engines"


@dataclass(frozen=True)
class BuilderSettings:
    """What, besides the model and profile, changes the plan TensorRT builds."""

    optimization_level: int = 3
    strongly_typed: bool = True
    tf32: bool = False  # off: FP32 layers stay FP32, so the plan matches ONNX Runtime's numbers

    def to_dict(self) -> dict:
        return {"optimization_level": self.optimization_level, "strongly_typed": self.strongly_typed,
                "tf32": self.tf32}


@dataclass(frozen=True)
class Target:
    """The TensorRT install and GPU a plan is for."""

    tensorrt_version: str
    compute_capability: str  # "8.6"
    device_name: str = ""


def cache_key(model_sha256: str, target: Target, profile: ResolutionProfile, settings: BuilderSettings) -> str:
    """Stable key: model hash + TensorRT version + compute capability + profile + builder settings."""
    payload = json.dumps({"model": model_sha256, "tensorrt": target.tensorrt_version,
                          "sm": target.compute_capability, "profile": profile.to_dict(),
                          "builder": settings.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_plan_path(model_sha256: str, target: Target, profile: ResolutionProfile, settings: BuilderSettings,
                    *, root: Path | None = None) -> Path:
    """Where the runtime keeps a plan it built: readable names, then the full key."""
    if root is None:
        from mtc.artifact.cache import cache_dir

        root = cache_dir() / "tensorrt"
    folder = (f"{model_sha256[:12]}-trt{target.tensorrt_version}-sm{target.compute_capability.replace('.', '')}-"
              f"{cache_key(model_sha256, target, profile, settings)}")
    return root / folder / f"{profile.name}.plan"


def artifact_plan_path(folder: Path, profile: ResolutionProfile) -> Path:
    return Path(folder) / ENGINES_DIR / f"{profile.name}.plan"


def timing_cache_path(target: Target, *, root: Path | None = None) -> Path:
    """One timing cache per TensorRT version and GPU architecture, shared by every model."""
    if root is None:
        from mtc.artifact.cache import cache_dir

        root = cache_dir() / "tensorrt"
    return root / f"timing-trt{target.tensorrt_version}-sm{target.compute_capability.replace('.', '')}.cache"


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(plan.suffix + ".json")


@dataclass(frozen=True)
class PlanSidecar:
    tensorrt_version: str
    compute_capability: str
    model_sha256: str
    plan_sha256: str
    plan_size: int
    profile: ResolutionProfile
    builder: BuilderSettings = field(default_factory=BuilderSettings)
    device_name: str = ""
    input_shapes: dict = field(default_factory=dict)  # name -> {"min", "opt", "max"}
    frozen_inputs: dict = field(default_factory=dict)  # name -> list of values
    created: str = ""
    mtc_version: str = ""

    def to_dict(self) -> dict:
        return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
                "tensorrt_version": self.tensorrt_version, "compute_capability": self.compute_capability,
                "device_name": self.device_name, "model_sha256": self.model_sha256,
                "plan_sha256": self.plan_sha256, "plan_size": self.plan_size, "profile": self.profile.to_dict(),
                "builder": self.builder.to_dict(), "input_shapes": self.input_shapes,
                "frozen_inputs": self.frozen_inputs, "created": self.created, "mtc_version": self.mtc_version}

    @classmethod
    def from_dict(cls, data: dict) -> PlanSidecar:
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {SIDECAR_FORMAT!r}")
        if data.get("format_version") != SIDECAR_VERSION:
            raise ValueError(f"format_version {data.get('format_version')} is not {SIDECAR_VERSION}")
        builder = data.get("builder", {})
        return cls(
            tensorrt_version=str(data["tensorrt_version"]), compute_capability=str(data["compute_capability"]),
            model_sha256=str(data["model_sha256"]), plan_sha256=str(data["plan_sha256"]),
            plan_size=int(data["plan_size"]), profile=ResolutionProfile.from_dict(data["profile"]),
            builder=BuilderSettings(int(builder.get("optimization_level", 3)), bool(builder.get("strongly_typed", True)),
                                    bool(builder.get("tf32", False))),
            device_name=str(data.get("device_name", "")), input_shapes=dict(data.get("input_shapes", {})),
            frozen_inputs=dict(data.get("frozen_inputs", {})), created=str(data.get("created", "")),
            mtc_version=str(data.get("mtc_version", "")))


def write_plan(plan_path: Path, plan_bytes: bytes, sidecar: PlanSidecar) -> None:
    """Plan first, sidecar last (both atomic): a plan without its sidecar is never used."""
    from mtc.fsutil import atomic_write_bytes

    atomic_write_bytes(plan_path, plan_bytes)
    atomic_write_text(sidecar_path(plan_path), json.dumps(sidecar.to_dict(), indent=2) + "\n")


def read_verified_plan(plan_path: Path) -> bytes:
    """The plan's bytes, checked against its sidecar's sha256 after reading: what TensorRT
    deserializes is what was checked, even if the file changed after `check_plan`."""
    sidecar = read_sidecar(plan_path)
    data = Path(plan_path).read_bytes()
    if len(data) != sidecar.plan_size or hashlib.sha256(data).hexdigest() != sidecar.plan_sha256:
        raise MtcError(f"{plan_path} changed after it was checked (it no longer matches its sidecar's sha256)",
                       hint="run again: a plan that fails its check is rebuilt")
    return data


def usable_timing_cache(path: Path) -> bool:
    """Whether TensorRT may read the timing cache at `path`: it must match the seal written with
    it. A damaged one is deleted (with a warning) so the build starts a fresh one."""
    from mtc.artifact.cache import verified_entry

    return verified_entry(timing_cache_seal(path), [path], what=f"tensorrt: the timing cache {path.name}",
                          then="starting a new one")


def timing_cache_seal(path: Path) -> Path:
    from mtc.artifact.cache import SEAL_SUFFIX

    return path.with_name(path.name + SEAL_SUFFIX)


def make_sidecar(plan_bytes: bytes, *, target: Target, model_sha256: str, profile: ResolutionProfile,
                 settings: BuilderSettings, input_shapes: dict, frozen_inputs: dict) -> PlanSidecar:
    import mtc

    return PlanSidecar(tensorrt_version=target.tensorrt_version, compute_capability=target.compute_capability,
                       device_name=target.device_name, model_sha256=model_sha256,
                       plan_sha256=hashlib.sha256(plan_bytes).hexdigest(), plan_size=len(plan_bytes),
                       profile=profile, builder=settings, input_shapes=input_shapes, frozen_inputs=frozen_inputs,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"), mtc_version=mtc.__version__)


@dataclass(frozen=True)
class PlanCheck:
    usable: bool
    reason: str = ""  # why not, in words a user can act on
    sidecar: PlanSidecar | None = None


def read_sidecar(plan_path: Path) -> PlanSidecar:
    path = sidecar_path(plan_path)
    try:
        return PlanSidecar.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise MtcError(f"{plan_path} has no sidecar {path.name}", hint="rebuild it with `mtc build`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise MtcError(f"{path} is not a valid plan sidecar ({exc})", hint="rebuild it with `mtc build`") from None


def check_plan(plan_path: Path, *, model_sha256: str, target: Target, profile: ResolutionProfile | None = None,
               settings: BuilderSettings | None = None, verify_hash: bool = True) -> PlanCheck:
    """Decide, without TensorRT deserializing anything, whether a plan may run here."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        return PlanCheck(False, f"{plan_path} does not exist")
    try:
        sidecar = read_sidecar(plan_path)
    except MtcError as exc:
        return PlanCheck(False, exc.message)
    if sidecar.model_sha256 != model_sha256:
        return PlanCheck(False, f"{plan_path.name} was built from another model (sha256 {sidecar.model_sha256[:12]}, "
                                f"this artifact's is {model_sha256[:12]})", sidecar)
    if sidecar.tensorrt_version != target.tensorrt_version:
        return PlanCheck(False, f"{plan_path.name} was built with TensorRT {sidecar.tensorrt_version}; "
                                f"this is TensorRT {target.tensorrt_version}", sidecar)
    if sidecar.compute_capability != target.compute_capability:
        built_on = f" ({sidecar.device_name})" if sidecar.device_name else ""
        return PlanCheck(False, f"{plan_path.name} was built for compute capability {sidecar.compute_capability}"
                                f"{built_on}; this GPU is {target.compute_capability}"
                                f"{f' ({target.device_name})' if target.device_name else ''}", sidecar)
    if profile is not None and sidecar.profile.to_dict() != profile.to_dict():
        return PlanCheck(False, f"{plan_path.name} was built for profile {sidecar.profile.to_dict()}, "
                                f"not {profile.to_dict()}", sidecar)
    if settings is not None and sidecar.builder != settings:
        return PlanCheck(False, f"{plan_path.name} was built with {sidecar.builder.to_dict()}, "
                                f"not {settings.to_dict()}", sidecar)
    size = plan_path.stat().st_size
    if size != sidecar.plan_size or (verify_hash and sha256_file(plan_path) != sidecar.plan_sha256):
        return PlanCheck(False, f"{plan_path.name} does not match its sidecar's sha256 (modified, truncated, "
                                "or copied in without its own sidecar)", sidecar)
    return PlanCheck(True, "", sidecar)
