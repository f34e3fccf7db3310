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


def run_pipeline(
    out: str | Path,
    dataset: str | Path | None = None,
    config: RunConfig = RunConfig(),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run (or resume) every stage; returns the run record (also written to ``RUN/run.json``)."""
    config.validate()
    say = log or (lambda _message: None)
    out = Path(out)
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "kind": "neurosono run",
        "neurosono_version": __version__,
        "config": asdict(config),
        "dataset": str(Path(dataset).resolve()) if dataset else None,
        "stages": {},
    }
    previous = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    record["started"] = previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    upstream = ""
    total_stages = len(STAGES) - (1 if dataset else 0)
    number = 0

    def stage(name: str, inputs: dict, work: Callable[[Path], None], folder: Path | None = None) -> None:
        nonlocal upstream, number
        number += 1
        folder = folder or out / name
        key = _key({"stage": name, "inputs": inputs, "upstream": upstream})
        if stage_done(folder, key):
            say(f"[{number}/{total_stages}] {name}: up to date, kept ({folder})")
            seconds = json.loads((folder / STAGE_FILE).read_text()).get("seconds")
            record["stages"][name] = {"key": key, "state": "kept", "seconds": seconds}
        else:
            if folder.exists():
                say(f"[{number}/{total_stages}] {name}: config changed or unfinished, redoing")
                _clear(folder)
            else:
                say(f"[{number}/{total_stages}] {name}")
            started = time.perf_counter()
            work(folder)
            seconds = time.perf_counter() - started
            _mark(folder, name, key, seconds, inputs)
            record["stages"][name] = {"key": key, "state": "done", "seconds": round(seconds, 1)}
            say(f"    {name} done in {seconds:.0f} s")
        upstream = key
        atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))

    # 1. data: the user's dataset as given, or a phantom cohort generated here.
    if dataset is None:
        from neurosono.phantom.cohort import CohortConfig

        cohort_config = CohortConfig(cases=config.cases, seed=config.seed, size=config.image_size)

        def make_cohort(folder: Path) -> None:
            from neurosono.core.progress import track
            from neurosono.phantom.cohort import generate_cohort

            ticks = iter(
                track(
                    range(cohort_config.cases), "rendering cases", total=cohort_config.cases, enabled=progress
                )
            )
            generate_cohort(folder, cohort_config, on_case=lambda _: next(ticks, None))
            for _ in ticks:  # close the bar
                pass

        stage("cohort", asdict(cohort_config), make_cohort)
        dataset_dir = out / "cohort"
    else:
        from neurosono.data.check import check_dataset
        from neurosono.data.format import Dataset, dataset_hash

        dataset_dir = Path(dataset)
        report = check_dataset(dataset_dir)
        if not report.ok:
            first = "\n".join(str(p) for p in report.errors[:5])
            raise ValueError(f"{dataset_dir}: {len(report.errors)} error(s); first:\n{first}")
        ds = Dataset.load(dataset_dir)
        missing = [s for s in ("train", "val", "test") if not ds.split(s)]
        if missing:
            raise ValueError(
                f"{dataset_dir}: no cases in split(s) {missing}; run 'neurosono data split {dataset_dir}'"
            )
        upstream = _key({"dataset": dataset_hash(ds, ("train", "val", "test"))})
    record["dataset_dir"] = str(dataset_dir)

    # 2. stage 1: detector.
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

    init_hash = _file_hash(init) if init else None
    stage("detector", {**asdict(detect_config), "init_from": init_hash}, train_stage1)
    detector_file = out / "detector" / "detector.pt"

    # 3. stage 2: HexaNet and the whole-image baseline, same split, budget and seed.
    from neurosono.classify.train import ClassifyTrainConfig

    classify_config = ClassifyTrainConfig(
        seed=config.seed, epochs=config.hexanet_epochs, patience=config.hexanet_patience
    )

    def train_stage2(folder: Path) -> None:
        from neurosono.classify.train import train_classifier

        train_classifier(
            dataset_dir, folder, "hexanet", classify_config, detector=detector_file, progress=progress
        )

    stage("hexanet", asdict(classify_config), train_stage2)

    # 4. evaluation on the test split.
    def evaluate_stage(folder: Path) -> None:
        from neurosono.data.format import Dataset
        from neurosono.evaluate.two_stage import evaluate_two_stage

        with staged_directory(folder) as staged:
            evaluate_two_stage(
                Dataset.load(dataset_dir),
                out / "hexanet",
                "test",
                detector_file,
                config.n_boot,
                config.seed,
                out_dir=staged,
                progress=progress,
            )

    stage("evaluation", {"n_boot": config.n_boot, "seed": config.seed, "split": "test"}, evaluate_stage)

    # 5. report.
    def report_stage(folder: Path) -> None:
        from neurosono.evaluate.report import write_report

        with staged_directory(folder) as staged:
            write_report(out, staged / "report.html", record, max_gallery=config.gallery)

    stage("report", {"gallery": config.gallery, "version": __version__}, report_stage, out / "report")
    report_file = out / "report.html"
    # The report also sits at the run's top level, where a user looks first.
    shutil.copyfile(out / "report" / "report.html", report_file.with_suffix(".html.tmp"))
    report_file.with_suffix(".html.tmp").replace(report_file)
    record["report"] = str(report_file)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
    return record


def _file_hash(path: str) -> str:
    from neurosono.core.checkpoints import file_sha256

    target = Path(path)
    return file_sha256(target / "detector.pt" if target.is_dir() else target)
