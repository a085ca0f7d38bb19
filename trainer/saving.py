"""Writing what a run produces: LoRA files named as sd-scripts names them, their ``ss_*`` metadata, pruning
of old step files, and the training state that makes an exact resume possible.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from trainer.events import EventWriter
from trainer.network import read_lora_file, save_lora_file
from trainer.distributed import process_seed
from trainer.plan import global_batch_size
from trainer.precision import mixed_precision_name
from trainer.session import Session, TrainingError
from trainer.spec import SETTINGS, job_to_values
from trainer.saving_extra import epoch_to_prune, extra_metadata, state_keep_last
from trainer.spec.checks import check_network_weights_kept, output_files_pattern
from trainer.spec.names import parse_output_name
from trainer.spec.rules import effective_lrs
from trainer.spec.sections import Job

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STATE_FILE = "train_state.json"
LEGACY_HASH_OFFSET, LEGACY_HASH_BYTES = 0x100000, 0x10000
HASH_CHUNK_BYTES = 1 << 24


def epoch_file_name(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}.safetensors"


def step_file_name(name: str, step: int) -> str:
    return f"{name}-step{step:08d}.safetensors"


def step_to_prune(step: int, keep_last: int, every: int) -> int | None:
    """sd-scripts' save_last_n_steps rule: after saving at ``step``, the step file to delete keeps only the
    files within the last ``keep_last`` steps: r = (s − N − 1) − ((s − N − 1) mod every), if r > 0."""
    if keep_last <= 0 or every <= 0:
        return None
    remove = (step - keep_last - 1) - ((step - keep_last - 1) % every)
    return remove if remove > 0 else None


def stale_temporaries(output_dir: Path, output_name: str) -> list[Path]:
    """What a killed run of ``output_name`` can leave in its output folder: a LoRA file's temporary
    (``.<file>.<random>.tmp``, see ``save_lora_file``), a half-written state folder (``…-state.tmp``) and a
    replaced one (``…-state.old.tmp``).
    Other names' files are left alone: another run may be writing them."""
    if not output_dir.is_dir():
        return []
    pattern = output_files_pattern(output_name)
    found = []
    for path in output_dir.iterdir():
        name = path.name
        if name.endswith(".tmp") and name.startswith("."):
            name = name[1:].rsplit(".", 2)[0]  # ".x.safetensors.abc123.tmp" → "x.safetensors"
        elif name.endswith("-state.old.tmp"):  # a replaced state not yet deleted (Saver.save_state)
            name = name.removesuffix(".old.tmp")
        elif not name.endswith("-state.tmp"):
            continue
        if pattern.fullmatch(name):
            found.append(path)
    return sorted(found)


