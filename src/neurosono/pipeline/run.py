"""The main job: from a dataset (or a phantom cohort made on the fly) to a report.

Stages, each in its own folder of the run::

    RUN/
      run.json        the whole config, and each stage's key, time and state
      cohort/         the phantom cohort (only without a user dataset)
      detector/       stage 1 run folder (detect.train)
      hexanet/        stage 2 run folder with its whole-image baseline (classify.train)
      evaluation/     test-split metrics, predictions, per-case details, plots
      report.html     self-contained report (images inline; opens offline)

A stage is resumable: it is skipped when its folder holds a ``stage.json`` whose key
(its own config plus the keys of the stages it reads) matches the current one. A
stage whose key differs, or that was interrupted, is redone, and so is every stage
after it. Stage folders belong to the run; nothing outside ``RUN`` is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from neurosono import __version__
from neurosono.core import DEFAULT_SEED
from neurosono.core.atomic import OutputExistsError, atomic_write_text, staged_directory

STAGES = ("cohort", "detector", "hexanet", "evaluation", "report")
STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class RunConfig:
    """Defaults fit 10 minutes on 2 CPU cores; :data:`QUICK` fits 2 minutes."""

    cases: int = 319  # the study's cohort size
    seed: int = DEFAULT_SEED
    image_size: int = 512  # phantom image side, pixels
    detector_init: str = "shipped"  # "shipped" (fine-tune the bundled phantom detector), "scratch" or a path
    detector_imgsz: int = 320
    detector_epochs: int = 3
    detector_lr0: float = 1e-4  # fine-tuning rate (ultralytics' default undoes a trained detector)
    detector_batch: int = 16
    hexanet_epochs: int = 30
    hexanet_patience: int = 10
    # "shipped": fine-tune the bundled HexaNet where the cases allow its configuration (the
    # age and spacings of every case, as phantom cohorts give); "scratch" or a run folder.
    hexanet_init: str = "shipped"
    hexanet_lr: float = 1e-4  # fine-tuning rate (chosen on the demo's validation split)
    n_boot: int = 1000
    gallery: int = 12  # most misclassified cases shown in the report

    def validate(self) -> None:
        if self.cases < 30:
            raise ValueError("--cases must be at least 30 (each split needs both labels)")
        if self.detector_epochs < 1 or self.hexanet_epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.detector_imgsz % 32:
            raise ValueError("--detector-imgsz must be a multiple of 32")


QUICK = RunConfig(
    cases=60,
    image_size=256,
    detector_imgsz=256,
    detector_epochs=1,
    detector_batch=8,
    hexanet_epochs=8,
    hexanet_patience=8,
    n_boot=300,
    gallery=6,
)


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_done(folder: Path, key: str) -> bool:
    marker = folder / STAGE_FILE
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _mark(folder: Path, stage: str, key: str, seconds: float, inputs: dict) -> None:
    record = {"stage": stage, "key": key, "seconds": round(seconds, 1), "inputs": inputs}
    atomic_write_text(folder / STAGE_FILE, json.dumps(record, indent=2, default=str))


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_run_folder(out: Path) -> None:
    """A run goes into a new folder, an empty one, or an earlier run of its own: nothing else is touched."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").exists():
        raise OutputExistsError(f"{out}: not empty and not a neurosono run; choose a new --out")


class StageRunner:
    """Runs each stage of a run once per key: a stage whose folder holds a ``stage.json`` with
    the same key (its config plus the key of the stage before it) is kept; any other is redone.
    run.json is rewritten after every stage, so an interrupted run shows how far it came."""

    def __init__(self, out: Path, record: dict, total: int, say: Callable[[str], None]) -> None:
        self.out, self.record, self.total, self.say = out, record, total, say
        self.upstream = ""
        self.number = 0

    def run(self, name: str, inputs: dict, work: Callable[[Path], None], folder: Path | None = None) -> None:
        self.number += 1
        folder = folder or self.out / name
        key = _key({"stage": name, "inputs": inputs, "upstream": self.upstream})
        where = f"[{self.number}/{self.total}] {name}"
        if stage_done(folder, key):
            self.say(f"{where}: up to date, kept ({folder})")
            seconds = json.loads((folder / STAGE_FILE).read_text()).get("seconds")
            self.record["stages"][name] = {"key": key, "state": "kept", "seconds": seconds}
        else:
            if folder.exists():
                self.say(f"{where}: config changed or unfinished, redoing")
                _clear(folder)
            else:
                self.say(where)
            started = time.perf_counter()
            work(folder)
            seconds = time.perf_counter() - started
            _mark(folder, name, key, seconds, inputs)
            self.record["stages"][name] = {"key": key, "state": "done", "seconds": round(seconds, 1)}
            self.say(f"    {name} done in {seconds:.0f} s")
        self.upstream = key
        self.save()

    def save(self) -> None:
        atomic_write_text(self.out / "run.json", json.dumps(self.record, indent=2, default=str))