def remove_stale_temporaries(output_dir: Path, output_name: str) -> list[Path]:
    """Delete what :func:`stale_temporaries` finds; returns what was removed."""
    removed = stale_temporaries(output_dir, output_name)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def dataset_metadata(data) -> dict:
    """sd-scripts' dataset fields: folders with repeats and counts, tag frequency, buckets."""
    dirs: dict[str, dict] = {}
    reg_dirs: dict[str, dict] = {}
    tags: dict[str, dict[str, int]] = {}
    for subset in data.subsets:
        name = Path(subset.folder).name
        (reg_dirs if subset.is_reg else dirs)[name] = {"n_repeats": subset.repeats, "img_count": subset.images}
    for image in data.images:
        folder = Path(image.path).parent.name
        counts = tags.setdefault(folder, {})
        for tag in (t.strip().lower() for t in image.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    buckets = {str(i): {"resolution": list(b.resolution), "count": b.samples} for i, b in enumerate(data.buckets)}
    return {"num_train_images": data.train_samples, "num_reg_images": data.reg_samples, "dataset_dirs": dirs,
            "reg_dataset_dirs": reg_dirs, "tag_frequency": tags,
            "bucket_info": {"buckets": buckets, "mean_img_ar_error": data.mean_ar_error}}


def file_hashes(path_text: str, what: str) -> dict[str, str]:
    """``ss_{what}_hash`` (A1111's old hash: sha256 of 64 KiB at offset 1 MiB, 8 hex digits) and
    ``ss_new_{what}_hash`` (sha256 of the whole file) of a model file; nothing for a folder."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        return {}
    whole = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(LEGACY_HASH_OFFSET)
        legacy = hashlib.sha256(handle.read(LEGACY_HASH_BYTES)).hexdigest()[:8]
        handle.seek(0)
        while chunk := handle.read(HASH_CHUNK_BYTES):
            whole.update(chunk)
    return {f"ss_{what}_hash": legacy, f"ss_new_{what}_hash": whole.hexdigest()}


def base_model_version(family: str, v_prediction: bool) -> str:
    """``ss_base_model_version`` as sd-scripts writes it: sd_v1, sd_v2, sd_v2_v (v-prediction), sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return "sd_v1" if family == "sd1" else "sd_v2" + ("_v" if v_prediction else "")


def modelspec_architecture(family: str, v_prediction: bool) -> str:
    """SAI model spec architecture of a LoRA for ``family``."""
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base/lora"
    if family == "sd2":
        return "stable-diffusion-v2-768-v/lora" if v_prediction else "stable-diffusion-v2-512/lora"
    return "stable-diffusion-v1/lora"


def modelspec_implementation(family: str) -> str:
    """SAI model spec implementation of a LoRA: sd-scripts names Stability's repository for SDXL."""
    return "https://github.com/Stability-AI/generative-models" if family == "sdxl" else "diffusers"


def _text(value) -> str:
    return "None" if value is None else str(value)


def training_metadata(session: Session) -> dict[str, str]:
    """The ``ss_*`` metadata sd-scripts writes (those that apply to us), plus the whole job for LoRA Loom."""
    job, plan, data = session.job, session.schedule, session.data.plan
    unet_lr, text_lr = effective_lrs(job.optimisation)
    resolution = session.data.options.resolution
    info = dataset_metadata(data)
    values = {k: v for k, v in job_to_values(job).items() if not _is_secret(k)}
    meta = {
        "ss_session_id": session.session_id,
        "ss_training_started_at": session.started_at,
        "ss_output_name": job.saving.output_name,
        "ss_learning_rate": job.optimisation.learning_rate,
        "ss_text_encoder_lr": text_lr,
        "ss_unet_lr": unet_lr,
        "ss_num_train_images": info.get("num_train_images"),
        "ss_num_reg_images": info.get("num_reg_images"),
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_gradient_checkpointing": job.launch.gradient_checkpointing,
        "ss_gradient_accumulation_steps": job.optimisation.gradient_accumulation_steps,
        "ss_max_train_steps": plan.total_steps,
        "ss_lr_warmup_steps": plan.warmup_steps,
        "ss_lr_scheduler": job.optimisation.lr_scheduler,
        "ss_mixed_precision": mixed_precision_name(session.precision.autocast_dtype),  # what ran (the job
        "ss_full_fp16": session.precision.adapter_dtype == torch.float16,  # asked for is in lora_loom.job)
        "ss_v2": session.base.family == "sd2",
        "ss_base_model_version": base_model_version(session.base.family, session.base.v_prediction),
        "ss_clip_skip": job.captions.clip_skip,
        "ss_max_token_length": job.captions.max_token_length,
        "ss_cache_latents": job.data.cache_latents,
        "ss_seed": session.seed,
        "ss_noise_offset": job.noise_loss.noise_offset if job.noise_loss.noise_offset_type == "Original" else None,
        "ss_adaptive_noise_scale": job.noise_loss.adaptive_noise_scale if job.noise_loss.noise_offset_type == "Original" else None,
        "ss_multires_noise_iterations": job.noise_loss.multires_noise_iterations if job.noise_loss.noise_offset_type == "Multires" else None,
        "ss_multires_noise_discount": job.noise_loss.multires_noise_discount if job.noise_loss.noise_offset_type == "Multires" else None,
        "ss_optimizer": f"{type(session.optimizer).__module__}.{type(session.optimizer).__name__}"
                        + (f"({job.optimisation.optimizer_args})" if job.optimisation.optimizer_args else ""),
        "ss_max_grad_norm": job.optimisation.max_grad_norm,
        "ss_caption_dropout_rate": job.captions.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": job.captions.caption_dropout_every_n_epochs,
        "ss_prior_loss_weight": job.noise_loss.prior_loss_weight,
        "ss_min_snr_gamma": job.noise_loss.min_snr_gamma,
        "ss_batch_size_per_device": job.data.train_batch_size,
        "ss_total_batch_size": global_batch_size(job, session.processes.world_size),
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_color_aug": job.data.color_aug,
        "ss_flip_aug": job.data.flip_aug,
        "ss_random_crop": job.data.random_crop,
        "ss_shuffle_caption": job.captions.shuffle_caption,
        "ss_enable_bucket": job.data.enable_bucket,
        "ss_bucket_no_upscale": job.data.bucket_no_upscale,
        "ss_min_bucket_reso": job.data.min_bucket_reso,
        "ss_max_bucket_reso": job.data.max_bucket_reso,
        "ss_keep_tokens": job.captions.keep_tokens,
        "ss_dataset_dirs": json.dumps(info.get("dataset_dirs", {})),
        "ss_reg_dataset_dirs": json.dumps(info.get("reg_dataset_dirs", {})),
        "ss_tag_frequency": json.dumps(info.get("tag_frequency", {})),
        "ss_bucket_info": json.dumps(info.get("bucket_info", {})),
        "ss_sd_model_name": Path(job.model.pretrained_model_name_or_path).name,
        **file_hashes(job.model.pretrained_model_name_or_path, "sd_model"),
        **({"ss_vae_name": Path(job.model.vae).name, **file_hashes(job.model.vae, "vae")} if job.model.vae else {}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": modelspec_architecture(session.base.family, session.base.v_prediction),
        "modelspec.implementation": modelspec_implementation(session.base.family),
        "modelspec.title": job.saving.output_name,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "v" if session.base.v_prediction else "epsilon",
        "modelspec.encoder_layer": job.captions.clip_skip,
        **extra_metadata(job),
        "lora_loom.job": json.dumps(values, sort_keys=True),
    }
    return {key: _text(value) for key, value in meta.items()}


def _is_secret(key: str) -> bool:
    return any(s.key == key and s.secret for s in SETTINGS)


class Saver:
    """Writes LoRA files (atomically) and training states; reports each as a ``checkpoint`` event."""

    def __init__(self, session: Session, events: EventWriter):
        self.session = session
        self.events = events
        self.job = session.job
        for problem in check_network_weights_kept(self.job):  # validation refuses this too; never write over it
            raise TrainingError(problem.message, problem.setting)
        try:  # validation refuses such names; never let one reach a path
            parse_output_name(self.job.saving.output_name)
        except ValueError as error:
            raise TrainingError(str(error), "output_name") from None
        self.output_dir = Path(self.job.saving.output_dir).expanduser()
        try:  # validation checks this before the model loads; a job that skipped it still gets the setting
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrainingError(f"{self.output_dir} cannot be created ({error.strerror or error})",
                                "output_dir") from None
        removed = remove_stale_temporaries(self.output_dir, self.job.saving.output_name)
        if removed:
            events.status("saving", note=f"removed {len(removed)} temporary file(s) left by an interrupted run: "
                                         + ", ".join(p.name for p in removed))
        self.base_metadata = {**training_metadata(session), **session.network.metadata()}
        self.outputs: list[str] = []
        self.kept_steps: set[int] = set()  # step files asked for from the page: save_last_n_steps leaves them
        self.start_step, self.start_epoch, self.skip_batches = 0, 1, 0

    def _write(self, path: Path, step: int, epoch: int, kind: str, requested: bool = False) -> Path:
        if not self.session.processes.is_main:  # one process writes the run's files
            return path
        self.events.status("saving", step=step)
        metadata = {**self.base_metadata, "ss_training_finished_at": _text(time.time()),
                    "ss_steps": _text(step), "ss_epoch": _text(epoch)}
        tensors = self.session.network.kohya_state_dict(dtype=SAVE_DTYPES[self.job.saving.save_precision])
        save_lora_file(path, tensors, metadata)
        self.outputs.append(str(path))
        self.events.emit("checkpoint", step=step, epoch=epoch, path=str(path), kind=kind,
                         **({"requested": True} if requested else {}))
        if kind != "final":
            self.events.status("training")
        return path

    def save_epoch(self, step: int, epoch: int) -> None:
        saving = self.job.saving
        self._write(self.output_dir / epoch_file_name(saving.output_name, epoch), step, epoch, "epoch")
        if saving.save_state:  # the epoch is done: a resume from here starts the next one
            self.save_state(self.output_dir / f"{saving.output_name}-{epoch:06d}-state", step, epoch,
                            self.session.processes.local_batches(self.session.schedule.batches_per_epoch))
        if not self.session.processes.is_main:
            return
        old = epoch_to_prune(epoch, saving.save_last_n_epochs, saving.save_every_n_epochs)
        if old is not None:
            (self.output_dir / epoch_file_name(saving.output_name, old)).unlink(missing_ok=True)
        old = epoch_to_prune(epoch, state_keep_last(saving.save_last_n_epochs_state, saving.save_last_n_epochs),
                             saving.save_every_n_epochs)
        if old is not None:
            shutil.rmtree(self.output_dir / f"{saving.output_name}-{old:06d}-state", ignore_errors=True)

    def save_step(self, step: int, epoch: int, batches_done: int, requested: bool = False) -> None:
        """A step file (and state), then save_last_n_steps' pruning of an older one. A file ``requested``
        (Save now in the page, also at a planned step) is the user's to keep: it is never pruned."""
        self._write(self.output_dir / step_file_name(self.job.saving.output_name, step), step, epoch, "step", requested)
        if requested:
            self.kept_steps.add(step)
        if self.job.saving.save_state:
            self.save_state(self.output_dir / f"{self.job.saving.output_name}-step{step:08d}-state", step, epoch,
                            batches_done)
        saving = self.job.saving
        if not self.session.processes.is_main:
            return
        old = step_to_prune(step, saving.save_last_n_steps, saving.save_every_n_steps)
        if old is not None and old not in self.kept_steps:
            (self.output_dir / step_file_name(saving.output_name, old)).unlink(missing_ok=True)
        old = step_to_prune(step, state_keep_last(saving.save_last_n_steps_state, saving.save_last_n_steps),
                            saving.save_every_n_steps)
        if old is not None and old not in self.kept_steps:
            shutil.rmtree(self.output_dir / f"{saving.output_name}-step{old:08d}-state", ignore_errors=True)

    def save_final(self, step: int, epoch: int, stopped: bool, batches_done: int | None = None) -> None:
        self._write(self.output_dir / f"{self.job.saving.output_name}.safetensors", step, epoch, "final")
        if self.job.saving.save_state or self.job.saving.save_state_on_train_end:
            every_batch = self.session.processes.local_batches(self.session.schedule.batches_per_epoch)
            done = batches_done if batches_done is not None else every_batch
            self.save_state(self.output_dir / f"{self.job.saving.output_name}-state", step, epoch, done)

    # ---- training state (optimizer, scheduler, RNGs, position) for an exact resume ----------------

    def save_state(self, folder: Path, step: int, epoch: int, batches_done: int) -> None:
        """Every process calls this (each hands in its random generators); the main one writes the folder."""
        s = self.session
        rngs = s.processes.gather({"noise_generator": s.noise_generator.get_state(), "torch_rng": torch.get_rng_state()})
        if not s.processes.is_main:
            return
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_lora_file(tmp / "network.safetensors", s.network.kohya_state_dict(), {})
        torch.save({"optimizer": s.optimizer.state_dict(), "lr_scheduler": s.lr_scheduler.state_dict(),
                    "noise_generator": rngs[0]["noise_generator"], "torch_rng": rngs[0]["torch_rng"],
                    "process_rngs": rngs[1:], "grad_scaler": s.scaler.state_dict() if s.scaler is not None else None},
                   tmp / "state.pt")
        (tmp / STATE_FILE).write_text(json.dumps({
            "step": step, "epoch": epoch, "batches_done_in_epoch": batches_done, "seed": s.seed,
            "train_text_encoder": s.train_text_encoder, "num_processes": s.processes.world_size,
        }), encoding="utf-8")
        old = folder.with_name(folder.name + ".old.tmp")  # never a half-deleted state under the real name
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        self.events.emit("checkpoint", step=step, epoch=epoch, path=str(folder), kind="state")

    def load_state(self, folder: Path) -> None:
        """Continue from a state folder: weights, optimizer, schedule, grad scaler, each process's generators
        and the position in the data. Exact with the process count that saved it; with another, the step, the
        LR and the weights carry on, but the data position is converted and the noise differs (a warning)."""
        s = self.session
        info_path = folder / STATE_FILE
        if not info_path.exists():
            raise TrainingError(f"{folder} is not a saved training state (no {STATE_FILE})", "resume")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        tensors, _ = read_lora_file(folder / "network.safetensors")
        s.network.load_kohya_state_dict(tensors)
        state = torch.load(folder / "state.pt", weights_only=True)
        s.optimizer.load_state_dict(state["optimizer"])
        s.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if s.scaler is not None and state.get("grad_scaler"):
            s.scaler.load_state_dict(state["grad_scaler"])
        rank, saved_processes = s.processes.rank, int(info.get("num_processes", 1))
        rngs = [{"noise_generator": state["noise_generator"], "torch_rng": state["torch_rng"]}, *state.get("process_rngs", [])]
        if rank < len(rngs):
            s.noise_generator.set_state(rngs[rank]["noise_generator"])
            torch.set_rng_state(rngs[rank]["torch_rng"])
        else:
            s.noise_generator.manual_seed(process_seed(s.seed, rank))
        if not info.get("train_text_encoder", True) and s.train_text_encoder:
            s.stop_text_encoder()
        self.start_step = info["step"]
        per_epoch = s.processes.local_batches(s.schedule.batches_per_epoch)
        done = info["batches_done_in_epoch"]
        if saved_processes != s.processes.world_size:
            done = done * saved_processes // s.processes.world_size  # the same share of the epoch
            self.events.warning(f"the state was saved by {saved_processes} process(es) and this run has "
                                f"{s.processes.world_size}: training goes on from step {self.start_step} with the "
                                "same weights, optimizer and learning rate, but not exactly as it would have "
                                "(other noise, the epoch's batches shared out differently)", "num_processes")
        if done >= per_epoch:
            self.start_epoch, self.skip_batches = info["epoch"] + 1, 0
        else:
            self.start_epoch, self.skip_batches = info["epoch"], done
        self.events.status("training", note=f"resumed from {folder} at step {self.start_step}")