def run_pipeline(
    out: str | Path,
    dataset: str | Path | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run (or resume) every stage; returns the run record (also written to ``RUN/run.json``)."""
    config = config or RunConfig()
    config.validate()
    out = Path(out)
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    record: dict = {
        "kind": "neurosono run",
        "neurosono_version": __version__,
        "config": asdict(config),
        "dataset": str(Path(dataset).resolve()) if dataset else None,
        "stages": {},
        "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    stages = StageRunner(out, record, len(STAGES) - (1 if dataset else 0), log or (lambda _message: None))
    if dataset is None:  # a phantom cohort generated here
        dataset_dir = out / "cohort"
        stages.run("cohort", *_cohort_stage(config, progress))
    else:  # the user's dataset as given
        dataset_dir = Path(dataset)
        stages.upstream = _key({"dataset": checked_dataset_hash(dataset_dir)})
    record["dataset_dir"] = str(dataset_dir)
    detector_file = out / "detector" / "detector.pt"
    stages.run("detector", *_detector_stage(config, dataset_dir, progress))
    stages.run("hexanet", *_hexanet_stage(config, dataset_dir, detector_file, progress))

    def evaluate_stage(folder: Path) -> None:
        from neurosono.data.format import Dataset
        from neurosono.evaluate.biometry import evaluate_run_biometry
        from neurosono.evaluate.two_stage import evaluate_two_stage

        with staged_directory(folder) as staged:
            dataset = Dataset.load(dataset_dir)
            run_dir, seed = out / "hexanet", config.seed
            evaluate_two_stage(
                dataset,
                run_dir,
                "test",
                detector_file,
                config.n_boot,
                seed,
                out_dir=staged,
                progress=progress,
            )
            # Biometry beside the decision: the shipped measuring models in this run's boxes.
            evaluate_run_biometry(dataset_dir, detector_file, staged, "test", config.n_boot, seed, progress)

    evaluation_inputs = {"n_boot": config.n_boot, "seed": config.seed, "split": "test", "biometry": True}
    stages.run("evaluation", evaluation_inputs, evaluate_stage)

    def report_stage(folder: Path) -> None:
        from neurosono.evaluate.report import write_report

        with staged_directory(folder) as staged:
            write_report(out, staged / "report.html", record, max_gallery=config.gallery)

    stages.run("report", {"gallery": config.gallery, "version": __version__}, report_stage, out / "report")
    report_file = out / "report.html"
    # The report also sits at the run's top level, where a user looks first.
    shutil.copyfile(out / "report" / "report.html", report_file.with_suffix(".html.tmp"))
    report_file.with_suffix(".html.tmp").replace(report_file)
    record["report"] = str(report_file)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stages.save()
    return record


def checked_dataset_hash(dataset_dir: Path) -> str:
    """A user's dataset must pass the check and have all three splits; its hash keys the run."""
    from neurosono.data.check import check_dataset
    from neurosono.data.format import Dataset, dataset_hash

    report = check_dataset(dataset_dir)
    if not report.ok:
        first = "; ".join(str(p) for p in report.errors[:5])
        raise ValueError(f"{dataset_dir}: {len(report.errors)} error(s); first: {first}")
    ds = Dataset.load(dataset_dir)
    missing = [s for s in ("train", "val", "test") if not ds.split(s)]
    if missing:
        raise ValueError(
            f"{dataset_dir}: no cases in split(s) {missing}; run 'neurosono data split {dataset_dir}'"
        )
    return dataset_hash(ds, ("train", "val", "test"))


def _cohort_stage(config: RunConfig, progress: bool) -> tuple[dict, Callable[[Path], None]]:
    from neurosono.phantom.cohort import CohortConfig

    cohort_config = CohortConfig(cases=config.cases, seed=config.seed, size=config.image_size)

    def make_cohort(folder: Path) -> None:
        from neurosono.core.progress import track
        from neurosono.phantom.cohort import generate_cohort

        ticks = iter(track(range(cohort_config.cases), "rendering cases", cohort_config.cases, progress))
        generate_cohort(folder, cohort_config, on_case=lambda _: next(ticks, None))
        for _ in ticks:  # close the bar
            pass

    return asdict(cohort_config), make_cohort


def _detector_stage(
    config: RunConfig, dataset_dir: Path, progress: bool
) -> tuple[dict, Callable[[Path], None]]:
    from neurosono.detect.train import DetectTrainConfig, resolve_init

    init = resolve_init(config.detector_init)
    detect_config = DetectTrainConfig(
        imgsz=config.detector_imgsz,
        epochs=config.detector_epochs,
        batch=config.detector_batch,
        seed=config.seed,
        # A fine-tune needs no warm-up; a scratch run keeps ultralytics' default.
        warmup_epochs=0.0 if init else 3.0,
        close_mosaic=0 if init else 10,
        init_from=init,
        lr0=config.detector_lr0 if init else None,
    )

    def train_stage1(folder: Path) -> None:
        from neurosono.detect.train import train_detector

        train_detector(dataset_dir, folder, detect_config, progress=progress)

    return {**asdict(detect_config), "init_from": _file_hash(init) if init else None}, train_stage1


def _hexanet_stage(
    config: RunConfig, dataset_dir: Path, detector_file: Path, progress: bool
) -> tuple[dict, Callable[[Path], None]]:
    """HexaNet and the whole-image baseline, same split, budget, seed and age input. HexaNet
    has the shipped model's configuration where the cases allow it: the age from cases.csv with
    age-scaled crops (when the cases give the age and pixel spacing), region sizes against
    stage 1's fetal-head box (the detections' span where it finds none)."""
    from neurosono.classify.config import ClassifyTrainConfig
    from neurosono.data.format import Dataset

    dated = all(
        case.ga_weeks and all(case.spacing_mm(p) for p in ("tv", "tc"))
        for case in Dataset.load(dataset_dir).cases
    )
    init = hexanet_start(config.hexanet_init, dated)
    classify_config = ClassifyTrainConfig(
        seed=config.seed,
        epochs=config.hexanet_epochs,
        patience=config.hexanet_patience,
        gestational_age=dated,
        crop_scale="age" if dated else "box",
        head_size="box",
        **({"lr": config.hexanet_lr} if init else {}),
    )

    def train_stage2(folder: Path) -> None:
        from neurosono.classify.train import train_classifier

        train_classifier(
            dataset_dir,
            folder,
            "hexanet",
            classify_config,
            detector=detector_file,
            progress=progress,
            init=init,
        )

    key = {**asdict(classify_config), "init_from": _hexanet_hash(init) if init else None}
    return key, train_stage2


def hexanet_start(value: str, dated: bool) -> str | None:
    """Where stage 2's training starts: None (from scratch) for ``scratch``, and for ``shipped``
    when the cases lack the ages or spacings the shipped model reads; else ``value``."""
    if value in ("", "scratch") or (value == "shipped" and not dated):
        return None
    if value != "shipped" and not Path(value).exists():
        raise ValueError(f"{value}: HexaNet to start from does not exist (use scratch, shipped or a path)")
    return value


def _hexanet_hash(init: str) -> str:
    from neurosono.models import DEFAULT_HEXANET

    return _file_hash(str(DEFAULT_HEXANET) if init == "shipped" else init, "classifier.pt")


def _file_hash(path: str, name: str = "detector.pt") -> str:
    """The hash of a model file, given as the file or the run folder that holds ``name``."""
    from neurosono.core.checkpoints import file_sha256

    target = Path(path)
    return file_sha256(target / name if target.is_dir() else target)
